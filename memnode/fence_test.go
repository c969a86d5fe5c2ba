package memnode

import (
	"bytes"
	"errors"
	"testing"
)

// An attempt whose answer was lost can be fenced by a later logged step:
// arriving after the fence, it votes BAD-FORCED and writes nothing; one
// that applied before the fence stays applied; fencing touches neither an
// in-doubt nor a decided tid, and the fence survives a snapshot.
func TestFencedExecNeverApplies(t *testing.T) {
	cfg := Config{Size: 4096, MaxItemBytes: 64, MaxItems: 8, Horizon: 1000}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	write := func(tid TID, now int64, b byte) *Entry {
		return &Entry{Kind: KindExec, Now: now, TID: tid, Op: Op{Writes: []Write{{Addr: 8, Data: []byte{b}}}}}
	}
	read := func(now int64, fences ...TID) Result {
		t.Helper()
		r := m.Apply(&Entry{Kind: KindExec, Now: now, TID: TID{Client: 9, Seq: uint64(now), Time: now},
			Op: Op{Reads: []Read{{Addr: 8, Len: 1}}}, Fences: fences})
		if r.Err != nil || r.Vote != VoteOK {
			t.Fatalf("logged read: %+v", r)
		}
		return r
	}
	late := TID{Client: 1, Seq: 1, Time: 10}
	early := TID{Client: 1, Seq: 2, Time: 11}
	if r := m.Apply(write(early, 11, 'e')); r.Vote != VoteOK {
		t.Fatalf("first write: %+v", r)
	}
	// The settle of both: early applied already, late is still on its way.
	if r := read(12, late, early); !bytes.Equal(r.Reads[0], []byte{'e'}) {
		t.Fatalf("read %q", r.Reads[0])
	}
	if r := m.Apply(write(late, 13, 'l')); r.Vote != VoteBadForced || r.Err != nil {
		t.Fatalf("fenced attempt arriving late: %+v, want BAD-FORCED", r)
	}
	if r := read(14); !bytes.Equal(r.Reads[0], []byte{'e'}) {
		t.Fatalf("after the fenced attempt: %q, want e", r.Reads[0])
	}

	// The fence is part of the state: a replica restored from a snapshot
	// refuses the attempt too.
	r2, _ := New(cfg)
	if err := r2.Restore(m.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if r := r2.Apply(write(late, 15, 'l')); r.Vote != VoteBadForced {
		t.Fatalf("restored replica applied the fenced attempt: %+v", r)
	}

	// An attempt older than the horizon is refused even unfenced (its
	// fence would have been swept); one without a tid is never fenced.
	if r := m.Apply(write(TID{Client: 1, Seq: 3, Time: 20}, 2000, 'o')); r.Vote != VoteBadForced {
		t.Fatalf("attempt older than the horizon: %+v, want BAD-FORCED", r)
	}
	if r := m.Apply(write(TID{}, 2001, 'z')); r.Vote != VoteOK {
		t.Fatalf("exec without tid: %+v", r)
	}

	// Fencing an in-doubt tid keeps it in doubt (a carried Abort would
	// abort it); its commit still applies.
	prep := TID{Client: 2, Seq: 1, Time: 2002}
	if r := m.Apply(&Entry{Kind: KindPrepare, Now: 2002, TID: prep, Participants: []uint64{0, 1},
		Op: Op{Writes: []Write{{Addr: 16, Data: []byte{'p'}}}}}); r.Vote != VoteOK {
		t.Fatalf("prepare: %+v", r)
	}
	read(2003, prep)
	if r := m.Apply(&Entry{Kind: KindCommit, Now: 2004, TID: prep}); r.Outcome != OutcomeCommitted {
		t.Fatalf("commit of a fenced in-doubt tid: %+v", r)
	}
	read(2005, prep) // decided: the fence changes nothing
	if r := m.Apply(&Entry{Kind: KindCommit, Now: 2006, TID: prep}); r.Outcome != OutcomeCommitted {
		t.Fatalf("outcome after fencing a decided tid: %+v", r)
	}
}

func TestFencesValidated(t *testing.T) {
	m, _ := New(Config{Size: 4096, MaxItemBytes: 64, MaxItems: 2, Horizon: 1000})
	f := TID{Client: 1, Seq: 1, Time: 1}
	for name, e := range map[string]*Entry{
		"not exec":       {Kind: KindAbort, Now: 1, TID: TID{Client: 2, Seq: 1, Time: 1}, Fences: []TID{f}},
		"too many":       {Kind: KindExec, Now: 1, Fences: []TID{f, f, f}},
		"beyond horizon": {Kind: KindExec, Now: 1, Fences: []TID{{Client: 1, Seq: 2, Time: 5000}}},
	} {
		if r := m.Apply(e); !errors.Is(r.Err, ErrInvalid) {
			t.Errorf("%s: %+v, want ErrInvalid", name, r)
		}
	}
	// Nothing was fenced by the refused entries.
	if r := m.Apply(&Entry{Kind: KindExec, Now: 2, TID: f, Op: Op{Writes: []Write{{Addr: 0, Data: []byte{1}}}}}); r.Vote != VoteOK {
		t.Fatalf("attempt after refused fences: %+v", r)
	}
}
