package memnode

import (
	"math/rand/v2"
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
				if !want {
					lt.acquire(tx)
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
		if lt.ranges != 0 || len(lt.coarse) != 0 || len(lt.fine) != 0 {
			t.Fatalf("seed %d: table not empty after releasing everything: %d ranges, %d/%d buckets",
				seed, lt.ranges, len(lt.coarse), len(lt.fine))
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
