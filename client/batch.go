package client

import (
	"context"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// callMany sends reqs (to any memnodes) together and waits for all answers,
// without a goroutine per request: requests to one host leave in one batch.
// Answers that are final on the first try (STATUS_OK, or UNKNOWN_OUTCOME,
// which call would also return as is) are taken directly; every other case
// (not sent, not leader, unavailable, unknown memnode, invalid) was not
// applied, so the request goes through call, which follows redirects,
// refreshes the layout and maps errors. The results are what call would
// have returned for each request.
func (c *Client) callMany(ctx context.Context, reqs []*tuttipb.Request) []vote {
	out := make([]vote, len(reqs))
	type answer struct {
		i int
		r *tuttipb.Response
	}
	answers := make(chan answer, len(reqs))
	sent := make([]*session, len(reqs))
	hosts := make([]uint64, len(reqs))
	var flush []*session
	for i, req := range reqs {
		cn, h, err := c.route(req.GetMemnode())
		hosts[i] = h
		if err != nil {
			continue
		}
		s, err := cn.start(req, func(r *tuttipb.Response) { answers <- answer{i, r} }, false)
		if err != nil {
			continue
		}
		sent[i] = s
		if !containsSession(flush, s) {
			flush = append(flush, s)
		}
	}
	for _, s := range flush {
		s.flush()
	}
	waiting := 0
	for _, s := range sent {
		if s != nil {
			waiting++
		}
	}
	got := make([]bool, len(reqs))
	for waiting > 0 {
		select {
		case a := <-answers:
			waiting--
			got[a.i] = true
			switch a.r.GetStatus() {
			case tuttipb.Status_STATUS_UNKNOWN_OUTCOME:
				c.redirect(reqs[a.i].GetMemnode(), hosts[a.i], nil) // as call does
				out[a.i] = vote{r: a.r}
			case tuttipb.Status_STATUS_OK:
				out[a.i] = vote{r: a.r}
			default:
				sent[a.i] = nil // not applied: retry through call
			}
		case <-ctx.Done():
			for i, s := range sent {
				if s != nil && !got[i] {
					s.forget(reqs[i].Id)
					c.redirect(reqs[i].GetMemnode(), hosts[i], nil) // as call does
					out[i] = vote{err: &Error{Memnode: reqs[i].GetMemnode(), Err: ErrUnknownOutcome, Detail: ctx.Err().Error()}}
					got[i] = true
				}
			}
			waiting = 0
		}
	}
	for i, req := range reqs {
		if sent[i] == nil {
			r, err := c.call(ctx, req)
			out[i] = vote{r, err}
		}
	}
	return out
}

func containsSession(ss []*session, s *session) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// Stats counts what a Client has done since New.
type Stats struct {
	// Decisions is the number of Commit/Abort decisions sent to
	// participants of two-phase minitransactions; DecisionRequests the
	// requests that carried them: a decision waits for the next batch to
	// its memnode's leader and rides on a request of that batch for the
	// same memnode (Carried counts those decisions) or shares one decision
	// request with the other decisions for that memnode. Resent decisions
	// are not counted.
	Decisions, DecisionRequests, Carried uint64
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{Decisions: c.stats.decisions.Load(), DecisionRequests: c.stats.requests.Load(), Carried: c.stats.carried.Load()}
}
