package memnode

import (
	"errors"
	"fmt"
)

// DefaultConfig returns the defaults: a 1 TiB address space, items of at
// most 1 MiB, at most 1024 items per Op and a one-minute horizon.
//
// The horizon bounds memory: every replica remembers each decided
// two-phase tid for one horizon (about 50 bytes each), so at 10,000
// two-phase minitransactions/s a memnode replica holds about 30 MB of
// decided entries with a one-minute horizon, and 150 MB with five. It must
// comfortably exceed the recovery timeout (recovery is capped at a quarter
// of it) and the clock skew between clients and memnode leaders: a tid
// stamped more than one horizon in the past is refused.
func DefaultConfig() Config {
	return Config{
		Size:         1 << 40,
		MaxItemBytes: 1 << 20,
		MaxItems:     1024,
		Horizon:      60 * 1e9,
	}
}

// WithDefaults fills zero fields with DefaultConfig's values.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	if c.Size == 0 {
		c.Size = d.Size
	}
	if c.MaxItemBytes == 0 {
		c.MaxItemBytes = d.MaxItemBytes
	}
	if c.MaxItems == 0 {
		c.MaxItems = d.MaxItems
	}
	if c.Horizon == 0 {
		c.Horizon = d.Horizon
	}
	return c
}

// Validate reports every problem with c, joined; each wraps ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	if c.Size == 0 {
		errs = append(errs, fmt.Errorf("%w: config: Size must be > 0", ErrInvalid))
	}
	if c.MaxItemBytes == 0 {
		errs = append(errs, fmt.Errorf("%w: config: MaxItemBytes must be > 0", ErrInvalid))
	}
	if c.MaxItems <= 0 {
		errs = append(errs, fmt.Errorf("%w: config: MaxItems must be > 0, got %d", ErrInvalid, c.MaxItems))
	}
	if c.Horizon <= 0 {
		errs = append(errs, fmt.Errorf("%w: config: Horizon must be > 0 ns, got %d", ErrInvalid, c.Horizon))
	}
	return errors.Join(errs...)
}

// ValidateOp checks that op is acceptable for an entry of kind k under c:
// k is known; Commit, Abort and AbortUnlessVoted carry no items; only Exec
// carries appends and relocs; there are at most MaxItems items (appends
// count) and MaxItems relocs; every item is non-empty, at most MaxItemBytes
// long and lies within [0, Size); appends and relocs follow the rules of
// validateAppends. It returns the first problem found, wrapping
// ErrInvalid, and allocates nothing when op is valid.
func (c Config) ValidateOp(k Kind, op *Op) error {
	n := len(op.Compares) + len(op.Reads) + len(op.Writes) + len(op.Appends)
	switch k {
	case KindExec:
	case KindPrepare:
		if len(op.Appends) > 0 || len(op.Relocs) > 0 {
			return fmt.Errorf("%w: only Exec carries appends and relocs, not %v", ErrInvalid, k)
		}
	case KindCommit, KindAbort, KindAbortUnlessVoted:
		if n > 0 || len(op.Relocs) > 0 {
			return fmt.Errorf("%w: %v must carry no items, got %d", ErrInvalid, k, n+len(op.Relocs))
		}
		return nil
	default:
		return fmt.Errorf("%w: unknown entry kind %d", ErrInvalid, uint8(k))
	}
	if n > c.MaxItems {
		return fmt.Errorf("%w: %d items exceed the limit of %d", ErrInvalid, n, c.MaxItems)
	}
	for i := range op.Compares {
		if err := c.checkItem("compare", i, op.Compares[i].Addr, uint64(len(op.Compares[i].Data))); err != nil {
			return err
		}
	}
	for i := range op.Reads {
		if err := c.checkItem("read", i, op.Reads[i].Addr, uint64(op.Reads[i].Len)); err != nil {
			return err
		}
	}
	for i := range op.Writes {
		if err := c.checkItem("write", i, op.Writes[i].Addr, uint64(len(op.Writes[i].Data))); err != nil {
			return err
		}
	}
	if len(op.Appends) > 0 || len(op.Relocs) > 0 {
		return c.validateAppends(op)
	}
	return nil
}

// checkItem checks one item's range [addr, addr+n).
func (c Config) checkItem(what string, i int, addr, n uint64) error {
	switch {
	case n == 0:
		return fmt.Errorf("%w: %s item %d: zero length at 0x%x", ErrInvalid, what, i, addr)
	case n > uint64(c.MaxItemBytes):
		return fmt.Errorf("%w: %s item %d: length %d exceeds the limit of %d bytes", ErrInvalid, what, i, n, c.MaxItemBytes)
	case addr+n < addr:
		return fmt.Errorf("%w: %s item %d: range at 0x%x of length %d overflows the address space", ErrInvalid, what, i, addr, n)
	case addr+n > c.Size:
		return fmt.Errorf("%w: %s item %d: range [0x%x, 0x%x) exceeds memnode size 0x%x", ErrInvalid, what, i, addr, addr+n, c.Size)
	}
	return nil
}

// String names k as in the protocol.
func (k Kind) String() string {
	switch k {
	case KindExec:
		return "Exec"
	case KindPrepare:
		return "Prepare"
	case KindCommit:
		return "Commit"
	case KindAbort:
		return "Abort"
	case KindAbortUnlessVoted:
		return "AbortUnlessVoted"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// String names v as in the Sinfonia paper.
func (v Vote) String() string {
	switch v {
	case 0:
		return "none"
	case VoteOK:
		return "OK"
	case VoteBadLock:
		return "BAD-LOCK"
	case VoteBadForced:
		return "BAD-FORCED"
	case VoteBadCmp:
		return "BAD-CMP"
	}
	return fmt.Sprintf("Vote(%d)", uint8(v))
}

// String names o.
func (o Outcome) String() string {
	switch o {
	case OutcomeUnknown:
		return "unknown"
	case OutcomeCommitted:
		return "committed"
	case OutcomeAborted:
		return "aborted"
	case OutcomeExpired:
		return "expired"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}
