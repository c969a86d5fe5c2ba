package client

import (
	"errors"
	"fmt"
)

// Errors returned by the client. Test with errors.Is; *Error carries detail.
var (
	// ErrUnknownMemnode: the minitransaction names a memnode the cluster
	// does not have. Nothing was applied.
	ErrUnknownMemnode = errors.New("tutti: unknown memnode")
	// ErrInvalid: the minitransaction is malformed (empty, out of range,
	// oversized, too many items). Nothing was applied.
	ErrInvalid = errors.New("tutti: invalid minitransaction")
	// ErrUnknownOutcome: a one-phase minitransaction was handed to a memnode
	// whose leader then changed or whose connection broke; it may or may
	// not have been applied. Read to find out before retrying, with
	// Tx.Fence(err.TID) (*Error.TID names the attempt): a plain read may
	// come before an attempt the leader has appended and not yet committed,
	// and even a logged one before an attempt still on its way.
	ErrUnknownOutcome = errors.New("tutti: outcome unknown")
	// ErrReadsLost: a minitransaction over several memnodes committed
	// (every write applied, every compare matched) but the reads of one
	// participant (*Error.Memnode) cannot be returned: its answer to the
	// Prepare was lost, and by the time Exec asked again the tid was
	// decided there (by memnode recovery), which keeps no reads. Do not
	// retry: the writes would apply twice. Read again if the values are
	// needed (they may have changed since). An *Error wrapping it also
	// matches ErrUnknownOutcome, so a caller that settles unknown outcomes
	// by reading back finds the writes applied.
	ErrReadsLost = errors.New("tutti: committed, but the reads of a participant are lost")
	// ErrFenced: the memnode refused a one-phase attempt because its tid
	// was fenced (Tx.Fence) or is older than the memnode's horizon (this
	// client's clock is behind the cluster's by more than the horizon);
	// or it refused the Prepares of two attempts of a minitransaction
	// over several memnodes (BAD-FORCED: too old, or fenced by memnode
	// recovery). Nothing was applied.
	ErrFenced = errors.New("tutti: attempt fenced")
	// ErrUnavailable: no leader could be reached before the deadline or the
	// retry budget ran out. Nothing was applied.
	ErrUnavailable = errors.New("tutti: memnode unavailable")
	// ErrContention: the minitransaction kept finding its items locked
	// (BAD-LOCK) until the retry budget ran out. Nothing was applied.
	ErrContention = errors.New("tutti: too much contention")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("tutti: client closed")
	// ErrExpired: Recover cannot decide the tid because a participant no
	// longer knows it (the tid is older than that memnode's horizon, so
	// its vote and outcome there were forgotten) and no other
	// participant's answer settles the outcome. Nothing was decided: the
	// tid stays in doubt, its locks held, at the participants that hold
	// it, and calling again gives the same answer; an operator must decide
	// it (see Recover).
	ErrExpired = errors.New("tutti: tid past the memnode horizon, outcome forgotten")
	// ErrRefused: Decide refused the decision: a participant contradicts
	// it, or none holds the tid in doubt any more. Nothing was decided.
	ErrRefused = errors.New("tutti: decision refused")
)

// Error says which memnode a failure concerns and why.
type Error struct {
	Memnode uint64
	Err     error  // one of the sentinel errors above, or a context error
	Detail  string // the server's or transport's words
	// TID names the attempt of a one-phase minitransaction whose outcome
	// is unknown (ErrUnknownOutcome), for Tx.Fence; zero otherwise.
	TID TID
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("memnode %d: %v", e.Memnode, e.Err)
	}
	return fmt.Sprintf("memnode %d: %v: %s", e.Memnode, e.Err, e.Detail)
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes an Error wrapping ErrReadsLost match ErrUnknownOutcome too: a
// caller that knows only ErrUnknownOutcome treats the minitransaction as
// possibly applied, which is true, rather than as not applied.
func (e *Error) Is(target error) bool {
	return target == ErrUnknownOutcome && errors.Is(e.Err, ErrReadsLost)
}

// UnknownAttempt returns the one-phase attempt an ErrUnknownOutcome names
// (Error.TID anywhere in err's chain), for Tx.Fence; the zero TID, which
// Fence skips, if err names none.
func UnknownAttempt(err error) TID {
	tid, _ := unknownAttempt(err)
	return tid
}

// unknownAttempt is UnknownAttempt with the memnode the attempt ran on
// (Error.Memnode of the same Error).
func unknownAttempt(err error) (TID, uint64) {
	var e *Error
	if errors.As(err, &e) && errors.Is(e.Err, ErrUnknownOutcome) {
		return e.TID, e.Memnode
	}
	return TID{}, 0
}

// attemptsOn returns the one-phase attempts that attempts name
// (UnknownAttempt; errors that name none are skipped), for Tx.Fence on
// memnode mn. It fails with ErrInvalid if one of them ran on another
// memnode: a fence there would settle nothing (the memnode records the
// tid, and the attempt can still land on its own memnode later) while the
// caller took what it read as final.
func attemptsOn(mn uint64, attempts []error) ([]TID, error) {
	var tids []TID
	for _, a := range attempts {
		tid, on := unknownAttempt(a)
		if tid == (TID{}) {
			continue
		}
		if on != mn {
			return nil, fmt.Errorf("%w: attempt %v ran on memnode %d; a fence on memnode %d would not settle it", ErrInvalid, tid, on, mn)
		}
		tids = append(tids, tid)
	}
	return tids, nil
}
