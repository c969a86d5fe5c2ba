package memnode

// Locks are data: the ranges held by in-doubt transactions, indexed by
// bucket (addr >> lockShift) so that a check looks only at locks near the
// requested range. A lock covering several buckets is listed in each of
// them. With no lock held the table is empty and every check is O(1).
//
// Invariant: the table holds exactly the lock ranges of the in-doubt
// transactions (shared for their compare and read items, exclusive for their
// write items), and no two ranges of different transactions conflict.

const lockShift = 12

// heldLock is one locked range [start, end) in one bucket.
type heldLock struct {
	start, end uint64
	excl       bool
	owner      *txn
}

type lockTable struct {
	buckets map[uint64][]heldLock
	// ranges counts locked ranges (a range in several buckets counts once).
	ranges int
}

// conflicts reports whether a request for [start, end), exclusive or
// shared, conflicts with a held lock: a shared request conflicts with an
// overlapping exclusive lock, an exclusive request with any overlapping lock.
func (lt *lockTable) conflicts(start, end uint64, excl bool) bool {
	if len(lt.buckets) == 0 {
		return false
	}
	for b, last := start>>lockShift, (end-1)>>lockShift; b <= last; b++ {
		for _, h := range lt.buckets[b] {
			if h.start < end && start < h.end && (excl || h.excl) {
				return true
			}
		}
	}
	return false
}

// opConflicts reports whether any item of op conflicts with a held lock:
// compare and read items ask for shared locks, write items for exclusive
// ones. Items of op never conflict with each other.
func (lt *lockTable) opConflicts(op *Op) bool {
	if len(lt.buckets) == 0 {
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
	if len(lt.buckets) == 0 {
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
	if len(lt.buckets) == 0 {
		return false
	}
	for _, s := range t.compares {
		if lt.conflicts(s.addr, s.addr+s.n, false) {
			return true
		}
	}
	for _, r := range t.reads {
		if lt.conflicts(r.Addr, r.Addr+uint64(r.Len), false) {
			return true
		}
	}
	for _, w := range t.writes {
		if lt.conflicts(w.Addr, w.Addr+uint64(len(w.Data)), true) {
			return true
		}
	}
	return false
}

// acquire takes every lock of t. The caller has checked txnConflicts.
func (lt *lockTable) acquire(t *txn) {
	for _, s := range t.compares {
		lt.add(s.addr, s.addr+s.n, false, t)
	}
	for _, r := range t.reads {
		lt.add(r.Addr, r.Addr+uint64(r.Len), false, t)
	}
	for _, w := range t.writes {
		lt.add(w.Addr, w.Addr+uint64(len(w.Data)), true, t)
	}
}

func (lt *lockTable) add(start, end uint64, excl bool, t *txn) {
	if lt.buckets == nil {
		lt.buckets = make(map[uint64][]heldLock)
	}
	for b, last := start>>lockShift, (end-1)>>lockShift; b <= last; b++ {
		lt.buckets[b] = append(lt.buckets[b], heldLock{start: start, end: end, excl: excl, owner: t})
	}
	lt.ranges++
}

// release drops every lock of t; empty buckets are deleted so that the
// table returns to empty when no transaction is in doubt.
func (lt *lockTable) release(t *txn) {
	for _, s := range t.compares {
		lt.remove(s.addr, s.addr+s.n, t)
	}
	for _, r := range t.reads {
		lt.remove(r.Addr, r.Addr+uint64(r.Len), t)
	}
	for _, w := range t.writes {
		lt.remove(w.Addr, w.Addr+uint64(len(w.Data)), t)
	}
	lt.ranges -= t.lockCount()
}

// remove drops t's locks from the buckets of [start, end). A bucket visited
// twice (t locked two ranges in it) is simply found clean the second time.
func (lt *lockTable) remove(start, end uint64, t *txn) {
	for b, last := start>>lockShift, (end-1)>>lockShift; b <= last; b++ {
		hs, ok := lt.buckets[b]
		if !ok {
			continue
		}
		kept := hs[:0]
		for _, h := range hs {
			if h.owner != t {
				kept = append(kept, h)
			}
		}
		clear(hs[len(kept):]) // drop owner pointers
		if len(kept) == 0 {
			delete(lt.buckets, b)
		} else {
			lt.buckets[b] = kept
		}
	}
}
