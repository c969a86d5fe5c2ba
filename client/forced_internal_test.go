package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// A Prepare refused with BAD-FORCED is retried once with a new tid: the
// refusal may be recovery's fence of a Prepare that took longer than its
// timeout to arrive, which a new tid cures. A second refusal means a tid
// older than the horizon (the clock is behind), which no new tid of the
// same clock cures: ErrFenced, with no more attempts.
func TestTwoPhaseForcedRetriedOnce(t *testing.T) {
	for _, refusals := range []int{1, 1 << 30} {
		f := startFakeHost(t)
		left := refusals
		f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
			if r.GetKind() == tuttipb.Kind_KIND_PREPARE && r.GetMemnode() == 1 && left > 0 {
				left--
				return &tuttipb.Response{Id: r.GetId(), Status: tuttipb.Status_STATUS_OK, Vote: tuttipb.Vote_VOTE_BAD_FORCED, FailedCompare: -1}
			}
			return ok(r)
		})
		cl := newFakeClient(t, f)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res, err := cl.Exec(ctx, NewTx().Write(0, 8, []byte("x")).Write(1, 8, []byte("y")))
		cancel()
		closeWithin(t, cl)
		prepares := 0
		for _, r := range f.received() {
			if r.GetKind() == tuttipb.Kind_KIND_PREPARE && r.GetMemnode() == 1 {
				prepares++
			}
		}
		if refusals == 1 {
			if err != nil || !res.Committed || prepares != 2 {
				t.Fatalf("one refusal: %+v, %v after %d Prepares; want committed at the second", res, err, prepares)
			}
			continue
		}
		var e *Error
		if !errors.Is(err, ErrFenced) || !errors.As(err, &e) || e.Memnode != 1 || prepares != maxRefused {
			t.Fatalf("every Prepare refused: %+v, %v after %d Prepares; want ErrFenced at memnode 1 after %d", res, err, prepares, maxRefused)
		}
	}
}
