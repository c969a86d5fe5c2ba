package memnode

import (
	"math/rand/v2"
	"testing"
)

// TestTxnTableMatchesMap drives the in-doubt table with random puts and
// deletes (tids that share a client and seq and differ in time, dense seqs
// as coordinators number them, growth to thousands and shrinking back) and
// checks every lookup against a map, and the table's fill bounds.
func TestTxnTableMatchesMap(t *testing.T) {
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 13))
		var tt txnTable
		ref := map[TID]*txn{}
		var keys []TID
		tid := func() TID {
			return TID{Client: uint64(rng.IntN(3)), Seq: uint64(rng.IntN(3000)), Time: int64(rng.IntN(2))}
		}
		grow := true
		for step := range 20000 {
			switch {
			case len(ref) > 2000:
				grow = false
			case len(ref) == 0:
				grow = true
			}
			if len(keys) > 0 && (!grow && rng.IntN(8) != 0 || grow && rng.IntN(4) == 0) {
				i := rng.IntN(len(keys))
				k := keys[i]
				keys[i] = keys[len(keys)-1]
				keys = keys[:len(keys)-1]
				tt.del(k)
				delete(ref, k)
			} else if k := tid(); ref[k] == nil {
				x := &txn{tid: k}
				tt.put(x)
				ref[k] = x
				keys = append(keys, k)
			}
			if tt.len() != len(ref) {
				t.Fatalf("seed %d step %d: len %d, want %d", seed, step, tt.len(), len(ref))
			}
			if n := tt.len(); n > 0 && (2*n > len(tt.slots) || (len(tt.slots) > minTxnSlots && 16*n < len(tt.slots))) {
				t.Fatalf("seed %d step %d: %d tids in %d slots", seed, step, n, len(tt.slots))
			}
			if step%20 == 0 || len(ref) < 50 {
				for range 20 {
					k := tid()
					if got, want := tt.get(k), ref[k]; got != want {
						t.Fatalf("seed %d step %d: get(%v) = %p, want %p", seed, step, k, got, want)
					}
				}
				for _, k := range keys {
					if got := tt.get(k); got != ref[k] {
						t.Fatalf("seed %d step %d: get(%v) = %p, want %p", seed, step, k, got, ref[k])
					}
				}
			}
		}
		n := 0
		tt.each(func(x *txn) {
			if ref[x.tid] != x {
				t.Fatalf("seed %d: each yields %v, not in the reference", seed, x.tid)
			}
			n++
		})
		if n != len(ref) {
			t.Fatalf("seed %d: each yields %d, want %d", seed, n, len(ref))
		}
	}
}
