package memnode

import (
	"math/bits"
	"slices"
)

// Locks are data: the ranges held by in-doubt transactions, indexed by
// address so that a check looks only at locks near the requested range.
//
// Two indexes, by lock length:
//   - small locks (at most fineSize bytes: words, counters, headers — what
//     most minitransactions lock) are listed in each fine bucket
//     (addr >> fineShift, 64 bytes) they cover, at most two;
//   - larger locks are listed in each coarse bucket (addr >> lockShift,
//     4 KiB) they cover.
//
// A check of [start, end) scans the coarse buckets of the range and the
// fine buckets of the range, or, for a range over more fine buckets than
// the fine index has slots, every slot: O(min(range/64, fine locks)). The
// fine index is a hash multimap of its own (fineTable), not a Go map.
// Under load hundreds of word locks are held at once; with 4 KiB buckets
// alone they crowded a few dozen buckets and every check, acquire and
// release scanned tens of entries (BenchmarkApplyTwoPhase/inflight=512:
// 1.57 µs per Prepare+Commit before, see doc.go for after). With no lock
// held the table is empty and every check is O(1).
//
// A transaction takes an exclusive lock on each write item and a shared
// lock on each compare or read item that does not lie inside one of its
// own write items (an exclusive lock conflicts with all a shared one does,
// so such a shared lock would add nothing: a compare-and-swap takes one
// lock, not two).
//
// Invariant: the table holds exactly the lock spans of the in-doubt
// transactions (txn.locks), and no two spans of different transactions
// conflict.

const (
	lockShift = 12 // coarse buckets: 4 KiB
	fineShift = 6  // fine buckets: 64 bytes
	fineSize  = 1 << fineShift
)

// lockSpan is one range [start, end) a transaction locks.
type lockSpan struct {
	start, end uint64
	excl       bool
}

// heldLock is one locked range [start, end) in one bucket.
type heldLock struct {
	start, end uint64
	excl       bool
	owner      *txn
}

type lockTable struct {
	coarse map[uint64][]heldLock // locks longer than fineSize
	fine   fineTable             // locks of at most fineSize bytes
	// ranges counts locked ranges (a range in several buckets counts once).
	ranges int
}

// fineTable is the fine index: a hash multimap from fine bucket to the
// small locks listed in it, one slot per (lock, bucket), open addressing
// with linear probing and backward-shift deletion, at most half full. The
// locks of bucket b are the slots of key b+1 in the probe run from b's
// home slot to the next empty slot. A Go map of buckets to lists cost a
// check, an acquire and a release of a word's lock a map probe each (two
// for a release), its 64-byte slots and control words two cache misses
// when cold, which under the cas2 load they always are (doc.go, "Cost of
// applying").
type fineTable struct {
	slots []fineSlot // len is 0 or a power of two
	n     int        // occupied slots
}

// fineSlot is one small lock in one fine bucket. An empty slot has key 0.
type fineSlot struct {
	key        uint64 // bucket + 1
	start, end uint64
	owner      *txn
	excl       bool
}

const minFineSlots = 64

func (ft *fineTable) home(b uint64) int {
	return int((b * 0x9E3779B97F4A7C15) >> (64 - bits.Len(uint(len(ft.slots)-1))))
}

// conflicts reports whether a lock listed in bucket b, not self's,
// conflicts with a request for [start, end).
func (ft *fineTable) conflicts(b, start, end uint64, excl bool, self *txn) bool {
	if ft.n == 0 {
		return false
	}
	mask, key := len(ft.slots)-1, b+1
	for i := ft.home(b); ; i = (i + 1) & mask {
		s := &ft.slots[i]
		switch {
		case s.key == 0:
			return false
		case s.key == key && s.owner != self && s.start < end && start < s.end && (excl || s.excl):
			return true
		}
	}
}

// add lists h in bucket b.
func (ft *fineTable) add(b uint64, h heldLock) {
	if 2*(ft.n+1) > len(ft.slots) {
		ft.resize(max(minFineSlots, 2*len(ft.slots)))
	}
	ft.put(fineSlot{key: b + 1, start: h.start, end: h.end, owner: h.owner, excl: h.excl})
	ft.n++
}

func (ft *fineTable) put(s fineSlot) {
	mask := len(ft.slots) - 1
	i := ft.home(s.key - 1)
	for ft.slots[i].key != 0 {
		i = (i + 1) & mask
	}
	ft.slots[i] = s
}

// remove drops one of t's slots in bucket b, if any. The table shrinks
// when it is less than 1/8 full, so a burst of locks does not keep its
// memory for good.
func (ft *fineTable) remove(b uint64, t *txn) {
	if ft.n == 0 {
		return
	}
	mask, key := len(ft.slots)-1, b+1
	i := ft.home(b)
	for ; ; i = (i + 1) & mask {
		s := &ft.slots[i]
		if s.key == 0 {
			return
		}
		if s.key == key && s.owner == t {
			break
		}
	}
	// Backward shift: move later slots of the run into the hole unless
	// their home lies cyclically in (hole, slot].
	for j := (i + 1) & mask; ft.slots[j].key != 0; j = (j + 1) & mask {
		k := ft.home(ft.slots[j].key - 1)
		if (i <= j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			ft.slots[i] = ft.slots[j]
			i = j
		}
	}
	ft.slots[i] = fineSlot{}
	ft.n--
	if len(ft.slots) > minFineSlots && 8*ft.n < len(ft.slots) {
		ft.resize(len(ft.slots) / 2)
	}
}

func (ft *fineTable) resize(n int) {
	old := ft.slots
	ft.slots = make([]fineSlot, n)
	for _, s := range old {
		if s.key != 0 {
			ft.put(s)
		}
	}
}

// each calls f for every slot in use.
func (ft *fineTable) each(f func(b uint64, h heldLock)) {
	for _, s := range ft.slots {
		if s.key != 0 {
			f(s.key-1, heldLock{start: s.start, end: s.end, excl: s.excl, owner: s.owner})
		}
	}
}

// txnLocks appends to out the spans a transaction with these items locks
// (see the package comment above). The containment check is quadratic, so
// it is skipped (every item locked) for transactions with many items.
func txnLocks(out []lockSpan, compares []span, reads []Read, writes []Write) []lockSpan {
	dedupe := len(writes)*(len(compares)+len(reads)) <= maxDedupe
	for _, c := range compares {
		if !dedupe || !inWrites(c.addr, c.addr+c.n, writes) {
			out = append(out, lockSpan{c.addr, c.addr + c.n, false})
		}
	}
	for _, r := range reads {
		if end := r.Addr + uint64(r.Len); !dedupe || !inWrites(r.Addr, end, writes) {
			out = append(out, lockSpan{r.Addr, end, false})
		}
	}
	for _, w := range writes {
		out = append(out, lockSpan{w.Addr, w.Addr + uint64(len(w.Data)), true})
	}
	return out
}

// maxDedupe bounds the pairs of (write, compare or read) items compared to
// find shared locks inside exclusive ones.
const maxDedupe = 256

// inWrites reports whether [start, end) lies inside one of ws.
func inWrites(start, end uint64, ws []Write) bool {
	for _, w := range ws {
		if w.Addr <= start && end <= w.Addr+uint64(len(w.Data)) {
			return true
		}
	}
	return false
}

// conflicts reports whether a request for [start, end), exclusive or
// shared, conflicts with a held lock: a shared request conflicts with an
// overlapping exclusive lock, an exclusive request with any overlapping lock.
func (lt *lockTable) conflicts(start, end uint64, excl bool) bool {
	return lt.conflictsExcept(start, end, excl, nil)
}

// conflictsExcept is conflicts ignoring the locks of self (nil: none).
func (lt *lockTable) conflictsExcept(start, end uint64, excl bool, self *txn) bool {
	if len(lt.coarse) > 0 {
		for b, last := start>>lockShift, (end-1)>>lockShift; b <= last; b++ {
			if bucketConflicts(lt.coarse[b], start, end, excl, self) {
				return true
			}
		}
	}
	if lt.fine.n == 0 {
		return false
	}
	first, last := start>>fineShift, (end-1)>>fineShift
	if last-first < uint64(len(lt.fine.slots)) {
		for b := first; b <= last; b++ {
			if lt.fine.conflicts(b, start, end, excl, self) {
				return true
			}
		}
		return false
	}
	for _, s := range lt.fine.slots {
		if s.key != 0 && s.owner != self && s.start < end && start < s.end && (excl || s.excl) {
			return true
		}
	}
	return false
}

func bucketConflicts(hs []heldLock, start, end uint64, excl bool, self *txn) bool {
	for i := range hs {
		h := &hs[i]
		if h.owner != self && h.start < end && start < h.end && (excl || h.excl) {
			return true
		}
	}
	return false
}

func (lt *lockTable) empty() bool { return lt.ranges == 0 }

// opConflicts reports whether any item of op conflicts with a held lock:
// compare and read items ask for shared locks, write items for exclusive
// ones (a compare or read inside one of op's writes needs no check of its
// own: the write's is stricter). Items of op never conflict with each other.
func (lt *lockTable) opConflicts(op *Op) bool {
	if lt.empty() {
		return false
	}
	if len(op.Writes)*(len(op.Compares)+len(op.Reads)) > maxDedupe {
		if lt.queryConflicts(op) {
			return true
		}
	} else {
		for _, c := range op.Compares {
			if end := c.Addr + uint64(len(c.Data)); !inWrites(c.Addr, end, op.Writes) && lt.conflicts(c.Addr, end, false) {
				return true
			}
		}
		for _, r := range op.Reads {
			if end := r.Addr + uint64(r.Len); !inWrites(r.Addr, end, op.Writes) && lt.conflicts(r.Addr, end, false) {
				return true
			}
		}
	}
	for _, w := range op.Writes {
		if lt.conflicts(w.Addr, w.Addr+uint64(len(w.Data)), true) {
			return true
		}
	}
	return false
}

// queryConflicts reports whether a compare or read range of op overlaps an
// exclusive lock.
func (lt *lockTable) queryConflicts(op *Op) bool {
	if lt.empty() {
		return false
	}
	for _, c := range op.Compares {
		if lt.conflicts(c.Addr, c.Addr+uint64(len(c.Data)), false) {
			return true
		}
	}
	for _, r := range op.Reads {
		if lt.conflicts(r.Addr, r.Addr+uint64(r.Len), false) {
			return true
		}
	}
	return false
}

// txnConflicts reports whether any lock t would take conflicts with a held
// lock.
func (lt *lockTable) txnConflicts(t *txn) bool {
	if lt.empty() {
		return false
	}
	for _, s := range t.locks {
		if lt.conflicts(s.start, s.end, s.excl) {
			return true
		}
	}
	return false
}

// acquire takes every lock of t. The caller has checked txnConflicts.
func (lt *lockTable) acquire(t *txn) {
	for _, s := range t.locks {
		lt.acquireSpan(s, t)
	}
}

// tryAcquire takes every lock of t unless one conflicts with a lock held
// by another transaction; then it takes none and reports false. It is
// txnConflicts and acquire in one pass: each bucket is probed once, and a
// Prepare's second look at a cold bucket is what it saves.
func (lt *lockTable) tryAcquire(t *txn) bool {
	for i, s := range t.locks {
		if !lt.empty() && lt.conflictsExcept(s.start, s.end, s.excl, t) {
			lt.releaseSpans(t.locks[:i], t)
			return false
		}
		lt.acquireSpan(s, t)
	}
	return true
}

func (lt *lockTable) acquireSpan(s lockSpan, t *txn) {
	h := heldLock{start: s.start, end: s.end, excl: s.excl, owner: t}
	if s.end-s.start > fineSize {
		if lt.coarse == nil {
			lt.coarse = make(map[uint64][]heldLock)
		}
		for b, last := s.start>>lockShift, (s.end-1)>>lockShift; b <= last; b++ {
			lt.coarse[b] = append(lt.coarse[b], h)
		}
	} else {
		for b, last := s.start>>fineShift, (s.end-1)>>fineShift; b <= last; b++ {
			lt.fine.add(b, h)
		}
	}
	lt.ranges++
}

// release drops every lock of t; empty buckets are deleted so that the
// table returns to empty when no transaction is in doubt.
func (lt *lockTable) release(t *txn) { lt.releaseSpans(t.locks, t) }

// releaseSpans drops t's locks of spans, which t holds.
func (lt *lockTable) releaseSpans(spans []lockSpan, t *txn) {
	for _, s := range spans {
		if s.end-s.start > fineSize {
			for b, last := s.start>>lockShift, (s.end-1)>>lockShift; b <= last; b++ {
				removeOwned(lt.coarse, b, t)
			}
		} else {
			for b, last := s.start>>fineShift, (s.end-1)>>fineShift; b <= last; b++ {
				lt.fine.remove(b, t)
			}
		}
	}
	lt.ranges -= len(spans)
}

// removeOwned drops one of t's entries in coarse bucket b. t lists one
// entry per span and bucket, so a span releasing its buckets removes
// exactly its own entries (two spans of t in one bucket remove one entry
// each; they are interchangeable).
func removeOwned(m map[uint64][]heldLock, b uint64, t *txn) {
	hs := m[b]
	i := ownedBy(hs, t)
	switch {
	case i < 0:
	case len(hs) == 1:
		delete(m, b)
	default:
		m[b] = removeAt(hs, i)
	}
}

// ownedBy returns the index of t's first entry in hs, or -1.
func ownedBy(hs []heldLock, t *txn) int {
	return slices.IndexFunc(hs, func(h heldLock) bool { return h.owner == t })
}

// removeAt removes hs[i] by moving the last entry there; the vacated slot
// drops its owner pointer.
func removeAt(hs []heldLock, i int) []heldLock {
	last := len(hs) - 1
	hs[i] = hs[last]
	hs[last] = heldLock{}
	return hs[:last]
}
