package memnode

import (
	"bytes"
	"errors"
	"testing"
)

// A Commit or Abort carrying more tids must leave exactly the state that
// the same decisions applied one entry at a time leave: coordinators rely on
// it when they batch their decisions.
func TestBatchedDecisionsEqualSequential(t *testing.T) {
	prep := func(m *Memnode, seq uint64, addr uint64) {
		r := m.Apply(&Entry{Kind: KindPrepare, Now: 10, TID: TID{Client: 1, Seq: seq, Time: 10}, Participants: []uint64{0, 1},
			Op: Op{Writes: []Write{{Addr: addr, Data: []byte{byte(seq)}}}}})
		if r.Vote != VoteOK {
			t.Fatalf("prepare %d: %+v", seq, r)
		}
	}
	tid := func(seq uint64) TID { return TID{Client: 1, Seq: seq, Time: 10} }
	a, _ := New(Config{Size: 1 << 16})
	b, _ := New(Config{Size: 1 << 16})
	for _, m := range []*Memnode{a, b} {
		for seq := uint64(1); seq <= 4; seq++ {
			prep(m, seq, seq*8)
		}
	}
	// a: one at a time. b: batched. Seq 9 is unknown (Abort forces it).
	for _, s := range []uint64{1, 3} {
		a.Apply(&Entry{Kind: KindCommit, Now: 11, TID: tid(s)})
	}
	for _, s := range []uint64{2, 9} {
		a.Apply(&Entry{Kind: KindAbort, Now: 11, TID: tid(s)})
	}
	r := b.Apply(&Entry{Kind: KindCommit, Now: 11, TID: tid(1), More: []TID{tid(3)}})
	if r.Err != nil || r.Outcome != OutcomeCommitted {
		t.Fatalf("batched commit: %+v", r)
	}
	if r := b.Apply(&Entry{Kind: KindAbort, Now: 11, TID: tid(2), More: []TID{tid(9)}}); r.Err != nil || r.Outcome != OutcomeAborted {
		t.Fatalf("batched abort: %+v", r)
	}
	if !bytes.Equal(a.Snapshot(), b.Snapshot()) {
		t.Fatal("batched decisions left a different state than sequential ones")
	}
	if st := b.Stats(); st.InDoubt != 1 || st.Decided != 3 || st.ForcedAbort != 1 {
		t.Fatalf("stats after batch: %+v", st)
	}
}

func TestMoreTidsRefusedOutsideDecisions(t *testing.T) {
	m, _ := New(Config{Size: 1 << 16, MaxItems: 2})
	before := m.Snapshot()
	for _, e := range []Entry{
		{Kind: KindPrepare, Now: 1, TID: TID{Client: 1, Seq: 1, Time: 1}, More: []TID{{Client: 1, Seq: 2, Time: 1}}, Op: Op{Writes: []Write{{Addr: 0, Data: []byte("x")}}}},
		{Kind: KindAbortUnlessVoted, Now: 1, TID: TID{Client: 1, Seq: 1, Time: 1}, More: []TID{{Client: 1, Seq: 2, Time: 1}}},
		{Kind: KindAbort, Now: 1, TID: TID{Client: 1, Seq: 1, Time: 1}, More: []TID{{Seq: 2}, {Seq: 3}, {Seq: 4}}},
		{Kind: KindAbort, Now: 1, TID: TID{Client: 1, Seq: 1, Time: 1}, More: []TID{{Seq: 2, Time: 1 << 62}}},
	} {
		if r := m.Apply(&e); !errors.Is(r.Err, ErrInvalid) {
			t.Errorf("%v with more tids: %+v, want ErrInvalid", e.Kind, r)
		}
	}
	if !bytes.Equal(before, m.Snapshot()) {
		t.Fatal("a refused entry changed the state")
	}
}

func TestVersion2EntryWithoutMoreIsCorrupt(t *testing.T) {
	b := AppendEntry(nil, &Entry{Kind: KindCommit, TID: TID{Client: 1}})
	b[0] = entryVersion2
	b = append(b, 0) // zero more tids
	if _, err := DecodeEntry(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 2 with no more tids: %v, want ErrCorrupt", err)
	}
}
