package client

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// callMany sends reqs (to any memnodes) together and waits for all answers,
// without a goroutine per request: requests to one host leave in one batch.
// Answers that are final on the first try (STATUS_OK, or UNKNOWN_OUTCOME,
// which call would also return as is) are taken directly; every other case
// (not sent, not leader, unavailable, unknown memnode, invalid) was not
// applied, so the request goes through call, which follows redirects,
// refreshes the layout and maps errors. out[i] gets what call would have
// returned for reqs[i]; len(out) >= len(reqs).
//
// The answers land in per-request slots and the last one wakes the caller
// (one wake-up per call, not one per answer). If ctx ends first, each slot
// still waiting is abandoned: an answer arriving later is dropped.
func (c *Client) callMany(ctx context.Context, reqs []*tuttipb.Request, out []vote) {
	m := getManyCall(len(reqs))
	sent := carve(m.inline.sent[:], len(reqs))
	hosts := carve(m.inline.hosts[:], len(reqs))
	retry := carve(m.inline.retry[:], len(reqs))
	flush := m.inline.flush[:0]
	m.remaining.Store(int32(len(reqs)) + 1) // +1 until every request started
	for i, req := range reqs {
		cn, h, err := c.route(req.GetMemnode())
		hosts[i] = h
		if err != nil {
			m.answer(i, nil)
			continue
		}
		s, err := cn.start(req, m.fn(i), false)
		if err != nil {
			m.answer(i, nil)
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
	m.answer(-1, nil)
	reuse := false
	select {
	case <-m.done:
		// Every request was answered, and each callback is past its
		// last use of m: m may serve another call.
		reuse = true
	case <-ctx.Done():
		for i, s := range sent {
			if s != nil && m.slots[i].state.CompareAndSwap(slotWaiting, slotAbandoned) {
				s.forget(reqs[i].Id)
				c.redirect(reqs[i].GetMemnode(), hosts[i], nil) // as call does
				out[i] = vote{err: &Error{Memnode: reqs[i].GetMemnode(), Err: ErrUnknownOutcome, Detail: ctx.Err().Error()}}
				sent[i] = nil
			}
		}
	}
	for i := range reqs {
		if m.slots[i].state.Load() != slotAnswered {
			continue // abandoned above
		}
		r := m.slots[i].r
		switch {
		case r == nil: // not sent
			retry[i] = true
		case r.GetStatus() == tuttipb.Status_STATUS_UNKNOWN_OUTCOME:
			c.redirect(reqs[i].GetMemnode(), hosts[i], nil) // as call does
			out[i] = vote{r: r}
		case r.GetStatus() == tuttipb.Status_STATUS_OK:
			out[i] = vote{r: r}
		default:
			retry[i] = true // not applied: retry through call
		}
	}
	for i, req := range reqs {
		if retry[i] {
			r, err := c.call(ctx, req)
			out[i] = vote{r, err}
		}
	}
	if reuse {
		m.release()
	}
}

// manyCall collects callMany's answers. One whose call was abandoned is
// never reused (a late answer may still come); the others go back to
// manyCalls.
type manyCall struct {
	slots []answerSlot
	// remaining counts the slots not answered yet, plus one while
	// requests are being started; whoever takes it to zero sends on
	// done (capacity 1), which callMany receives before reusing m.
	remaining atomic.Int32
	done      chan struct{}
	// fns[i] answers slot i; made once per manyCall.
	fns [manyInline]func(*tuttipb.Response)
	// inline backs callMany's slices for a few requests.
	inline struct {
		slots [manyInline]answerSlot
		sent  [manyInline]*session
		flush [manyInline]*session
		hosts [manyInline]uint64
		retry [manyInline]bool
	}
}

const manyInline = 4

var manyCalls = sync.Pool{New: func() any {
	m := &manyCall{done: make(chan struct{}, 1)}
	for i := range m.fns {
		m.fns[i] = func(r *tuttipb.Response) { m.answer(i, r) }
	}
	return m
}}

// getManyCall returns a manyCall with n waiting slots.
func getManyCall(n int) *manyCall {
	m := manyCalls.Get().(*manyCall)
	m.slots = carve(m.inline.slots[:], n)
	return m
}

// fn returns the callback that answers slot i.
func (m *manyCall) fn(i int) func(*tuttipb.Response) {
	if i < len(m.fns) {
		return m.fns[i]
	}
	return func(r *tuttipb.Response) { m.answer(i, r) }
}

// release returns m, with every answer in, to manyCalls.
func (m *manyCall) release() {
	for i := range m.slots {
		m.slots[i].r = nil
		m.slots[i].state.Store(slotWaiting)
	}
	m.slots = nil
	clear(m.inline.sent[:])
	clear(m.inline.flush[:])
	clear(m.inline.hosts[:])
	clear(m.inline.retry[:])
	manyCalls.Put(m)
}

// carve returns inline[:n] if it fits, else a new slice of n elements.
func carve[T any](inline []T, n int) []T {
	if n <= len(inline) {
		return inline[:n:n]
	}
	return make([]T, n)
}

// answerSlot is one request's answer: r is written before state becomes
// slotAnswered, and read only after.
type answerSlot struct {
	r     *tuttipb.Response
	state atomic.Uint32
}

const (
	slotWaiting = iota
	slotAnswered
	slotAbandoned
)

// answer fills slot i with r (nil: the request was not sent), unless
// callMany abandoned it; i < 0 drops callMany's own count. The last one
// signals done; after that, it touches m no more.
func (m *manyCall) answer(i int, r *tuttipb.Response) {
	if i >= 0 {
		m.slots[i].r = r
		if !m.slots[i].state.CompareAndSwap(slotWaiting, slotAnswered) {
			return
		}
	}
	if m.remaining.Add(-1) == 0 {
		m.done <- struct{}{}
	}
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
