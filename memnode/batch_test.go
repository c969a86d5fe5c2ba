package memnode

import (
	"bytes"
	"encoding/hex"
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
		{Kind: KindPrepare, Now: 1, TID: TID{Client: 1, Seq: 1, Time: 1}, Participants: []uint64{1}, More: []TID{{Client: 1, Seq: 2, Time: 1}}, Op: Op{Writes: []Write{{Addr: 0, Data: []byte("x")}}}},
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

// Entry versions 1 and 2 (logs written before carried decisions existed)
// keep their bytes, and version 3 is used only when decisions are carried.
func TestEntryVersions(t *testing.T) {
	for _, tc := range []struct {
		e    Entry
		want string
	}{
		{Entry{Kind: KindCommit, Now: 1, TID: TID{Client: 1, Seq: 2, Time: 3}}, "01030201020600000000"},
		{Entry{Kind: KindAbort, Now: 1, TID: TID{Client: 1, Seq: 2, Time: 3}, More: []TID{{Client: 1, Seq: 3, Time: 3}}},
			"020402010206000000000101030" + "6"},
		{Entry{Kind: KindExec, Now: 1, Op: Op{Writes: []Write{{Addr: 8, Data: []byte("x")}}}, Commits: []TID{{Client: 1, Seq: 3, Time: 3}}},
			"030102000000000000010801780001010306" + "00"},
		{Entry{Kind: KindPrepare, Now: 1, TID: TID{Client: 1, Seq: 2, Time: 3}, Aborts: []TID{{Client: 1, Seq: 3, Time: 3}}},
			"03020201020600000000" + "00" + "00" + "01010306"},
	} {
		b := AppendEntry(nil, &tc.e)
		if got := hex.EncodeToString(b); got != tc.want {
			t.Errorf("%+v: encoded %s, want %s", tc.e, got, tc.want)
		}
		if _, err := DecodeEntry(b); err != nil {
			t.Errorf("%+v: %v", tc.e, err)
		}
	}
}

func TestVersion3EntryWithoutDecisionsIsCorrupt(t *testing.T) {
	b := AppendEntry(nil, &Entry{Kind: KindCommit, TID: TID{Client: 1}})
	b[0] = entryVersion3
	b = append(b, 0, 0, 0) // no more tids, commits or aborts
	if _, err := DecodeEntry(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 3 with no decisions: %v, want ErrCorrupt", err)
	}
}

// Decisions carried by an entry of any kind leave the state that the same
// decisions as entries of their own, applied just before it, leave.
func TestCarriedDecisionsEqualSequential(t *testing.T) {
	tid := func(seq uint64) TID { return TID{Client: 1, Seq: seq, Time: 10} }
	prep := func(m *Memnode, seq uint64) {
		r := m.Apply(&Entry{Kind: KindPrepare, Now: 10, TID: tid(seq), Participants: []uint64{0, 1},
			Op: Op{Writes: []Write{{Addr: seq * 8, Data: []byte{byte(seq)}}}}})
		if r.Vote != VoteOK {
			t.Fatalf("prepare %d: %+v", seq, r)
		}
	}
	exec := Op{Writes: []Write{{Addr: 1000, Data: []byte("e")}}, Reads: []Read{{Addr: 8, Len: 24}}}
	for _, own := range []Entry{
		{Kind: KindExec, Now: 11, Op: exec},
		{Kind: KindPrepare, Now: 11, TID: tid(20), Participants: []uint64{0, 1}, Op: exec},
		{Kind: KindCommit, Now: 11, TID: tid(4)},
		{Kind: KindAbort, Now: 11, TID: tid(21)},
		{Kind: KindAbortUnlessVoted, Now: 11, TID: tid(22)},
	} {
		a, _ := New(Config{Size: 1 << 16})
		b, _ := New(Config{Size: 1 << 16})
		for _, m := range []*Memnode{a, b} {
			for seq := uint64(1); seq <= 4; seq++ {
				prep(m, seq)
			}
		}
		for _, s := range []uint64{1, 3} {
			a.Apply(&Entry{Kind: KindCommit, Now: 11, TID: tid(s)})
		}
		for _, s := range []uint64{2, 9} {
			a.Apply(&Entry{Kind: KindAbort, Now: 11, TID: tid(s)})
		}
		ra := a.Apply(&own)
		e := own
		e.Commits = []TID{tid(1), tid(3)}
		e.Aborts = []TID{tid(2), tid(9)}
		rb := b.Apply(&e)
		if !bytes.Equal(AppendResult(nil, &ra), AppendResult(nil, &rb)) {
			t.Fatalf("%v: result %+v, sequential %+v", own.Kind, rb, ra)
		}
		if rb.Err != nil {
			t.Fatalf("%v: %v", own.Kind, rb.Err)
		}
		if !bytes.Equal(a.Snapshot(), b.Snapshot()) {
			t.Fatalf("%v: carried decisions left a different state than sequential ones", own.Kind)
		}
	}
}

// A Prepare carrying the commit of the in-doubt tid that locks its items
// succeeds (the commit applies first) and sees the committed writes.
func TestCarriedCommitReleasesLocksFirst(t *testing.T) {
	m, _ := New(Config{Size: 1 << 16})
	t1, t2 := TID{Client: 1, Seq: 1, Time: 5}, TID{Client: 1, Seq: 2, Time: 5}
	if r := m.Apply(&Entry{Kind: KindPrepare, Now: 5, TID: t1, Participants: []uint64{1}, Op: Op{Writes: []Write{{Addr: 0, Data: []byte("new")}}}}); r.Vote != VoteOK {
		t.Fatalf("prepare t1: %+v", r)
	}
	p2 := Entry{Kind: KindPrepare, Now: 6, TID: t2, Participants: []uint64{1}, Op: Op{Compares: []Compare{{Addr: 0, Data: []byte("new")}}, Writes: []Write{{Addr: 0, Data: []byte("2nd")}}}}
	if r := m.Apply(&p2); r.Vote != VoteBadLock {
		t.Fatalf("prepare t2 without the commit: %+v, want BAD-LOCK", r)
	}
	p2.Commits = []TID{t1}
	if r := m.Apply(&p2); r.Vote != VoteOK {
		t.Fatalf("prepare t2 carrying t1's commit: %+v, want OK", r)
	}
	if r := m.Apply(&Entry{Kind: KindCommit, Now: 7, TID: t1}); r.Outcome != OutcomeCommitted {
		t.Fatalf("t1 after the carried commit: %+v", r)
	}
	if st := m.Stats(); st.InDoubt != 1 || st.Decided != 1 {
		t.Fatalf("stats: %+v", st)
	}
}

// An invalid entry applies none of the decisions it carries.
func TestInvalidEntryAppliesNoCarriedDecision(t *testing.T) {
	m, _ := New(Config{Size: 1 << 16, MaxItems: 2})
	t1 := TID{Client: 1, Seq: 1, Time: 5}
	if r := m.Apply(&Entry{Kind: KindPrepare, Now: 5, TID: t1, Participants: []uint64{1}, Op: Op{Writes: []Write{{Addr: 0, Data: []byte("x")}}}}); r.Vote != VoteOK {
		t.Fatalf("prepare: %+v", r)
	}
	before := m.Snapshot()
	for _, e := range []Entry{
		{Kind: KindExec, Now: 6, Op: Op{Writes: []Write{{Addr: 1 << 20, Data: []byte("x")}}}, Commits: []TID{t1}}, // out of range
		{Kind: KindExec, Now: 6, Op: Op{Writes: []Write{{Addr: 8, Data: []byte("x")}}}, Commits: []TID{t1, {Seq: 2}}, Aborts: []TID{{Seq: 3}}},
		{Kind: KindExec, Now: 6, Op: Op{Writes: []Write{{Addr: 8, Data: []byte("x")}}}, Commits: []TID{t1}, Aborts: []TID{{Seq: 3, Time: 1 << 62}}},
		{Kind: Kind(99), Now: 6, Commits: []TID{t1}},
	} {
		if r := m.Apply(&e); !errors.Is(r.Err, ErrInvalid) {
			t.Errorf("%+v: %+v, want ErrInvalid", e, r)
		}
	}
	if !bytes.Equal(before, m.Snapshot()) {
		t.Fatal("a refused entry applied a carried decision")
	}
}

// A resolved transaction's object is reused by the next Prepare: the reused
// one must carry only the new transaction's items, locks and bytes, and the
// old tid must still answer its recorded outcome.
func TestResolvedTxnIsReused(t *testing.T) {
	m, _ := New(Config{Size: 1 << 16})
	tid := func(seq uint64) TID { return TID{Client: 1, Seq: seq, Time: 10} }
	prep := func(seq, addr uint64, data string, cmp *Compare) Result {
		op := Op{Writes: []Write{{Addr: addr, Data: []byte(data)}}}
		if cmp != nil {
			op.Compares = []Compare{*cmp}
		}
		return m.Apply(&Entry{Kind: KindPrepare, Now: 10, TID: tid(seq), Participants: []uint64{0, 1}, Op: op})
	}
	if r := prep(1, 0, "first!", &Compare{Addr: 100, Data: []byte{0, 0}}); r.Vote != VoteOK {
		t.Fatalf("prepare 1: %+v", r)
	}
	old := m.inDoubt.get(tid(1)).small
	m.Apply(&Entry{Kind: KindCommit, Now: 11, TID: tid(1)})
	if r := prep(2, 200, "2nd", nil); r.Vote != VoteOK {
		t.Fatalf("prepare 2: %+v", r)
	}
	x := m.inDoubt.get(tid(2))
	if x.small != old {
		t.Fatalf("the resolved txn was not reused")
	}
	if len(x.compares) != 0 || len(x.writes) != 1 || string(x.writes[0].Data) != "2nd" || x.writes[0].Addr != 200 {
		t.Fatalf("reused txn holds %+v", *x)
	}
	// tid 1's locks are gone (only tid 2's write at 200 is locked) and
	// its outcome is still known.
	if r := prep(3, 0, "third", &Compare{Addr: 100, Data: []byte{0, 0}}); r.Vote != VoteOK {
		t.Fatalf("prepare 3 over tid 1's released items: %+v", r)
	}
	if r := prep(4, 202, "x", nil); r.Vote != VoteBadLock {
		t.Fatalf("prepare 4 inside tid 2's write: %+v, want BAD-LOCK", r)
	}
	if r := m.Apply(&Entry{Kind: KindCommit, Now: 12, TID: tid(1)}); r.Outcome != OutcomeCommitted {
		t.Fatalf("commit of tid 1 again: %+v", r)
	}
	m.Apply(&Entry{Kind: KindCommit, Now: 12, TID: tid(2)})
	m.Apply(&Entry{Kind: KindAbort, Now: 12, TID: tid(3)})
	got := m.Apply(&Entry{Kind: KindExec, Now: 12, TID: tid(5), Op: Op{Reads: []Read{{Addr: 0, Len: 6}, {Addr: 200, Len: 3}}}})
	if string(got.Reads[0]) != "first!" || string(got.Reads[1]) != "2nd" {
		t.Fatalf("memory: %q %q", got.Reads[0], got.Reads[1])
	}
}
