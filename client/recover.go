package client

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// TID names one minitransaction attempt: Client and Seq make it unique; Time
// is the coordinator's wall clock (Unix ns) when the attempt began.
type TID struct {
	Client uint64
	Seq    uint64
	Time   int64
}

func (t TID) String() string { return fmt.Sprintf("%d.%d@%d", t.Client, t.Seq, t.Time) }

func (t TID) wire() *tuttipb.Tid { return &tuttipb.Tid{Client: t.Client, Seq: t.Seq, Time: t.Time} }

func tidFromWire(t *tuttipb.Tid) TID {
	return TID{Client: t.GetClient(), Seq: t.GetSeq(), Time: t.GetTime()}
}

// CrashPoint names a moment of the two-phase protocol at which a test may
// make the coordinator die (Config.Crash).
type CrashPoint uint8

const (
	// CrashAfterPrepareSent: the Prepare reached the first participant
	// only; no other participant hears of the tid.
	CrashAfterPrepareSent CrashPoint = iota + 1
	// CrashAfterVotes: every vote is in; no decision has been sent.
	CrashAfterVotes
	// CrashAfterFirstDecision: the decision (Commit or Abort) reached the
	// first participant only.
	CrashAfterFirstDecision
)

func (p CrashPoint) String() string {
	switch p {
	case CrashAfterPrepareSent:
		return "after-prepare-sent"
	case CrashAfterVotes:
		return "after-votes"
	case CrashAfterFirstDecision:
		return "after-first-decision"
	}
	return fmt.Sprintf("CrashPoint(%d)", uint8(p))
}

// ErrCoordinatorCrashed is returned (wrapped) by Exec when Config.Crash
// stopped the coordinator. It exists for tests of recovery only: the
// minitransaction is left exactly as a dead coordinator would leave it
// (possibly in doubt, possibly committed at some participants), and memnode
// recovery decides it.
var ErrCoordinatorCrashed = errors.New("tutti: coordinator crashed (test hook)")

func (c *Client) crashAt(p CrashPoint, tid *tuttipb.Tid) bool {
	return c.cfg.Crash != nil && c.cfg.Crash(p, tidFromWire(tid))
}

func crashed(mn uint64, p CrashPoint, tid *tuttipb.Tid) error {
	return &Error{Memnode: mn, Err: ErrCoordinatorCrashed, Detail: fmt.Sprintf("tid %v at %v", tidFromWire(tid), p)}
}

// Recover decides a two-phase minitransaction whose coordinator may have
// died, as Sinfonia's recovery coordinator does, and reports whether it
// committed. participants must be the tid's full participant set (as its
// Prepare carried it).
//
//  1. AbortUnlessVoted goes to every participant: one that voted keeps its
//     vote; one that did not is fenced (forced abort) and will refuse the
//     Prepare.
//  2. A decided outcome reported by any participant wins; otherwise the
//     minitransaction is committed exactly when every vote is OK.
//  3. The decision goes to every participant, and Recover returns once
//     each has applied it (all locks of the tid are then released).
//
// Every step is idempotent, so Recover may run several times, concurrently
// with other recovery coordinators and with the original coordinator; all
// reach the same outcome. It must finish within the memnodes' horizon of
// tid.Time: after it, participants forget decided tids. An error means no
// decision could be made or delivered before ctx ended; calling again is
// safe.
func (c *Client) Recover(ctx context.Context, tid TID, participants []uint64) (committed bool, err error) {
	if len(participants) == 0 {
		return false, fmt.Errorf("%w: recovery of %v without participants", ErrInvalid, tid)
	}
	wt := tid.wire()
	votes, err := c.askAll(ctx, wt, participants, tuttipb.Kind_KIND_ABORT_UNLESS_VOTED)
	if err != nil {
		return false, err
	}
	committed, err = outcomeOf(votes)
	if err != nil {
		return false, &Error{Memnode: participants[0], Err: ErrUnavailable, Detail: fmt.Sprintf("tid %v: %v", tid, err)}
	}
	kind := tuttipb.Kind_KIND_ABORT
	if committed {
		kind = tuttipb.Kind_KIND_COMMIT
	}
	acks, err := c.askAll(ctx, wt, participants, kind)
	if err != nil {
		return committed, err
	}
	want := tuttipb.Outcome_OUTCOME_ABORTED
	if committed {
		want = tuttipb.Outcome_OUTCOME_COMMITTED
	}
	for i, r := range acks {
		if r.GetOutcome() != want {
			// Never expected: the participant decided otherwise.
			return committed, &Error{Memnode: participants[i], Err: ErrUnavailable,
				Detail: fmt.Sprintf("tid %v: decided %v but the participant reports %v", tid, want, r.GetOutcome())}
		}
	}
	return committed, nil
}

// outcomeOf applies recovery's rule to answers to Prepare or
// AbortUnlessVoted: a decided outcome wins; else commit iff all voted OK.
func outcomeOf(rs []*tuttipb.Response) (bool, error) {
	var sawCommit, sawAbort bool
	allOK := true
	for _, r := range rs {
		switch r.GetOutcome() {
		case tuttipb.Outcome_OUTCOME_COMMITTED:
			sawCommit = true
		case tuttipb.Outcome_OUTCOME_ABORTED:
			sawAbort = true
		}
		if r.GetVote() != tuttipb.Vote_VOTE_OK {
			allOK = false
		}
	}
	switch {
	case sawCommit && sawAbort:
		return false, errors.New("participants report different outcomes")
	case sawCommit:
		return true, nil
	case sawAbort:
		return false, nil
	}
	return allOK, nil
}

// askAll sends an idempotent request (AbortUnlessVoted, Commit, Abort,
// or a duplicate Prepare) for tid to every memnode in mns in parallel and
// returns their definite answers (status OK), retrying unknown outcomes and
// unavailability until ctx ends.
func (c *Client) askAll(ctx context.Context, tid *tuttipb.Tid, mns []uint64, kind tuttipb.Kind) ([]*tuttipb.Response, error) {
	out := make([]*tuttipb.Response, len(mns))
	errs := make([]error, len(mns))
	var wg sync.WaitGroup
	for i, mn := range mns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = c.callDefinite(ctx, &tuttipb.Request{Memnode: mn, Kind: kind, Tid: tid})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// callDefinite sends an idempotent request until it is known to be applied
// (status OK) or ctx ends.
func (c *Client) callDefinite(ctx context.Context, req *tuttipb.Request) (*tuttipb.Response, error) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := c.backoff(ctx, min(attempt-1, 8)); err != nil {
				return nil, &Error{Memnode: req.GetMemnode(), Err: err, Detail: fmt.Sprintf("%v of tid %v", req.GetKind(), tidFromWire(req.GetTid()))}
			}
		}
		r, err := c.call(ctx, req)
		switch {
		case err != nil:
			if ctx.Err() == nil && (errors.Is(err, ErrUnknownOutcome) || errors.Is(err, ErrUnavailable)) {
				continue
			}
			return nil, err
		case r.GetStatus() == tuttipb.Status_STATUS_UNKNOWN_OUTCOME:
			continue
		}
		return r, nil
	}
}
