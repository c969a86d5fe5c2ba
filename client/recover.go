package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
//     Prepare; one to which the tid is older than its horizon, and not in
//     doubt, answers that it has forgotten it (OUTCOME_EXPIRED, no vote).
//  2. A decided outcome reported by any participant wins; otherwise a
//     participant that did not vote OK (and remembers) means aborted;
//     otherwise, if a participant has forgotten the tid, nothing is decided
//     (ErrExpired); otherwise every vote is OK: committed.
//  3. The decision goes to every participant, and Recover returns once
//     each has applied it (all locks of the tid are then released).
//
// Every step is idempotent, so Recover may run several times, concurrently
// with other recovery coordinators and with the original coordinator; all
// reach the same outcome. An error means no decision could be made or
// delivered before ctx ended; calling again is safe.
//
// Recover must run within the memnodes' horizon of tid.Time: after it,
// participants forget decided tids. A participant that forgot the tid may
// have voted OK and committed it, or may never have voted, and cannot
// tell; so when no other answer settles the outcome Recover returns an
// error wrapping ErrExpired and decides nothing, rather than risk
// aborting at one participant what committed at another. The tid then
// stays in doubt, its locks held, until an operator decides it: learns the
// outcome out of band (the application's own records) and applies it with
// Decide (the CLI: tutti decide).
func (c *Client) Recover(ctx context.Context, tid TID, participants []uint64) (committed bool, err error) {
	if len(participants) == 0 {
		return false, fmt.Errorf("%w: recovery of %v without participants", ErrInvalid, tid)
	}
	wt := tid.wire()
	votes, err := c.askAll(ctx, wt, participants, tuttipb.Kind_KIND_ABORT_UNLESS_VOTED)
	if err != nil {
		return false, err
	}
	committed, err = outcomeOf(participants, votes)
	if e := (*Error)(nil); errors.As(err, &e) && errors.Is(err, ErrExpired) {
		return false, &Error{Memnode: e.Memnode, Err: ErrExpired, Detail: fmt.Sprintf("tid %v left in doubt: %s", tid, e.Detail)}
	}
	if err != nil {
		return false, &Error{Memnode: participants[0], Err: ErrUnavailable, Detail: fmt.Sprintf("tid %v: %v", tid, err)}
	}
	return committed, c.applyDecision(ctx, tid, participants, committed)
}

// Decide is the operator's decision of a tid that Recover leaves in doubt
// (ErrExpired: a participant has forgotten it, past its horizon): commit
// applies its writes and releases its locks at every participant that
// still holds it in doubt, abort releases them. Only someone who knows the
// outcome (from the application's own records) may decide: the wrong one
// makes participants disagree. participants must be the tid's whole list,
// as logged with it. Decide first asks every participant what it knows, as
// Recover does, and refuses (ErrRefused, nothing decided) a decision that
// contradicts a participant: one that reports the tid decided the other
// way, or, for commit, one that never voted OK (it was fenced, so the tid
// cannot have committed anywhere); it also refuses when no participant
// holds the tid in doubt any more (there is nothing to decide). A tid
// whose outcome the participants settle is decided as Recover would;
// Decide then only checks that it agrees. Asking is recovery's first phase: a participant
// that has not voted is fenced (it will refuse the Prepare), so decide only
// tids that are stuck, never one whose coordinator may still be running.
func (c *Client) Decide(ctx context.Context, tid TID, participants []uint64, commit bool) error {
	if len(participants) == 0 {
		return fmt.Errorf("%w: decision of %v without participants", ErrInvalid, tid)
	}
	votes, err := c.askAll(ctx, tid.wire(), participants, tuttipb.Kind_KIND_ABORT_UNLESS_VOTED)
	if err != nil {
		return err
	}
	known, err := outcomeOf(participants, votes)
	switch {
	case err == nil && known != commit:
		what := "aborted"
		if known {
			what = "committed"
		}
		return &Error{Memnode: participants[0], Err: ErrRefused,
			Detail: fmt.Sprintf("tid %v is %s according to its participants (%s): refusing the opposite decision", tid, what, describeVotes(participants, votes))}
	case err != nil && !errors.Is(err, ErrExpired):
		return &Error{Memnode: participants[0], Err: ErrUnavailable, Detail: fmt.Sprintf("tid %v: %v", tid, err)}
	case err != nil && !slices.ContainsFunc(votes, inDoubt):
		return &Error{Memnode: participants[0], Err: ErrRefused,
			Detail: fmt.Sprintf("no participant holds tid %v in doubt (%s): nothing to decide", tid, describeVotes(participants, votes))}
	}
	return c.applyDecision(ctx, tid, participants, commit)
}

// inDoubt reports whether an answer to AbortUnlessVoted comes from a
// participant that holds the tid in doubt (voted OK, undecided).
func inDoubt(r *tuttipb.Response) bool {
	return r.GetVote() == tuttipb.Vote_VOTE_OK && r.GetOutcome() == tuttipb.Outcome_OUTCOME_UNKNOWN
}

// describeVotes lists what each participant answered to AbortUnlessVoted.
func describeVotes(mns []uint64, rs []*tuttipb.Response) string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "memnode %d: ", mns[i])
		switch o := r.GetOutcome(); {
		case o == tuttipb.Outcome_OUTCOME_COMMITTED, o == tuttipb.Outcome_OUTCOME_ABORTED:
			fmt.Fprintf(&b, "decided %s", strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_")))
		case o == tuttipb.Outcome_OUTCOME_EXPIRED:
			b.WriteString("forgotten (past its horizon)")
		case inDoubt(r):
			b.WriteString("voted OK, in doubt")
		default:
			b.WriteString("never voted OK")
		}
	}
	return b.String()
}

// applyDecision sends the decision to every participant and checks that
// each applied it (or has forgotten the tid, so holds nothing of it).
func (c *Client) applyDecision(ctx context.Context, tid TID, participants []uint64, committed bool) error {
	kind := tuttipb.Kind_KIND_ABORT
	if committed {
		kind = tuttipb.Kind_KIND_COMMIT
	}
	acks, err := c.askAll(ctx, tid.wire(), participants, kind)
	if err != nil {
		return err
	}
	want := tuttipb.Outcome_OUTCOME_ABORTED
	if committed {
		want = tuttipb.Outcome_OUTCOME_COMMITTED
	}
	for i, r := range acks {
		// A participant that has forgotten the tid by now does not hold
		// it in doubt (that is never forgotten), so it has nothing left
		// to apply: the answers that decided already settle its outcome.
		if o := r.GetOutcome(); o != want && o != tuttipb.Outcome_OUTCOME_EXPIRED {
			// Never expected: the participant decided otherwise.
			return &Error{Memnode: participants[i], Err: ErrUnavailable,
				Detail: fmt.Sprintf("tid %v: decided %v but the participant reports %v", tid, want, r.GetOutcome())}
		}
	}
	return nil
}

// outcomeOf applies recovery's rule to the answers rs of memnodes mns to
// Prepare or AbortUnlessVoted. A decided outcome wins (a tid is decided the
// same way everywhere). Else a participant that remembers the tid and did
// not vote OK (refused the Prepare, or was fenced) proves the tid never
// committed: aborted. Else, if a participant has forgotten the tid, it may
// have voted OK and seen the commit, or never have voted: undecidable, an
// error wrapping ErrExpired. Else every vote is OK: committed.
func outcomeOf(mns []uint64, rs []*tuttipb.Response) (bool, error) {
	var sawCommit, sawAbort, sawNo bool
	expired := -1
	for i, r := range rs {
		switch r.GetOutcome() {
		case tuttipb.Outcome_OUTCOME_COMMITTED:
			sawCommit = true
		case tuttipb.Outcome_OUTCOME_ABORTED:
			sawAbort = true
		case tuttipb.Outcome_OUTCOME_EXPIRED:
			if expired < 0 {
				expired = i
			}
			continue // no vote
		}
		if r.GetVote() != tuttipb.Vote_VOTE_OK {
			sawNo = true
		}
	}
	switch {
	case sawCommit && sawAbort:
		return false, errors.New("participants report different outcomes")
	case sawCommit:
		return true, nil
	case sawAbort, sawNo:
		return false, nil
	case expired >= 0:
		return false, &Error{Memnode: mns[expired], Err: ErrExpired,
			Detail: "the memnode no longer knows whether it voted or how the tid was decided (past its horizon), and no other participant's answer settles it"}
	}
	return true, nil
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
