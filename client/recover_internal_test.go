package client

import (
	"errors"
	"testing"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// Recovery's rule with participants that have forgotten the tid (past the
// horizon): their answer is no vote, so it decides only when another answer
// settles the outcome, and otherwise reports ErrExpired naming the memnode.
func TestOutcomeOfExpired(t *testing.T) {
	ok := &tuttipb.Response{Vote: tuttipb.Vote_VOTE_OK}
	fenced := &tuttipb.Response{Vote: tuttipb.Vote_VOTE_BAD_FORCED}
	committed := &tuttipb.Response{Vote: tuttipb.Vote_VOTE_OK, Outcome: tuttipb.Outcome_OUTCOME_COMMITTED}
	aborted := &tuttipb.Response{Vote: tuttipb.Vote_VOTE_BAD_FORCED, Outcome: tuttipb.Outcome_OUTCOME_ABORTED}
	expired := &tuttipb.Response{Outcome: tuttipb.Outcome_OUTCOME_EXPIRED}
	const undecidable, conflict = "expired", "conflict"
	for _, c := range []struct {
		name string
		rs   []*tuttipb.Response
		want any // bool, or one of the error kinds
	}{
		{"all OK", []*tuttipb.Response{ok, ok}, true},
		{"one fenced", []*tuttipb.Response{ok, fenced}, false},
		// The reviewer's case: committed at the first participant, which
		// forgot it; in doubt (OK) at the second. Aborting would diverge.
		{"OK and forgotten", []*tuttipb.Response{expired, ok}, undecidable},
		{"all forgotten", []*tuttipb.Response{expired, expired}, undecidable},
		{"remembered commit wins", []*tuttipb.Response{expired, ok, committed}, true},
		{"remembered abort wins", []*tuttipb.Response{expired, aborted, ok}, false},
		// A participant that remembers it never voted OK proves no commit.
		{"fenced and forgotten", []*tuttipb.Response{expired, fenced, ok}, false},
		{"both outcomes", []*tuttipb.Response{committed, aborted, expired}, conflict},
	} {
		mns := []uint64{7, 8, 9}[:len(c.rs)]
		got, err := outcomeOf(mns, c.rs)
		switch c.want {
		case undecidable:
			var e *Error
			if !errors.Is(err, ErrExpired) || !errors.As(err, &e) || e.Memnode != 7 {
				t.Errorf("%s: %v, %v; want ErrExpired at memnode 7", c.name, got, err)
			}
		case conflict:
			if err == nil || errors.Is(err, ErrExpired) {
				t.Errorf("%s: %v, %v; want a conflict error", c.name, got, err)
			}
		default:
			if err != nil || got != c.want {
				t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
			}
		}
	}
}
