package memnode

import (
	"bytes"
	"testing"
)

// Snapshot sizes its buffer once: the in-doubt transactions and the
// decided and forced tids after the pages must fit the capacity it starts
// with (append would otherwise copy the whole memnode into a larger one).
func TestSnapshotBufferSizedOnce(t *testing.T) {
	m, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(300) {
		tid := TID{Client: 7, Seq: i + 1, Time: int64(1000 + i)}
		e := Entry{Kind: KindPrepare, Now: int64(1000 + i), TID: tid, Participants: []uint64{0, 1, 2},
			Op: Op{Compares: []Compare{{Addr: i * 64, Data: []byte{0}}}, Reads: []Read{{Addr: i*64 + 8, Len: 4}},
				Writes: []Write{{Addr: i * 64, Data: bytes.Repeat([]byte{byte(i)}, 16)}}}}
		if r := m.Apply(&e); r.Err != nil || r.Vote != VoteOK {
			t.Fatalf("prepare %d: %+v", i, r)
		}
		if i%3 == 0 { // decided; the others stay in doubt
			if r := m.Apply(&Entry{Kind: KindCommit, Now: int64(1000 + i), TID: tid}); r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		if i%5 == 0 { // forced aborts of tids never prepared here
			if r := m.Apply(&Entry{Kind: KindAbort, Now: int64(1000 + i), TID: TID{Client: 9, Seq: i + 1, Time: int64(1000 + i)}}); r.Err != nil {
				t.Fatal(r.Err)
			}
		}
	}
	bound := m.snapshotBound()
	b := m.Snapshot()
	if cap(b) != bound || len(b) > bound {
		t.Fatalf("snapshot of %d bytes in a buffer of capacity %d, sized %d at the start", len(b), cap(b), bound)
	}
	m2, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Restore(b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m2.Snapshot(), b) {
		t.Fatal("the restored memnode's snapshot differs")
	}
	// AppendSnapshot into the previous snapshot's buffer: the same bytes,
	// in the same memory (what the memnode service does between
	// snapshots).
	again := m.AppendSnapshot(b[:0])
	if !bytes.Equal(again, m2.Snapshot()) || &again[0] != &b[0] {
		t.Fatalf("AppendSnapshot into the old buffer: equal %v, same memory %v", bytes.Equal(again, m2.Snapshot()), &again[0] == &b[0])
	}
}
