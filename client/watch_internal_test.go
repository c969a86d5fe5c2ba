package client

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// merge keeps the newest bytes where events overlap, joins adjacent ranges,
// never modifies the merged events' slices, and drops the data when either
// event lacks it, when it grows past watchMaxData, or on a reset.
func TestWatchEventMergeData(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	for round := range 300 {
		var mem [200]byte
		var have [200]bool
		var acc WatchEvent
		first := true
		var frozen [][]byte // copies of every merged event's data, to check immutability
		var given []WatchEvent
		for range 1 + rnd.IntN(6) {
			// One event: a few disjoint ranges with data.
			var ev WatchEvent
			at := uint64(rnd.IntN(20))
			for at < uint64(len(mem)) && len(ev.Ranges) < 4 {
				n := 1 + uint64(rnd.IntN(30))
				if at+n > uint64(len(mem)) {
					n = uint64(len(mem)) - at
				}
				d := make([]byte, n)
				for i := range d {
					d[i] = byte(rnd.Uint32())
				}
				ev.Ranges = append(ev.Ranges, Range{at, n})
				ev.Data = append(ev.Data, d)
				at += n + 1 + uint64(rnd.IntN(40))
			}
			for i, r := range ev.Ranges {
				copy(mem[r.Addr:], ev.Data[i])
				for j := r.Addr; j < r.Addr+r.Len; j++ {
					have[j] = true
				}
				frozen = append(frozen, slices.Clone(ev.Data[i]))
			}
			given = append(given, ev)
			if first {
				acc, first = ev, false
			} else {
				acc.merge(ev)
			}
		}
		if !acc.hasData() {
			t.Fatalf("round %d: merged event %+v lost its data", round, acc)
		}
		for i, r := range acc.Ranges {
			if i > 0 && acc.Ranges[i-1].Addr+acc.Ranges[i-1].Len >= r.Addr {
				t.Fatalf("round %d: ranges %v not merged", round, acc.Ranges)
			}
			if string(acc.Data[i]) != string(mem[r.Addr:r.Addr+r.Len]) {
				t.Fatalf("round %d: %+v holds %x, want %x", round, r, acc.Data[i], mem[r.Addr:r.Addr+r.Len])
			}
			for j := r.Addr; j < r.Addr+r.Len; j++ {
				if !have[j] {
					t.Fatalf("round %d: %+v covers unwritten byte %d", round, r, j)
				}
				have[j] = false
			}
		}
		if slices.Contains(have[:], true) {
			t.Fatalf("round %d: written bytes missing from %v", round, acc.Ranges)
		}
		k := 0
		for _, ev := range given {
			for _, d := range ev.Data {
				if string(d) != string(frozen[k]) {
					t.Fatalf("round %d: merge modified an event's data", round)
				}
				k++
			}
		}
	}

	withData := WatchEvent{Index: 1, Ranges: []Range{{0, 4}}, Data: [][]byte{[]byte("abcd")}}
	hint := WatchEvent{Index: 2, Ranges: []Range{{8, 2}}}
	e := withData
	e.merge(hint)
	if e.Data != nil || e.Index != 2 || !slices.Equal(e.Ranges, []Range{{0, 4}, {8, 2}}) {
		t.Fatalf("data merged with a hint: %+v", e)
	}
	e = hint
	e.merge(withData)
	if e.Data != nil || !slices.Equal(e.Ranges, []Range{{0, 4}, {8, 2}}) {
		t.Fatalf("hint merged with data: %+v", e)
	}
	e = withData
	e.merge(WatchEvent{Index: 3, Reset: true})
	if !e.Reset || e.Data != nil || e.Ranges != nil {
		t.Fatalf("data merged with a reset: %+v", e)
	}
	big := WatchEvent{Ranges: []Range{{0, watchMaxData}}, Data: [][]byte{make([]byte, watchMaxData)}}
	big.merge(WatchEvent{Ranges: []Range{{watchMaxData + 8, 8}}, Data: [][]byte{make([]byte, 8)}})
	if big.Data != nil || len(big.Ranges) != 2 {
		t.Fatalf("merge past watchMaxData kept the data (%d ranges)", len(big.Ranges))
	}
	// Malformed data (wrong length) makes an event a hint.
	bad := WatchEvent{Ranges: []Range{{0, 4}}, Data: [][]byte{[]byte("abc")}}
	if bad.hasData() {
		t.Fatal("data of the wrong length accepted")
	}
	if _, ok := bad.Bytes(0, 1); ok {
		t.Fatal("Bytes of malformed data")
	}
}
