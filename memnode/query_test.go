package memnode

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"
)

func TestInspectInDoubtAndStats(t *testing.T) {
	m, err := New(Config{Horizon: 1000})
	if err != nil {
		t.Fatal(err)
	}
	apply := func(e Entry) Result {
		t.Helper()
		r := m.Apply(&e)
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return r
	}
	apply(Entry{Kind: KindPrepare, Now: 10, TID: TID{Client: 7, Seq: 1, Time: 9}, Participants: []uint64{0, 2},
		Op: Op{Writes: []Write{{Addr: 8, Data: []byte("x")}}}})
	apply(Entry{Kind: KindPrepare, Now: 20, TID: TID{Client: 7, Seq: 2, Time: 19}, Participants: []uint64{0, 1},
		Op: Op{Reads: []Read{{Addr: 100, Len: 1}}}})
	apply(Entry{Kind: KindAbort, Now: 21, TID: TID{Client: 7, Seq: 3, Time: 21}})

	clock, txs, err := DecodeInDoubt(m.Answer(AppendInspect(nil, InspectInDoubt)))
	if err != nil {
		t.Fatal(err)
	}
	want := []InDoubtTx{
		{TID: TID{Client: 7, Seq: 1, Time: 9}, Participants: []uint64{0, 2}, PreparedAt: 10},
		{TID: TID{Client: 7, Seq: 2, Time: 19}, Participants: []uint64{0, 1}, PreparedAt: 20},
	}
	if clock != 21 || !reflect.DeepEqual(txs, want) {
		t.Fatalf("in-doubt listing: clock %d %+v, want 21 %+v", clock, txs, want)
	}
	s, err := DecodeStats(m.Answer(AppendInspect(nil, InspectStats)))
	if err != nil {
		t.Fatal(err)
	}
	if s != m.Stats() || s.InDoubt != 2 || s.ForcedAbort != 1 || s.Now != 21 {
		t.Fatalf("stats %+v, want %+v", s, m.Stats())
	}

	// The read-only minitransaction query still answers through Answer.
	r, err := DecodeResult(m.Answer(AppendQuery(nil, 30, &Op{Reads: []Read{{Addr: 100, Len: 1}}})))
	if err != nil || r.Vote != VoteOK || len(r.Reads) != 1 {
		t.Fatalf("query through Answer: %+v %v", r, err)
	}
	// Unknown inspections answer an error result, which the decoders return.
	bad := m.Answer([]byte{queryTagInspect, 99})
	if _, _, err := DecodeInDoubt(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown inspection: %v", err)
	}
	if _, err := DecodeStats(m.Answer(AppendInspect(nil, InspectInDoubt))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("stats decoder on a listing: %v", err)
	}
	if _, _, err := DecodeInDoubt([]byte{9}); !errors.Is(err, ErrVersion) {
		t.Fatalf("bad tag: %v", err)
	}
	if s2 := m.Stats(); s2 != s {
		t.Fatalf("inspection changed state: %+v -> %+v", s, s2)
	}
}

func TestInDoubtEncodingRoundTrip(t *testing.T) {
	txs := []InDoubtTx{
		{TID: TID{Client: math.MaxUint64, Seq: 0, Time: math.MinInt64}, PreparedAt: math.MaxInt64},
		{TID: TID{Client: 1, Seq: 2, Time: 3}, Participants: []uint64{math.MaxUint64, 0}, PreparedAt: -1},
	}
	b := AppendInDoubt(nil, -7, txs)
	clock, got, err := DecodeInDoubt(b)
	if err != nil || clock != -7 || !reflect.DeepEqual(got, txs) {
		t.Fatalf("round trip: %d %+v %v", clock, got, err)
	}
	for i := range b {
		if _, _, err := DecodeInDoubt(b[:i]); err == nil {
			t.Fatalf("truncated at %d decoded", i)
		}
	}
	st := Stats{Pages: 1, Locks: 2, InDoubt: 3, ForcedAbort: 4, Decided: math.MaxInt32, Now: -9}
	if got, err := DecodeStats(AppendStats(nil, st)); err != nil || got != st {
		t.Fatalf("stats round trip: %+v %v", got, err)
	}
}

func FuzzDecodeInspection(f *testing.F) {
	f.Add(AppendInDoubt(nil, 5, []InDoubtTx{{TID: TID{Client: 1}, Participants: []uint64{1}}}))
	f.Add(AppendStats(nil, Stats{Pages: 3}))
	f.Add(AppendInspect(nil, InspectStats))
	f.Fuzz(func(t *testing.T, b []byte) {
		if clock, txs, err := DecodeInDoubt(b); err == nil {
			if again := AppendInDoubt(nil, clock, txs); !bytes.Equal(again, b) {
				t.Fatalf("in-doubt re-encoding differs")
			}
		}
		if s, err := DecodeStats(b); err == nil {
			if again := AppendStats(nil, s); !bytes.Equal(again, b) {
				t.Fatalf("stats re-encoding differs")
			}
		}
		m, _ := New(Config{})
		m.Answer(b)
	})
}
