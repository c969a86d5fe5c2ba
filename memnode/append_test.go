package memnode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The ring of these tests: counters t, h, c at 0, 8, 16; 16 bytes at 64.
const (
	tTail, tHead, tCount, tRing, tSize = 0, 8, 16, 64, 16
)

func le(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func ringAppend(data string) Append {
	return Append{Tail: tTail, Head: tHead, Limit: tSize, Ring: tRing, Size: tSize, Count: tCount, Add: 1, Data: []byte(data)}
}

func newAppendNode(t *testing.T) *Memnode {
	t.Helper()
	m, err := New(Config{Size: 4096, MaxItemBytes: 64, MaxItems: 8, Horizon: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// setCounters writes t, h and c with an ordinary Exec.
func setCounters(t *testing.T, m *Memnode, tail, head, count uint64) {
	t.Helper()
	r := m.Apply(&Entry{Kind: KindExec, Now: 1, Op: Op{Writes: []Write{
		{Addr: tTail, Data: le(tail)}, {Addr: tHead, Data: le(head)}, {Addr: tCount, Data: le(count)}}}})
	if r.Vote != VoteOK {
		t.Fatalf("set counters: %+v", r)
	}
}

func wordAt(m *Memnode, addr uint64) uint64 {
	var b [8]byte
	m.ReadAt(b[:], addr)
	return binary.LittleEndian.Uint64(b[:])
}

func mem(m *Memnode, addr uint64, n int) []byte {
	b := make([]byte, n)
	m.ReadAt(b, addr)
	return b
}

// Data placed near the ring's end wraps to its start in two pieces, and the
// counters advance.
func TestAppendWrapsAtRingEnd(t *testing.T) {
	m := newAppendNode(t)
	setCounters(t, m, 12, 8, 5) // 4 bytes in use; the next record starts at offset 12
	r := m.Apply(&Entry{Kind: KindExec, Now: 2, Op: Op{Appends: []Append{ringAppend("abcdefgh")}}})
	if r.Vote != VoteOK || r.Err != nil {
		t.Fatalf("append: %+v", r)
	}
	if len(r.Appended) != 1 || r.Appended[0] != (Appended{Tail: 12, Count: 5}) {
		t.Fatalf("Appended %+v, want [{12 5}]", r.Appended)
	}
	if got := mem(m, tRing, tSize); !bytes.Equal(got, []byte("efgh\x00\x00\x00\x00\x00\x00\x00\x00abcd")) {
		t.Fatalf("ring %q", got)
	}
	if wordAt(m, tTail) != 20 || wordAt(m, tCount) != 6 || wordAt(m, tHead) != 8 {
		t.Fatalf("counters t=%d c=%d h=%d, want 20 6 8", wordAt(m, tTail), wordAt(m, tCount), wordAt(m, tHead))
	}
}

// Two appends on the same counters in one Op chain: the second starts where
// the first ends; reads see the state before both.
func TestAppendsChainInOneOp(t *testing.T) {
	m := newAppendNode(t)
	second := ringAppend("xyz")
	second.Add = 10
	r := m.Apply(&Entry{Kind: KindExec, Now: 2, Op: Op{
		Reads:   []Read{{Addr: tTail, Len: 8}},
		Appends: []Append{ringAppend("abcd"), second}}})
	if r.Vote != VoteOK {
		t.Fatalf("append: %+v", r)
	}
	if want := []Appended{{0, 0}, {4, 1}}; fmt.Sprint(r.Appended) != fmt.Sprint(want) {
		t.Fatalf("Appended %v, want %v", r.Appended, want)
	}
	if !bytes.Equal(r.Reads[0], le(0)) {
		t.Fatalf("read of t %x, want the value before the appends", r.Reads[0])
	}
	if got := mem(m, tRing, 7); string(got) != "abcdxyz" {
		t.Fatalf("ring %q", got)
	}
	if wordAt(m, tTail) != 7 || wordAt(m, tCount) != 11 {
		t.Fatalf("t=%d c=%d, want 7 11", wordAt(m, tTail), wordAt(m, tCount))
	}
}

// An append past its Limit fails like a compare numbered after the
// compares: nothing is written (not even the other items), the reads come
// back. So does one whose tail would overflow 64 bits. A head past the tail
// (written by a caller) passes.
func TestAppendLimitRefused(t *testing.T) {
	m := newAppendNode(t)
	setCounters(t, m, 20, 8, 3) // 12 bytes in use, room for 4
	before := m.Snapshot()
	op := Op{
		Compares: []Compare{{Addr: 100, Data: []byte{0}}},
		Reads:    []Read{{Addr: tTail, Len: 8}},
		Writes:   []Write{{Addr: 200, Data: []byte("w")}},
		Appends:  []Append{ringAppend("ab"), ringAppend("cde")}, // 2 fit, then 3 more do not
	}
	r := m.Apply(&Entry{Kind: KindExec, Now: 1, Op: op})
	if r.Vote != VoteBadCmp || r.FailedCompare != 2 || r.Err != nil {
		t.Fatalf("append past the limit: %+v, want BAD-CMP at 1+1", r)
	}
	if len(r.Reads) != 1 || !bytes.Equal(r.Reads[0], le(20)) || r.Appended != nil {
		t.Fatalf("reads %x appended %v", r.Reads, r.Appended)
	}
	if !bytes.Equal(m.Snapshot(), before) {
		t.Fatal("a refused append changed the state")
	}
	// A failing compare comes first.
	op.Compares[0].Data = []byte{1}
	if r := m.Apply(&Entry{Kind: KindExec, Now: 1, Op: op}); r.Vote != VoteBadCmp || r.FailedCompare != 0 {
		t.Fatalf("failed compare and refused append: %+v, want compare 0", r)
	}

	setCounters(t, m, math.MaxUint64-2, math.MaxUint64-2, 0)
	if r := m.Apply(&Entry{Kind: KindExec, Now: 1, Op: Op{Appends: []Append{ringAppend("abcd")}}}); r.Vote != VoteBadCmp || r.FailedCompare != 0 {
		t.Fatalf("tail overflow: %+v, want BAD-CMP", r)
	}
	setCounters(t, m, 4, 100, 0) // h past t: a signed check lets it through
	if r := m.Apply(&Entry{Kind: KindExec, Now: 1, Op: Op{Appends: []Append{ringAppend("abcd")}}}); r.Vote != VoteOK {
		t.Fatalf("head past tail: %+v, want OK", r)
	}
	limited := ringAppend("abcd")
	limited.Limit = 3 // never fits with h <= t
	setCounters(t, m, 4, 4, 0)
	if r := m.Apply(&Entry{Kind: KindExec, Now: 1, Op: Op{Appends: []Append{limited}}}); r.Vote != VoteBadCmp {
		t.Fatalf("record longer than the limit: %+v, want BAD-CMP", r)
	}
}

// Relocs add an append's old t or c into append data and write items,
// in copies: the entry's slices are unchanged.
func TestAppendRelocs(t *testing.T) {
	m := newAppendNode(t)
	setCounters(t, m, 100, 96, 7)
	rec := []byte("R\x01\x00\x00\x00\x00\x00\x00\x00") // position at [1, 9), plus 1
	slot := make([]byte, 16)                           // [0, 8): t of append 0, [8, 16): c
	e := &Entry{Kind: KindExec, Now: 2, Op: Op{
		Writes:  []Write{{Addr: 300, Data: slot}},
		Appends: []Append{{Tail: tTail, Head: tHead, Limit: tSize, Ring: tRing, Size: tSize, Count: tCount, Add: 1, Data: rec}},
		Relocs: []Reloc{
			{Append: 0, Item: 0, Off: 1},
			{Append: 0, Write: true, Item: 0, Off: 0},
			{Append: 0, Count: true, Write: true, Item: 0, Off: 8},
		},
	}}
	enc := AppendEntry(nil, e)
	r := m.Apply(e)
	if r.Vote != VoteOK || r.Appended[0] != (Appended{100, 7}) {
		t.Fatalf("append: %+v", r)
	}
	wantRec := append([]byte("R"), le(101)...)
	// Position 100 is ring offset 4: 9 bytes do not wrap.
	if got := mem(m, tRing+4, 9); !bytes.Equal(got, wantRec) {
		t.Fatalf("record %x, want %x", got, wantRec)
	}
	if got := mem(m, 300, 16); !bytes.Equal(got, append(le(100), le(7)...)) {
		t.Fatalf("slot %x", got)
	}
	if !bytes.Equal(AppendEntry(nil, e), enc) {
		t.Fatal("Apply changed the entry's data")
	}
}

// A ring range an in-doubt Prepare locks refuses the append that would
// write it (BAD-LOCK, nothing written), and one at another position passes;
// so do the counter words.
func TestAppendBadLock(t *testing.T) {
	m := newAppendNode(t)
	setCounters(t, m, 0, 0, 0)
	prep := func(seq uint64, addr uint64, n int) {
		t.Helper()
		r := m.Apply(&Entry{Kind: KindPrepare, Now: 2, TID: TID{Client: 1, Seq: seq, Time: 2}, Participants: []uint64{1},
			Op: Op{Writes: []Write{{Addr: addr, Data: make([]byte, n)}}}})
		if r.Vote != VoteOK {
			t.Fatalf("prepare: %+v", r)
		}
	}
	prep(1, tRing+6, 1) // the ring byte at offset 6
	before := m.Snapshot()
	if r := m.Apply(&Entry{Kind: KindExec, Now: 2, Op: Op{Appends: []Append{ringAppend("abcd"), ringAppend("efgh")}}}); r.Vote != VoteBadLock {
		t.Fatalf("append onto a locked ring byte: %+v, want BAD-LOCK", r)
	}
	if !bytes.Equal(m.Snapshot(), before) {
		t.Fatal("BAD-LOCK changed the state")
	}
	if r := m.Apply(&Entry{Kind: KindExec, Now: 3, Op: Op{Appends: []Append{ringAppend("abcd")}}}); r.Vote != VoteOK {
		t.Fatalf("append beside the lock: %+v, want OK", r)
	}
	// A wrapped record's second piece is checked too: t=4+12=16 is offset 0.
	if r := m.Apply(&Entry{Kind: KindExec, Now: 3, Op: Op{Appends: []Append{ringAppend("012345678901")}}}); r.Vote != VoteBadLock {
		t.Fatalf("append over the lock: %+v, want BAD-LOCK", r)
	}
	m.Apply(&Entry{Kind: KindAbort, Now: 3, TID: TID{Client: 1, Seq: 1, Time: 2}})
	m.Apply(&Entry{Kind: KindExec, Now: 3, Op: Op{Writes: []Write{{Addr: tHead, Data: le(4)}}}})
	prep(2, tRing+12, 4) // offsets 12..15, reached only by wrapping from 8
	if r := m.Apply(&Entry{Kind: KindExec, Now: 3, Op: Op{Appends: []Append{ringAppend("0123456789")}}}); r.Vote != VoteBadLock {
		t.Fatalf("wrapping append over the lock: %+v, want BAD-LOCK", r)
	}
	for _, w := range []uint64{tTail, tHead, tCount} {
		m2 := newAppendNode(t)
		r := m2.Apply(&Entry{Kind: KindPrepare, Now: 2, TID: TID{Client: 1, Seq: 1, Time: 2}, Participants: []uint64{1},
			Op: Op{Writes: []Write{{Addr: w, Data: le(0)}}}})
		if r.Vote != VoteOK {
			t.Fatal(r)
		}
		if r := m2.Apply(&Entry{Kind: KindExec, Now: 3, Op: Op{Appends: []Append{ringAppend("a")}}}); r.Vote != VoteBadLock {
			t.Fatalf("counter word at %d locked: %+v, want BAD-LOCK", w, r)
		}
	}
}

// Every malformed append or reloc is invalid and changes nothing.
func TestAppendValidation(t *testing.T) {
	ok := ringAppend("abcd")
	with := func(f func(*Append)) []Append { a := ok; f(&a); return []Append{a} }
	for _, tc := range []struct {
		name string
		e    Entry
	}{
		{"prepare", Entry{Kind: KindPrepare, TID: TID{Client: 1, Seq: 1}, Participants: []uint64{1}, Op: Op{Appends: []Append{ok}}}},
		{"commit", Entry{Kind: KindCommit, Op: Op{Appends: []Append{ok}}}},
		{"relocs on prepare", Entry{Kind: KindPrepare, TID: TID{Client: 1, Seq: 1}, Participants: []uint64{1}, Op: Op{Relocs: []Reloc{{}}}}},
		{"size zero", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Size = 0 })}}},
		{"size not power of two", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Size, a.Limit = 12, 12 })}}},
		{"ring past the end", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Ring = 4096 - 8 })}}},
		{"ring overflows", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Ring = math.MaxUint64 - 3 })}}},
		{"limit over size", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Limit = 17 })}}},
		{"no data", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Data = nil })}}},
		{"data over size", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Data = make([]byte, 17) })}}},
		{"data over max item", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) {
			a.Ring, a.Size, a.Limit, a.Data = 1024, 1024, 1024, make([]byte, 65)
		})}}},
		{"add without count", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Count = 0 })}}},
		{"tail out of range", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Tail = 4090 })}}},
		{"head overflows", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Head = math.MaxUint64 - 2 })}}},
		{"count out of range", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Count = 4089 })}}},
		{"tail is count", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Tail = tCount })}}},
		{"head overlaps tail", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Head = 4 })}}},
		{"counter in ring", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Count = tRing + 8 })}}},
		{"counters partly overlap", Entry{Kind: KindExec, Op: Op{Appends: []Append{ok, {Tail: 4, Head: 200, Limit: 16, Ring: 1024, Size: 16, Data: []byte("x")}}}}},
		{"counter in another ring", Entry{Kind: KindExec, Op: Op{Appends: []Append{ok, {Tail: 1000, Head: 200, Limit: 16, Ring: 0, Size: 16, Data: []byte("x")}}}}},
		{"write over tail", Entry{Kind: KindExec, Op: Op{Writes: []Write{{Addr: 7, Data: []byte("x")}}, Appends: []Append{ok}}}},
		{"write over head", Entry{Kind: KindExec, Op: Op{Writes: []Write{{Addr: 12, Data: []byte("x")}}, Appends: []Append{ok}}}},
		{"write over count", Entry{Kind: KindExec, Op: Op{Writes: []Write{{Addr: 23, Data: make([]byte, 20)}}, Appends: []Append{ok}}}},
		{"too many items", Entry{Kind: KindExec, Op: Op{Reads: make([]Read, 8), Appends: []Append{ok}}}},
		{"reloc without append", Entry{Kind: KindExec, Op: Op{Writes: []Write{{Addr: 300, Data: make([]byte, 8)}}, Relocs: []Reloc{{Write: true}}}}},
		{"reloc source", Entry{Kind: KindExec, Op: Op{Appends: []Append{ok}, Relocs: []Reloc{{Append: 1}}}}},
		{"reloc append target", Entry{Kind: KindExec, Op: Op{Appends: []Append{ok}, Relocs: []Reloc{{Item: 1}}}}},
		{"reloc write target", Entry{Kind: KindExec, Op: Op{Appends: []Append{ok}, Relocs: []Reloc{{Write: true}}}}},
		{"reloc past data", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Data = make([]byte, 8) }), Relocs: []Reloc{{Off: 1}}}}},
		{"reloc offset overflow", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Data = make([]byte, 8) }), Relocs: []Reloc{{Off: math.MaxUint32}}}}},
		{"too many relocs", Entry{Kind: KindExec, Op: Op{Appends: with(func(a *Append) { a.Data = make([]byte, 8) }), Relocs: make([]Reloc, 9)}}},
	} {
		m := newAppendNode(t)
		setCounters(t, m, 3, 0, 0)
		before := m.Snapshot()
		tc.e.Now = 50
		r := m.Apply(&tc.e)
		t.Logf("%s: %v", tc.name, r.Err)
		if !errors.Is(r.Err, ErrInvalid) || r.FailedCompare != -1 || r.Vote != 0 {
			t.Errorf("%s: %+v, want ErrInvalid", tc.name, r)
			continue
		}
		if !bytes.Equal(m.Snapshot(), before) {
			t.Errorf("%s: an invalid entry changed the state", tc.name)
		}
	}
	m := newAppendNode(t)
	if r := m.Query(1, &Op{Reads: []Read{{Addr: 0, Len: 8}}, Appends: []Append{ok}}); !errors.Is(r.Err, ErrInvalid) {
		t.Errorf("query with an append: %+v, want ErrInvalid", r)
	}
	// The rules allow a valid op without allocating beyond the check.
	if err := m.Config().ValidateOp(KindExec, &Op{Appends: []Append{ok, ok}}); err != nil {
		t.Errorf("two appends on the same counters: %v", err)
	}
}

// Replicas applying the same encoded entries with appends (wrapping,
// chained, refused, relocated) end byte-identical, and a snapshot restores
// the counters: appending on the restored replica continues where the
// original did.
func TestAppendReplicasAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	a, b := newAppendNode(t), newAppendNode(t)
	var ra, rb []Result
	for i := range 300 {
		var op Op
		for range 1 + rng.IntN(3) {
			ap := ringAppend(string(make([]byte, 8+rng.IntN(5))))
			ap.Limit = uint64(8 + rng.IntN(9))
			op.Appends = append(op.Appends, ap)
		}
		op.Relocs = []Reloc{{Append: uint32(rng.IntN(len(op.Appends))), Count: rng.IntN(2) == 0, Item: 0, Off: 0}}
		if rng.IntN(3) == 0 { // the reader frees the ring
			op = Op{Writes: []Write{{Addr: tHead, Data: le(wordAt(a, tTail))}}}
		}
		enc := AppendEntry(nil, &Entry{Kind: KindExec, Now: int64(i), Op: op})
		for _, x := range []struct {
			m  *Memnode
			rs *[]Result
		}{{a, &ra}, {b, &rb}} {
			e, err := DecodeEntry(enc)
			if err != nil {
				t.Fatal(err)
			}
			*x.rs = append(*x.rs, x.m.Apply(&e))
		}
	}
	if fmt.Sprint(ra) != fmt.Sprint(rb) {
		t.Fatal("replicas answered differently")
	}
	oks := 0
	for _, r := range ra {
		if r.Vote == VoteOK && r.Appended != nil {
			oks++
		}
	}
	if oks < 30 {
		t.Fatalf("only %d appends committed: the test exercises little", oks)
	}
	if !bytes.Equal(a.Snapshot(), b.Snapshot()) {
		t.Fatal("replicas differ")
	}
	c := newAppendNode(t)
	if err := c.Restore(a.Snapshot()); err != nil {
		t.Fatal(err)
	}
	next := &Entry{Kind: KindExec, Now: 1000, Op: Op{Writes: []Write{{Addr: tHead, Data: le(wordAt(a, tTail))}}, Appends: []Append{ringAppend("zz")}}}
	// The write of h and the append's check: the write applies after the
	// check, so free the ring first.
	a.Apply(&Entry{Kind: KindExec, Now: 999, Op: Op{Writes: next.Op.Writes}})
	c.Apply(&Entry{Kind: KindExec, Now: 999, Op: Op{Writes: next.Op.Writes}})
	next.Op.Writes = nil
	r1, r2 := a.Apply(next), c.Apply(next)
	if r1.Vote != VoteOK || fmt.Sprint(r1) != fmt.Sprint(r2) || !bytes.Equal(a.Snapshot(), c.Snapshot()) {
		t.Fatalf("restored replica: %+v, original %+v", r2, r1)
	}
}
