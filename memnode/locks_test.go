package memnode

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestLockTableMatchesNaiveModel drives the two-level lock table with random
// transactions (word locks, locks straddling fine buckets and 4 KiB regions,
// long locks, compare-and-swaps whose shared lock is subsumed) and checks
// every conflict answer against a scan of all held spans.
func TestLockTableMatchesNaiveModel(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var lt lockTable
		var held []*txn
		// Addresses cluster near region and fine-bucket boundaries, where
		// the indexes split ranges.
		addr := func() uint64 {
			base := uint64(rng.IntN(6)) << lockShift
			return base + uint64(rng.IntN(3*fineSize)) - min(base, fineSize)
		}
		length := func() uint64 {
			switch rng.IntN(4) {
			case 0:
				return 4
			case 1:
				return uint64(1 + rng.IntN(fineSize))
			case 2:
				return uint64(fineSize + 1 + rng.IntN(3*fineSize))
			default:
				return uint64(1 + rng.IntN(3<<lockShift))
			}
		}
		naive := func(start, end uint64, excl bool) bool {
			for _, h := range held {
				for _, s := range h.locks {
					if s.start < end && start < s.end && (excl || s.excl) {
						return true
					}
				}
			}
			return false
		}
		for step := range 3000 {
			switch rng.IntN(3) {
			case 0, 1: // prepare a transaction if it conflicts with nothing
				op := Op{}
				for range 1 + rng.IntN(3) {
					a, n := addr(), length()
					switch rng.IntN(3) {
					case 0:
						op.Compares = append(op.Compares, Compare{Addr: a, Data: make([]byte, n)})
					case 1:
						op.Reads = append(op.Reads, Read{Addr: a, Len: uint32(n)})
					default: // compare-and-swap: one exclusive lock
						op.Compares = append(op.Compares, Compare{Addr: a, Data: make([]byte, n)})
						op.Writes = append(op.Writes, Write{Addr: a, Data: make([]byte, n)})
					}
				}
				tx := (&Memnode{}).newTxn(TID{Client: 1, Seq: uint64(step) + 1}, nil, 0, &op)
				want := false
				for _, s := range tx.locks {
					want = want || naive(s.start, s.end, s.excl)
				}
				if got := lt.txnConflicts(tx); got != want {
					t.Fatalf("seed %d step %d: txnConflicts = %v, naive %v (locks %v)", seed, step, got, want, tx.locks)
				}
				if got := lt.opConflicts(&op); got != want {
					t.Fatalf("seed %d step %d: opConflicts = %v, naive %v", seed, step, got, want)
				}
				ranges, fine, coarse := lt.ranges, lt.fine.n, len(lt.coarse)
				if got := lt.tryAcquire(tx); got == want {
					t.Fatalf("seed %d step %d: tryAcquire = %v with a conflict %v", seed, step, got, want)
				}
				if want && (lt.ranges != ranges || lt.fine.n != fine || len(lt.coarse) != coarse) {
					t.Fatalf("seed %d step %d: refused tryAcquire changed the table: %d/%d/%d ranges/fine/coarse, was %d/%d/%d",
						seed, step, lt.ranges, lt.fine.n, len(lt.coarse), ranges, fine, coarse)
				}
				if !want {
					held = append(held, tx)
				}
			default: // release a random transaction
				if len(held) == 0 {
					continue
				}
				i := rng.IntN(len(held))
				lt.release(held[i])
				held = append(held[:i], held[i+1:]...)
			}
			a, n := addr(), length()
			excl := rng.IntN(2) == 0
			if got, want := lt.conflicts(a, a+n, excl), naive(a, a+n, excl); got != want {
				t.Fatalf("seed %d step %d: conflicts([%#x,%#x), excl=%v) = %v, naive %v", seed, step, a, a+n, excl, got, want)
			}
		}
		for _, h := range held {
			lt.release(h)
		}
		if lt.ranges != 0 || len(lt.coarse) != 0 || lt.fine.n != 0 {
			t.Fatalf("seed %d: table not empty after releasing everything: %d ranges, %d/%d buckets",
				seed, lt.ranges, len(lt.coarse), lt.fine.n)
		}
	}
}

// TestCompareAndSwapTakesOneLock: a compare inside the transaction's own
// write range takes no shared lock, yet another transaction's compare of
// those bytes still conflicts.
func TestCompareAndSwapTakesOneLock(t *testing.T) {
	op := Op{
		Compares: []Compare{{Addr: 8, Data: []byte("abcd")}, {Addr: 100, Data: []byte("x")}},
		Writes:   []Write{{Addr: 8, Data: []byte("wxyz")}},
	}
	tx := (&Memnode{}).newTxn(TID{Client: 1, Seq: 1}, nil, 0, &op)
	want := []lockSpan{{100, 101, false}, {8, 12, true}}
	if len(tx.locks) != len(want) || tx.locks[0] != want[0] || tx.locks[1] != want[1] {
		t.Fatalf("locks %v, want %v", tx.locks, want)
	}
	var lt lockTable
	lt.acquire(tx)
	if !lt.conflicts(10, 11, false) {
		t.Fatal("a shared request inside the swapped word does not conflict")
	}
	if lt.conflicts(100, 101, false) || !lt.conflicts(100, 101, true) {
		t.Fatal("the other compare's shared lock is wrong")
	}
}

// TestFineTableMatchesMultimap drives the fine index's open addressing
// with random adds and removes over few buckets and many owners (long probe
// runs, runs that wrap around the end, growing to thousands of slots and
// shrinking back) and checks after every step that probing from each
// bucket's home finds exactly the locks a reference multimap lists, that
// conflict answers match, and that the table stays between 1/16 and 1/2
// full.
func TestFineTableMatchesMultimap(t *testing.T) {
	type lock struct {
		b     uint64
		owner *txn
		start uint64
	}
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 11))
		var ft fineTable
		var held []lock
		owners := make([]*txn, 256)
		for i := range owners {
			owners[i] = &txn{tid: TID{Client: 1, Seq: uint64(i) + 1}}
		}
		probe := func(b uint64) []lock {
			var out []lock
			if ft.n == 0 {
				return nil
			}
			mask := len(ft.slots) - 1
			for i := ft.home(b); ft.slots[i].key != 0; i = (i + 1) & mask {
				if s := ft.slots[i]; s.key == b+1 {
					out = append(out, lock{b, s.owner, s.start})
				}
			}
			return out
		}
		key := func(l lock) string { return fmt.Sprintf("%d/%p/%d", l.b, l.owner, l.start) }
		check := func(step int) {
			t.Helper()
			if ft.n != len(held) {
				t.Fatalf("seed %d step %d: n = %d, want %d", seed, step, ft.n, len(held))
			}
			if ft.n > 0 && (2*ft.n > len(ft.slots) || (len(ft.slots) > minFineSlots && 16*ft.n < len(ft.slots))) {
				t.Fatalf("seed %d step %d: %d locks in %d slots", seed, step, ft.n, len(ft.slots))
			}
			want := map[uint64][]string{}
			for _, l := range held {
				want[l.b] = append(want[l.b], key(l))
			}
			for b := range uint64(40) {
				var got []string
				for _, l := range probe(b) {
					got = append(got, key(l))
				}
				slices.Sort(got)
				slices.Sort(want[b])
				if !slices.Equal(got, want[b]) {
					t.Fatalf("seed %d step %d: bucket %d probes to %v, want %v", seed, step, b, got, want[b])
				}
				start := b<<fineShift + uint64(rng.IntN(fineSize))
				naive := false
				for _, l := range held {
					naive = naive || (l.b == b && l.start < start+4 && start < l.start+4)
				}
				if got := ft.conflicts(b, start, start+4, true, nil); got != naive {
					t.Fatalf("seed %d step %d: conflicts(%d, %#x) = %v, want %v", seed, step, b, start, got, naive)
				}
			}
		}
		grow := true
		for step := range 8000 {
			switch {
			case len(held) > 1500:
				grow = false
			case len(held) == 0:
				grow = true
			}
			if len(held) > 0 && (!grow && rng.IntN(8) != 0 || grow && rng.IntN(4) == 0) {
				i := rng.IntN(len(held))
				ft.remove(held[i].b, held[i].owner)
				held = slices.Delete(held, i, i+1)
			} else {
				// An owner has at most one lock per bucket here, so the
				// one remove drops is the reference's.
				b := uint64(rng.IntN(40))
				l := lock{b, owners[rng.IntN(len(owners))], b<<fineShift + uint64(rng.IntN(fineSize-4))}
				if slices.ContainsFunc(held, func(h lock) bool { return h.b == l.b && h.owner == l.owner }) {
					continue
				}
				ft.add(b, heldLock{start: l.start, end: l.start + 4, excl: true, owner: l.owner})
				held = append(held, l)
			}
			if step%50 == 0 || len(held) < 100 {
				check(step)
			}
		}
	}
}
