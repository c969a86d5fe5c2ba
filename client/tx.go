package client

import "sort"

// Tx is a minitransaction under construction: compare, read and write items
// over any memnodes, fixed before it executes. The zero value is ready to
// use. A Tx is not safe for concurrent use; it may be executed again (each
// execution is a new attempt).
type Tx struct {
	compares []txCompare
	reads    []txRead
	writes   []txWrite
	logged   bool
	fences   []TID
}

type txCompare struct {
	memnode, addr uint64
	data          []byte
}

type txRead struct {
	memnode, addr uint64
	n             uint32
}

type txWrite struct {
	memnode, addr uint64
	data          []byte
}

// NewTx returns an empty minitransaction.
func NewTx() *Tx { return &Tx{} }

// Compare adds an equality test: the bytes at addr on memnode must equal
// data, or the minitransaction does nothing and reports this item.
func (t *Tx) Compare(memnode, addr uint64, data []byte) *Tx {
	t.compares = append(t.compares, txCompare{memnode, addr, data})
	return t
}

// Read adds a read of n bytes at addr on memnode. Results come back in the
// order reads were added.
func (t *Tx) Read(memnode, addr uint64, n uint32) *Tx {
	t.reads = append(t.reads, txRead{memnode, addr, n})
	return t
}

// Write adds a write of data at addr on memnode, applied only if every
// compare matches.
func (t *Tx) Write(memnode, addr uint64, data []byte) *Tx {
	t.writes = append(t.writes, txWrite{memnode, addr, data})
	return t
}

// Logged makes a minitransaction without writes on one memnode go through
// the memnode's log like one with writes, instead of being served as a
// read (ReadIndex). A read is linearizable, but it does not wait for a
// request the leader has accepted and not yet committed, which may commit
// a moment later; a logged minitransaction is ordered after it. So the
// reads of a logged minitransaction settle an earlier request whose answer
// was lost (ErrUnknownOutcome) as far as the memnode's leader had it: if
// they do not show it, it did not commit before them, and it can commit
// later only if it was still on its way to the leader (Fence closes that).
// It costs a Raft entry. Minitransactions over several memnodes are logged
// anyway.
func (t *Tx) Logged() *Tx {
	t.logged = true
	return t
}

// Fence makes the minitransaction settle earlier one-phase attempts for
// good: tids are those of attempts whose answer was lost (Error.TID of an
// ErrUnknownOutcome), on the memnode this minitransaction runs on. It
// implies Logged. In the same log entry as its own step, the memnode
// records every one of them that has not applied there as never to apply:
// an attempt still on its way to the leader that arrives later is refused
// (it changes nothing). So once this minitransaction commits, its reads
// show every fenced attempt that will ever have applied. Zero TIDs are
// skipped. A fence needs a minitransaction on exactly one memnode, the
// memnode of the attempts (Exec fails with ErrInvalid for several; on
// another memnode a fence does nothing, and a TID does not say which
// memnode its attempt ran on, so Fence cannot check it: Client.Settle,
// which takes the attempts' errors, does), and at most the cluster's item
// limit of tids (counted apart from the items). It does nothing to a
// two-phase tid that is in doubt or decided.
func (t *Tx) Fence(tids ...TID) *Tx {
	for _, tid := range tids {
		if tid != (TID{}) {
			t.fences = append(t.fences, tid)
		}
	}
	t.logged = true
	return t
}

// Memnodes returns the sorted set of memnodes the minitransaction touches.
func (t *Tx) Memnodes() []uint64 {
	seen := map[uint64]bool{}
	var out []uint64
	add := func(m uint64) {
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	for _, c := range t.compares {
		add(c.memnode)
	}
	for _, r := range t.reads {
		add(r.memnode)
	}
	for _, w := range t.writes {
		add(w.memnode)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Empty reports whether the minitransaction has no items.
func (t *Tx) Empty() bool { return len(t.compares)+len(t.reads)+len(t.writes) == 0 }

// Result is the outcome of a minitransaction that ran to a decision. A failed
// compare is a result, not an error.
type Result struct {
	// Committed is true when every compare matched: the reads are valid and
	// the writes were applied atomically.
	Committed bool
	// FailedCompare is the index (in the order Compare was called) of a
	// compare that did not match when Committed is false, else -1.
	FailedCompare int
	// Reads holds the data of each read item, in the order Read was called,
	// when Committed is true. When a minitransaction on one memnode fails
	// a compare, Reads holds the data as of that failure (read in the same
	// atomic step as the compare), so a compare-and-swap loop can retry
	// without reading first; it is nil for a minitransaction across
	// memnodes (each participant would answer at a different moment) and
	// from servers older than this field's use.
	Reads [][]byte
}
