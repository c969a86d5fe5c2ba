package memnode

import "math/bits"

// txnTable maps the in-doubt tids to their transactions, as a
// map[TID]*txn would: open addressing with linear probing and
// backward-shift deletion, at most half full, shrinking below 1/8 full,
// each slot a tid and its transaction (32 bytes, two to a cache line).
// Under the cas2 load thousands of tids are in doubt at every replica, and
// a Prepare's lookup, its insert, the Commit's lookup and its delete were
// each a cold probe of a Go map (a control word and a slot, two cache
// lines); here a lookup reads one line, and the insert or delete after it
// finds that line in cache.
type txnTable struct {
	slots []txnSlot // len is 0 or a power of two
	n     int
}

type txnSlot struct {
	tid TID
	t   *txn // nil: empty
}

const minTxnSlots = 64

func (tt *txnTable) home(tid TID) int {
	h := (tid.Seq ^ tid.Client*0xC2B2AE3D27D4EB4F ^ uint64(tid.Time)*0x165667B19E3779F9) * 0x9E3779B97F4A7C15
	return int(h >> (64 - bits.Len(uint(len(tt.slots)-1))))
}

func (tt *txnTable) len() int { return tt.n }

// get returns tid's transaction, nil if tid is not in doubt.
func (tt *txnTable) get(tid TID) *txn {
	if tt.n == 0 {
		return nil
	}
	mask := len(tt.slots) - 1
	for i := tt.home(tid); ; i = (i + 1) & mask {
		s := &tt.slots[i]
		if s.t == nil {
			return nil
		}
		if s.tid == tid {
			return s.t
		}
	}
}

// put adds t under t.tid, which must not be in the table.
func (tt *txnTable) put(t *txn) {
	if 2*(tt.n+1) > len(tt.slots) {
		tt.resize(max(minTxnSlots, 2*len(tt.slots)))
	}
	tt.place(txnSlot{t.tid, t})
	tt.n++
}

func (tt *txnTable) place(s txnSlot) {
	mask := len(tt.slots) - 1
	i := tt.home(s.tid)
	for tt.slots[i].t != nil {
		i = (i + 1) & mask
	}
	tt.slots[i] = s
}

// del removes tid, if present.
func (tt *txnTable) del(tid TID) {
	if tt.n == 0 {
		return
	}
	mask := len(tt.slots) - 1
	i := tt.home(tid)
	for ; ; i = (i + 1) & mask {
		s := &tt.slots[i]
		if s.t == nil {
			return
		}
		if s.tid == tid {
			break
		}
	}
	// Backward shift: move later slots of the run into the hole unless
	// their home lies cyclically in (hole, slot]. (fineTable.remove has the
	// same loop: a generic one taking the slot tests as functions cost
	// BenchmarkApplyTwoPhase 5–8%.)
	for j := (i + 1) & mask; tt.slots[j].t != nil; j = (j + 1) & mask {
		k := tt.home(tt.slots[j].tid)
		if (i <= j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			tt.slots[i] = tt.slots[j]
			i = j
		}
	}
	tt.slots[i] = txnSlot{}
	tt.n--
	if len(tt.slots) > minTxnSlots && 8*tt.n < len(tt.slots) {
		tt.resize(len(tt.slots) / 2)
	}
}

func (tt *txnTable) resize(n int) {
	old := tt.slots
	tt.slots = make([]txnSlot, n)
	for _, s := range old {
		if s.t != nil {
			tt.place(s)
		}
	}
}

// tids yields every tid in the table, in no particular order.
func (tt *txnTable) tids(yield func(TID) bool) {
	for _, s := range tt.slots {
		if s.t != nil && !yield(s.tid) {
			return
		}
	}
}

// each calls f for every transaction in the table, in no particular order.
func (tt *txnTable) each(f func(*txn)) {
	for _, s := range tt.slots {
		if s.t != nil {
			f(s.t)
		}
	}
}
