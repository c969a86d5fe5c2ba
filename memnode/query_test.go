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

// Answer reads a query's read items straight into the encoded result; it
// must encode exactly what AppendResult(Query) does, for every vote, reads
// across pages and of absent pages included, whatever the spare capacity
// of the destination holds.
func TestAnswerEncodesWhatQueryReturns(t *testing.T) {
	m, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	apply := func(e Entry) {
		t.Helper()
		if r := m.Apply(&e); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	apply(Entry{Kind: KindExec, Now: 1, Op: Op{Writes: []Write{
		{Addr: pageSize - 3, Data: []byte("across")}, // spans pages 0 and 1
		{Addr: 5 * pageSize, Data: []byte("far")},
	}}})
	// An in-doubt transaction holds an exclusive lock on [100, 104).
	apply(Entry{Kind: KindPrepare, Now: 2, TID: TID{Client: 1, Seq: 1, Time: 2}, Participants: []uint64{0, 1},
		Op: Op{Writes: []Write{{Addr: 100, Data: []byte{1, 2, 3, 4}}}}})
	reads := []Read{{Addr: pageSize - 5, Len: 10}, {Addr: 3 * pageSize, Len: 7}, {Addr: 5*pageSize - 1, Len: pageSize + 2}}
	cases := []struct {
		name string
		op   Op
		vote Vote
	}{
		{"ok", Op{Compares: []Compare{{Addr: pageSize - 3, Data: []byte("acr")}}, Reads: reads}, VoteOK},
		{"failed compare answers the reads", Op{Compares: []Compare{{Addr: 5 * pageSize, Data: []byte("fat")}}, Reads: reads}, VoteBadCmp},
		{"locked", Op{Reads: []Read{{Addr: 98, Len: 4}}}, VoteBadLock},
		{"compares only", Op{Compares: []Compare{{Addr: 7, Data: []byte{0}}}}, VoteOK},
		{"invalid: a write", Op{Writes: []Write{{Addr: 1, Data: []byte{1}}}}, VoteOK},
	}
	for _, tc := range cases {
		want := m.Query(3, &tc.op)
		if want.Err == nil && want.Vote != tc.vote {
			t.Fatalf("%s: Query voted %v, want %v", tc.name, want.Vote, tc.vote)
		}
		enc := AppendResult(nil, &want)
		if got := m.Answer(AppendQuery(nil, 3, &tc.op)); !bytes.Equal(got, enc) {
			t.Errorf("%s: Answer %x\nwant (AppendResult of Query) %x", tc.name, got, enc)
		}
		dirty := bytes.Repeat([]byte{0xff}, len(enc)+64)[:3]
		if got := m.appendQuery(dirty, 3, &tc.op, nil); !bytes.Equal(got[3:], enc) {
			t.Errorf("%s: appendQuery into a dirty buffer %x\nwant %x", tc.name, got[3:], enc)
		}
		// With an allocator (a pool's dirty buffers), an answer with read
		// data is built in the buffer it gives, nothing else allocated.
		var given []byte
		alloc := func(n int) []byte {
			given = bytes.Repeat([]byte{0xee}, n+100)[:0]
			return given
		}
		got := m.AnswerInto(AppendQuery(nil, 3, &tc.op), alloc)
		if !bytes.Equal(got, enc) {
			t.Errorf("%s: AnswerInto %x\nwant %x", tc.name, got, enc)
		}
		if withReads := queryReads(&want) && len(tc.op.Reads) > 0; withReads != (given != nil) ||
			(given != nil && &got[:1][0] != &given[:1][0]) {
			t.Errorf("%s: AnswerInto used the allocator: %v, answer in its buffer: %v; want both %v",
				tc.name, given != nil, given != nil && &got[:1][0] == &given[:1][0], withReads)
		}
	}
}
