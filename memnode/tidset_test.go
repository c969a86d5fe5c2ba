package memnode

import (
	"bytes"
	"fmt"
	"maps"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"
)

// recordedTIDs lists m's recorded tids with one of the values, sorted.
func recordedTIDs(m *Memnode, vals ...uint8) []TID {
	var out []TID
	m.recorded.each(func(t TID, v uint8) {
		if slices.Contains(vals, v) {
			out = append(out, t)
		}
	})
	return out
}

// checkTIDSet checks a tidSet's internal invariants: blocks sorted, aligned
// and non-empty, times one per entry with exact min and max, counts right,
// overflow entries colliding with a slot of another time or alone, and each
// in strictly increasing order.
func checkTIDSet(t testing.TB, s *tidSet) {
	t.Helper()
	var count [4]int
	for id, r := range s.clients {
		if len(r.blocks) == 0 {
			t.Fatalf("client %d has no blocks", id)
		}
		for i, b := range r.blocks {
			switch {
			case b.base%tidBlockBits != 0:
				t.Fatalf("client %d block base %d unaligned", id, b.base)
			case i > 0 && b.base <= r.blocks[i-1].base:
				t.Fatalf("client %d blocks out of order", id)
			case b.present() == 0:
				t.Fatalf("client %d block %d empty", id, b.base)
			case len(b.times) != bits.OnesCount64(b.present()):
				t.Fatalf("client %d block %d: %d times for %d entries", id, b.base, len(b.times), bits.OnesCount64(b.present()))
			case slices.Min(b.times) != b.minTime || slices.Max(b.times) != b.maxTime:
				t.Fatalf("client %d block %d: min/max %d/%d, times %v", id, b.base, b.minTime, b.maxTime, b.times)
			}
			b.counts(&count, 1)
		}
	}
	for _, v := range s.over {
		count[v]++
	}
	if count != s.count {
		t.Fatalf("counts %v, want %v", s.count, count)
	}
	var prev TID
	n := 0
	s.each(func(tid TID, v uint8) {
		if n > 0 && tid.Compare(prev) <= 0 {
			t.Fatalf("each: %v after %v", tid, prev)
		}
		if v < 1 || v > 3 || s.get(tid) != v {
			t.Fatalf("each: %v value %d, get %d", tid, v, s.get(tid))
		}
		prev = tid
		n++
	})
	if n != count[1]+count[2]+count[3] {
		t.Fatalf("each visited %d entries, counts %v", n, count)
	}
}

// TestTIDSetMatchesMap drives a tidSet and a map[TID]uint8 with the same
// random sets, lookups and sweeps: many clients, seqs out of order, the
// same (client, seq) with several times, far-apart seqs.
func TestTIDSetMatchesMap(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			var s tidSet
			want := map[TID]uint8{}
			var seqs [8]uint64
			clock := int64(1000)
			randTID := func() TID {
				c := rng.Uint64N(uint64(len(seqs)))
				tid := TID{Client: c * 1_000_003, Time: clock - rng.Int64N(300)}
				switch p := rng.IntN(100); {
				case p < 70:
					seqs[c] += rng.Uint64N(4) + 1
					tid.Seq = seqs[c]
				case p < 90:
					tid.Seq = seqs[c] - min(seqs[c], rng.Uint64N(200)) // out of order
				case p < 95:
					tid.Seq = rng.Uint64() // far away
				default:
					tid.Seq = seqs[c] // reused seq, likely another time
					tid.Time -= rng.Int64N(3) - 1
				}
				return tid
			}
			var known []TID
			for step := range 20000 {
				clock += rng.Int64N(3)
				switch p := rng.IntN(100); {
				case p < 50:
					tid := randTID()
					if len(known) > 0 && rng.IntN(4) == 0 {
						tid = known[rng.IntN(len(known))]
					}
					v := uint8(rng.IntN(3) + 1)
					s.set(tid, v)
					want[tid] = v
					known = append(known, tid)
				case p < 98:
					tid := randTID()
					if len(known) > 0 && rng.IntN(2) == 0 {
						tid = known[rng.IntN(len(known))]
					}
					if got := s.get(tid); got != want[tid] {
						t.Fatalf("step %d: get(%v) = %d, want %d", step, tid, got, want[tid])
					}
				default:
					cutoff := clock - 200
					s.sweep(cutoff)
					maps.DeleteFunc(want, func(t TID, _ uint8) bool { return t.Time < cutoff })
				}
				if step%1000 == 0 {
					checkTIDSet(t, &s)
					checkSameAsMap(t, &s, want)
				}
			}
			checkTIDSet(t, &s)
			checkSameAsMap(t, &s, want)
			s.sweep(clock + 1000)
			checkTIDSet(t, &s)
			if len(s.clients) != 0 || len(s.over) != 0 || s.count != [4]int{} {
				t.Fatalf("not empty after sweeping everything: %d clients, %d over, %v", len(s.clients), len(s.over), s.count)
			}
		})
	}
}

func checkSameAsMap(t *testing.T, s *tidSet, want map[TID]uint8) {
	t.Helper()
	var got []TID
	s.each(func(tid TID, v uint8) {
		if want[tid] != v {
			t.Fatalf("each: %v = %d, want %d", tid, v, want[tid])
		}
		got = append(got, tid)
	})
	if w := sortedTIDs(maps.Keys(want)); !slices.Equal(got, w) {
		t.Fatalf("each lists %d tids, the map %d", len(got), len(w))
	}
}

// TestRecordedSnapshotRoundTrip: decided and forced tids of many clients,
// recorded out of order and partly expired, survive Snapshot/Restore with
// their outcomes, and the restored memnode snapshots to the same bytes and
// sweeps to the same state as the original.
func TestRecordedSnapshotRoundTrip(t *testing.T) {
	cfg := Config{Horizon: 10_000}
	m, _ := New(cfg)
	rng := rand.New(rand.NewPCG(3, 4))
	now := int64(10_000)
	type rec struct {
		tid TID
		o   Outcome // OutcomeUnknown: forced
	}
	var recs []rec
	for i := range 3000 {
		now += rng.Int64N(2)
		tid := TID{Client: uint64(rng.IntN(40)) + 1, Seq: uint64(3000 - i + rng.IntN(50)), Time: now - rng.Int64N(500)}
		switch rng.IntN(3) {
		case 0:
			m.Apply(&Entry{Kind: KindAbort, Now: now, TID: tid})
			if m.Apply(&Entry{Kind: KindPrepare, Now: now, TID: tid, Participants: []uint64{1}}).Vote == VoteBadForced {
				recs = append(recs, rec{tid, OutcomeUnknown})
			}
		default:
			if r := m.Apply(&Entry{Kind: KindPrepare, Now: now, TID: tid, Participants: []uint64{1}, Op: Op{Reads: []Read{{Addr: 8, Len: 1}}}}); r.Vote != VoteOK || r.Outcome != OutcomeUnknown {
				continue
			}
			k, o := KindCommit, OutcomeCommitted
			if rng.IntN(2) == 0 {
				k, o = KindAbort, OutcomeAborted
			}
			m.Apply(&Entry{Kind: k, Now: now, TID: tid})
			recs = append(recs, rec{tid, o})
		}
	}
	checkInvariants(t, m)
	st := m.Stats()
	if st.Decided < 1000 || st.ForcedAbort < 500 {
		t.Fatalf("too few recorded tids: %+v", st)
	}
	snap := m.Snapshot()
	r, _ := New(cfg)
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, r)
	if !bytes.Equal(r.Snapshot(), snap) || r.Stats() != st {
		t.Fatalf("restored state differs: %+v vs %+v", r.Stats(), st)
	}
	for _, x := range recs {
		for _, mm := range []*Memnode{m, r} {
			res := mm.Apply(&Entry{Kind: KindAbortUnlessVoted, Now: now, TID: x.tid})
			if x.o == OutcomeUnknown {
				if res.Vote != VoteBadForced || res.Outcome != OutcomeUnknown {
					t.Fatalf("forced %v: %+v", x.tid, res)
				}
			} else if res.Outcome != x.o {
				t.Fatalf("decided %v: %+v, want %v", x.tid, res, x.o)
			}
		}
	}
	// Expiry: moving both clocks sweeps both alike, down to nothing.
	for _, step := range []int64{8000, 9500, 20_000} {
		for _, mm := range []*Memnode{m, r} {
			mm.Apply(&Entry{Kind: KindExec, Now: now + step, Op: Op{Writes: []Write{{Addr: 0, Data: []byte("x")}}}})
			checkInvariants(t, mm)
		}
		if !bytes.Equal(m.Snapshot(), r.Snapshot()) {
			t.Fatalf("after +%d: snapshots differ", step)
		}
	}
	if st := m.Stats(); st.Decided != 0 || st.ForcedAbort != 0 {
		t.Fatalf("after the horizon: %+v", st)
	}
}

// BenchmarkRecorded records and looks up tids as a memnode under a steady
// two-phase load does: one client, seqs mostly increasing, a window of a
// million live tids.
func BenchmarkRecorded(b *testing.B) {
	var s tidSet
	const live = 1 << 20
	seq := uint64(0)
	for range live {
		seq++
		s.set(TID{Client: 7, Seq: seq, Time: int64(seq)}, recCommitted)
	}
	b.ReportAllocs()
	for b.Loop() {
		seq++
		t := TID{Client: 7, Seq: seq, Time: int64(seq)}
		if s.get(t) != 0 {
			b.Fatal("present")
		}
		s.set(t, recCommitted)
		if seq%(live/8) == 0 {
			s.sweep(int64(seq - live))
		}
	}
}

// BenchmarkRecordedMap is BenchmarkRecorded with the map it replaced.
func BenchmarkRecordedMap(b *testing.B) {
	s := map[TID]Outcome{}
	const live = 1 << 20
	seq := uint64(0)
	for range live {
		seq++
		s[TID{Client: 7, Seq: seq, Time: int64(seq)}] = OutcomeCommitted
	}
	b.ReportAllocs()
	for b.Loop() {
		seq++
		t := TID{Client: 7, Seq: seq, Time: int64(seq)}
		if s[t] != 0 {
			b.Fatal("present")
		}
		s[t] = OutcomeCommitted
		if seq%(live/8) == 0 {
			maps.DeleteFunc(s, func(t TID, _ Outcome) bool { return t.Time < int64(seq-live) })
		}
	}
}
