package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// A two-phase minitransaction whose Prepare answer at one participant was
// lost, and which memnode recovery committed before Exec learnt the vote
// (AbortUnlessVoted answers the decided outcome, and a duplicate Prepare
// no longer has the reads), is committed: its writes are applied
// everywhere. Exec cannot return that participant's reads, but it must
// not say the outcome is unknown either: a two-phase attempt cannot be
// fenced, so the caller could not settle it, and one that only needed the
// writes would treat a committed minitransaction as undecided. The error
// wraps ErrReadsLost (and still ErrUnknownOutcome, for callers that read
// back to find out).
func TestTwoPhaseCommittedWithReadsLost(t *testing.T) {
	f := startFakeHost(t)
	lost := false
	f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
		if r.GetMemnode() != 1 {
			return ok(r)
		}
		switch r.GetKind() {
		case tuttipb.Kind_KIND_PREPARE:
			if !lost {
				lost = true
				return &tuttipb.Response{Id: r.GetId(), Status: tuttipb.Status_STATUS_UNKNOWN_OUTCOME, FailedCompare: -1, Error: "leader changed"}
			}
			// Decided here: the outcome, no reads.
			return &tuttipb.Response{Id: r.GetId(), Status: tuttipb.Status_STATUS_OK, Vote: tuttipb.Vote_VOTE_OK, FailedCompare: -1, Outcome: tuttipb.Outcome_OUTCOME_COMMITTED}
		case tuttipb.Kind_KIND_ABORT_UNLESS_VOTED:
			// Recovery committed the tid first.
			return &tuttipb.Response{Id: r.GetId(), Status: tuttipb.Status_STATUS_OK, Vote: tuttipb.Vote_VOTE_OK, FailedCompare: -1, Outcome: tuttipb.Outcome_OUTCOME_COMMITTED}
		}
		return ok(r)
	})
	cl := newFakeClient(t, f)
	defer closeWithin(t, cl)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := cl.Exec(ctx, NewTx().Write(0, 8, []byte("x")).Write(1, 8, []byte("y")).Read(1, 8, 1))
	var e *Error
	if !errors.Is(err, ErrReadsLost) || !errors.Is(err, ErrUnknownOutcome) || !errors.As(err, &e) || e.Memnode != 1 {
		t.Fatalf("committed with the reads of memnode 1 lost: %+v, %v; want an error of memnode 1 wrapping ErrReadsLost and ErrUnknownOutcome", res, err)
	}
	tid := f.waitFor(t, "prepare", prepareOf(f, 0, 8)).GetTid()
	for _, mn := range []uint64{0, 1} {
		f.waitFor(t, "commit", func(r *tuttipb.Request) bool {
			return r.GetMemnode() == mn && proto.Equal(r.GetTid(), tid) &&
				(r.GetKind() == tuttipb.Kind_KIND_COMMIT || hasTid(r.GetCommitTids(), tid))
		})
	}
	for _, r := range f.received() {
		if r.GetKind() == tuttipb.Kind_KIND_ABORT || hasTid(r.GetAbortTids(), tid) {
			t.Fatalf("a committed tid was aborted: %v", r)
		}
	}
}
