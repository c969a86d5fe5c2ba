package memnode

import "slices"

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
// the table holds, every held fine bucket: O(min(range/64, fine buckets)).
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

// fineBucket holds the small locks of one fine bucket: almost always one,
// kept in the map's slot without a slice of its own.
type fineBucket struct {
	h    heldLock
	more []heldLock
}

type lockTable struct {
	coarse map[uint64][]heldLock // locks longer than fineSize
	fine   map[uint64]fineBucket // locks of at most fineSize bytes
	// ranges counts locked ranges (a range in several buckets counts once).
	ranges int
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
	if len(lt.coarse) > 0 {
		for b, last := start>>lockShift, (end-1)>>lockShift; b <= last; b++ {
			if bucketConflicts(lt.coarse[b], start, end, excl) {
				return true
			}
		}
	}
	if len(lt.fine) == 0 {
		return false
	}
	first, last := start>>fineShift, (end-1)>>fineShift
	if last-first < uint64(len(lt.fine)) {
		for b := first; b <= last; b++ {
			if lt.fineConflicts(b, start, end, excl) {
				return true
			}
		}
		return false
	}
	for b := range lt.fine {
		if first <= b && b <= last && lt.fineConflicts(b, start, end, excl) {
			return true
		}
	}
	return false
}

func (lt *lockTable) fineConflicts(b, start, end uint64, excl bool) bool {
	fb, ok := lt.fine[b]
	if !ok {
		return false
	}
	h := &fb.h
	if h.start < end && start < h.end && (excl || h.excl) {
		return true
	}
	return bucketConflicts(fb.more, start, end, excl)
}

func bucketConflicts(hs []heldLock, start, end uint64, excl bool) bool {
	for i := range hs {
		h := &hs[i]
		if h.start < end && start < h.end && (excl || h.excl) {
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
		h := heldLock{start: s.start, end: s.end, excl: s.excl, owner: t}
		if s.end-s.start > fineSize {
			if lt.coarse == nil {
				lt.coarse = make(map[uint64][]heldLock)
			}
			for b, last := s.start>>lockShift, (s.end-1)>>lockShift; b <= last; b++ {
				lt.coarse[b] = append(lt.coarse[b], h)
			}
		} else {
			if lt.fine == nil {
				lt.fine = make(map[uint64]fineBucket)
			}
			for b, last := s.start>>fineShift, (s.end-1)>>fineShift; b <= last; b++ {
				if fb, ok := lt.fine[b]; ok {
					fb.more = append(fb.more, h)
					lt.fine[b] = fb
				} else {
					lt.fine[b] = fineBucket{h: h}
				}
			}
		}
	}
	lt.ranges += len(t.locks)
}

// release drops every lock of t; empty buckets are deleted so that the
// table returns to empty when no transaction is in doubt.
func (lt *lockTable) release(t *txn) {
	for _, s := range t.locks {
		if s.end-s.start > fineSize {
			for b, last := s.start>>lockShift, (s.end-1)>>lockShift; b <= last; b++ {
				removeOwned(lt.coarse, b, t)
			}
		} else {
			for b, last := s.start>>fineShift, (s.end-1)>>fineShift; b <= last; b++ {
				lt.removeFine(b, t)
			}
		}
	}
	lt.ranges -= len(t.locks)
}

// removeFine drops one of t's entries in fine bucket b (see removeOwned).
func (lt *lockTable) removeFine(b uint64, t *txn) {
	fb, ok := lt.fine[b]
	switch {
	case !ok:
		return
	case fb.h.owner == t && len(fb.more) == 0:
		delete(lt.fine, b)
		return
	case fb.h.owner == t:
		last := len(fb.more) - 1
		fb.h = fb.more[last]
		fb.more = removeAt(fb.more, last)
	default:
		i := ownedBy(fb.more, t)
		if i < 0 {
			return
		}
		fb.more = removeAt(fb.more, i)
	}
	lt.fine[b] = fb
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
