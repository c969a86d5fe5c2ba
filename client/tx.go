package client

import "sort"

// Tx is a minitransaction under construction: compare, read, write and
// append items over any memnodes (appends: one memnode), fixed before it
// executes. The zero value is ready to use. A Tx is not safe for
// concurrent use; it may be executed again (each execution is a new
// attempt).
type Tx struct {
	compares []txCompare
	reads    []txRead
	writes   []txWrite
	appends  []txAppend
	logged   bool
	fences   []TID
}

type txAppend struct {
	memnode uint64
	a       Append
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
	relocs        []Reloc
}

// Append adds data at the end of a ring whose counters live in a memnode's
// address space; the memnode takes the position when it applies the
// minitransaction, so appenders never race for it (memnode doc.go,
// "Append", has the exact rules). Counters are u64 little-endian words.
type Append struct {
	// Tail is the address of t, the bytes ever appended: Data goes to
	// position t, and t advances by len(Data).
	Tail uint64
	// Head is the address of h: positions below h are free (read only).
	Head uint64
	// Limit: the append is refused, as a failed compare (Result), unless
	// t+len(Data)-h <= Limit (signed: h past t+len(Data) passes).
	// Limit <= Size.
	Limit uint64
	// Ring is the address of the ring's first byte; position p lives at
	// Ring + p mod Size (Data wraps at the ring's end).
	Ring uint64
	// Size is the ring's length, a power of two.
	Size uint64
	// Count is the address of a second counter c advanced by Add; 0 means
	// none (then Add must be 0).
	Count uint64
	Add   uint64
	// Data is 1..min(Size, max item bytes) bytes.
	Data []byte
	// Relocs patch this append's own Data before it is written.
	Relocs []Reloc
}

// Reloc adds the old value of an append's counter (its position t, or c
// with Count), mod 2^64, to the u64 little-endian word at [Off, Off+8) of
// the data it is attached to (an Append's Relocs, or Tx.WriteReloc), in a
// copy: the caller's data is never changed. So a record can contain its
// own position, and a slot can name where a record went.
type Reloc struct {
	Off uint32
	// Append is the index of the source among this Tx's appends, in the
	// order Tx.Append was called.
	Append int
	Count  bool
}

// Appended says where an append went: its counters' values before it, t
// (the position of its first byte) and c (0 without a Count).
type Appended struct{ Tail, Count uint64 }

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
	t.writes = append(t.writes, txWrite{memnode: memnode, addr: addr, data: data})
	return t
}

// Append adds a at the end of its ring on memnode, at the position the
// memnode's log order gives it (Result.Appended tells which). A
// minitransaction with appends must touch exactly one memnode (Exec fails
// with ErrInvalid before sending otherwise) and runs as one logged
// one-phase step: the lock check, the compares, then each append's Limit
// (an append refused by its Limit fails as the compare numbered
// len(compares) + its index: Result.FailedCompare), the reads (taken
// before anything is written), the writes, then the appends in order
// (appends on the same counters chain). It is not idempotent: after
// ErrUnknownOutcome, settle with Tx.Fence (Client.Settle) and a read of
// the counters before appending again. Fence works with it.
//
// Example: link a record that holds its own position, and note the
// position in a slot:
//
//	tx := client.NewTx().
//		Append(mn, client.Append{Tail: tail, Head: head, Limit: size, Ring: ring, Size: size,
//			Data: rec, Relocs: []client.Reloc{{Off: 0, Append: 0}}}). // rec[0:8] += t
//		WriteReloc(mn, slot, make([]byte, 8), client.Reloc{Append: 0}) // slot = t
//	res, err := cl.Exec(ctx, tx)
//	// res.Committed: res.Appended[0].Tail is where rec starts.
//	// !res.Committed: res.FailedCompare == 0, the ring is full.
func (t *Tx) Append(memnode uint64, a Append) *Tx {
	t.appends = append(t.appends, txAppend{memnode, a})
	return t
}

// WriteReloc is Write with relocs: each adds the old counter value of one
// of this Tx's appends to a word of a copy of data before it is written
// (Reloc). The write must not overlap an append's counter words.
func (t *Tx) WriteReloc(memnode, addr uint64, data []byte, relocs ...Reloc) *Tx {
	t.writes = append(t.writes, txWrite{memnode, addr, data, relocs})
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
	for _, a := range t.appends {
		add(a.memnode)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Empty reports whether the minitransaction has no items.
func (t *Tx) Empty() bool { return len(t.compares)+len(t.reads)+len(t.writes)+len(t.appends) == 0 }

// Result is the outcome of a minitransaction that ran to a decision. A failed
// compare is a result, not an error.
type Result struct {
	// Committed is true when every compare matched: the reads are valid and
	// the writes were applied atomically.
	Committed bool
	// FailedCompare is the index (in the order Compare was called) of a
	// compare that did not match when Committed is false, else -1. An
	// append refused by its Limit counts as the compare numbered (number
	// of compares) + (its index among the appends).
	FailedCompare int
	// Appended holds, when Committed is true, where each append went, in
	// the order Append was called.
	Appended []Appended
	// Reads holds the data of each read item, in the order Read was called,
	// when Committed is true. When a minitransaction on one memnode fails
	// a compare, Reads holds the data as of that failure (read in the same
	// atomic step as the compare), so a compare-and-swap loop can retry
	// without reading first; it is nil for a minitransaction across
	// memnodes (each participant would answer at a different moment) and
	// from servers older than this field's use.
	Reads [][]byte
}
