package memnode

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func sampleEntries() []Entry {
	return []Entry{
		{},
		{Kind: KindExec, Now: 1, Op: Op{Writes: []Write{{Addr: 0x10, Data: []byte("abcd")}}}},
		{
			Kind: KindPrepare, Now: math.MaxInt64, TID: TID{Client: math.MaxUint64, Seq: 7, Time: math.MinInt64},
			Participants: []uint64{1, 2, math.MaxUint64},
			Op: Op{
				Compares: []Compare{{Addr: 0, Data: []byte{0}}, {Addr: math.MaxUint64, Data: bytes.Repeat([]byte("x"), 300)}},
				Reads:    []Read{{Addr: 5, Len: math.MaxUint32}, {Addr: 1 << 40, Len: 1}},
				Writes:   []Write{{Addr: 3, Data: []byte("w")}},
			},
		},
		{Kind: KindCommit, Now: -5, TID: TID{Client: 1, Seq: 2, Time: -3}},
		{Kind: KindAbort, Now: 9, TID: TID{Client: 1, Seq: 2, Time: 3}, More: []TID{{Client: 4, Seq: 5, Time: -6}, {Client: math.MaxUint64, Seq: 1, Time: 1}}},
		{Kind: KindAbortUnlessVoted, Now: 1e18, TID: TID{Client: 1, Seq: 2, Time: 1e18}},
		{Kind: KindPrepare, Now: 3, TID: TID{Client: 1, Seq: 9, Time: 3}, Participants: []uint64{0, 1},
			Op:      Op{Writes: []Write{{Addr: 3, Data: []byte("w")}}},
			Commits: []TID{{Client: 1, Seq: 7, Time: 2}, {Client: math.MaxUint64, Seq: math.MaxUint64, Time: math.MinInt64}}},
		{Kind: KindExec, Now: 4, Op: Op{Writes: []Write{{Addr: 3, Data: []byte("w")}}}, Aborts: []TID{{Client: 2, Seq: 1, Time: 1}}},
		{Kind: KindCommit, Now: 5, TID: TID{Client: 1, Seq: 2, Time: 3}, More: []TID{{Client: 1, Seq: 4, Time: 3}},
			Commits: []TID{{Client: 1, Seq: 5, Time: 3}}, Aborts: []TID{{Client: 1, Seq: 6, Time: 3}}},
		{Kind: KindExec, Now: 6, TID: TID{Client: 3, Seq: 1, Time: 6}, Op: Op{Reads: []Read{{Addr: 8, Len: 4}}},
			Fences: []TID{{Client: 3, Seq: 0, Time: 5}, {Client: math.MaxUint64, Seq: 2, Time: math.MinInt64}}},
		{Kind: KindExec, Now: 7, Op: Op{Reads: []Read{{Addr: 8, Len: 4}}}, Aborts: []TID{{Client: 2, Seq: 1, Time: 1}},
			Fences: []TID{{Client: 3, Seq: 0, Time: 5}}},
		{Kind: KindExec, Now: 8, TID: TID{Client: 3, Seq: 2, Time: 8}, Op: Op{
			Writes: []Write{{Addr: 3, Data: []byte("slot0000")}},
			Appends: []Append{{Tail: 8, Head: 16, Limit: 64, Ring: 1024, Size: 64, Count: 24, Add: 1, Data: []byte("rec00000")},
				{Tail: math.MaxUint64, Head: 0, Limit: 0, Ring: 1, Size: 1 << 63, Data: []byte{1}}},
			Relocs: []Reloc{{Append: 0, Count: true, Write: true, Item: 0, Off: 0}, {Append: 1, Item: 0, Off: math.MaxUint32}}}},
		{Kind: KindExec, Now: 9, Op: Op{Relocs: []Reloc{{Append: 3}}}, Fences: []TID{{Client: 3, Seq: 0, Time: 5}}},
		{Kind: 200},
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for i, e := range sampleEntries() {
		b := AppendEntry([]byte("prefix"), &e)
		if string(b[:6]) != "prefix" {
			t.Fatalf("%d: AppendEntry clobbered dst", i)
		}
		got, err := DecodeEntry(b[6:])
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if !entriesEqual(&e, &got) {
			t.Fatalf("%d: round trip:\n got %+v\nwant %+v", i, got, e)
		}
		if again := AppendEntry(nil, &got); !bytes.Equal(again, b[6:]) {
			t.Fatalf("%d: re-encoding differs", i)
		}
	}
}

// TestDecodeEntryReuse decodes every sample, in both orders, into one
// reused Entry: each result equals a fresh decode (lists that shrink leave
// nothing of the previous entry behind), and the steady state allocates
// nothing.
func TestDecodeEntryReuse(t *testing.T) {
	es := sampleEntries()
	var encs [][]byte
	for i := range es {
		encs = append(encs, AppendEntry(nil, &es[i]))
	}
	var e Entry
	for _, order := range [][]int{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {11, 9, 10, 8, 2, 7, 6, 5, 4, 3, 1, 0, 2}} {
		for _, i := range order {
			if err := DecodeEntryReuse(&e, encs[i]); err != nil {
				t.Fatalf("%d: %v", i, err)
			}
			if !entriesEqual(&es[i], &e) {
				t.Fatalf("%d: reused decode:\n got %+v\nwant %+v", i, e, es[i])
			}
		}
	}
	if err := DecodeEntryReuse(&e, []byte{0xff}); err == nil {
		t.Fatal("a corrupt entry decoded")
	}
	big := encs[2]
	if n := testing.AllocsPerRun(100, func() {
		if err := DecodeEntryReuse(&e, big); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("reused decode allocates %v times", n)
	}
}

// entriesEqual compares entries treating nil and empty slices alike.
func entriesEqual(a, b *Entry) bool {
	return bytes.Equal(AppendEntry(nil, a), AppendEntry(nil, b)) &&
		a.Kind == b.Kind && a.Now == b.Now && a.TID == b.TID && slices.Equal(a.More, b.More) &&
		slices.Equal(a.Commits, b.Commits) && slices.Equal(a.Aborts, b.Aborts) && slices.Equal(a.Fences, b.Fences) &&
		len(a.Participants) == len(b.Participants) &&
		len(a.Op.Compares) == len(b.Op.Compares) && len(a.Op.Reads) == len(b.Op.Reads) && len(a.Op.Writes) == len(b.Op.Writes) &&
		len(a.Op.Appends) == len(b.Op.Appends) && slices.Equal(a.Op.Relocs, b.Op.Relocs)
}

// TestOldEntriesDecode decodes entries of versions 1 and 4 as binaries
// before appends wrote them (bytes frozen here): the log format only grows.
func TestOldEntriesDecode(t *testing.T) {
	for _, tc := range []struct {
		hex  string
		want Entry
	}{
		{"01010200000000000001100461626364", sampleEntries()[1]},
		{"04010e0000000000010804000000010201020103000a", sampleEntries()[10]},
	} {
		b, err := hex.DecodeString(tc.hex)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeEntry(b)
		if err != nil {
			t.Fatalf("%s: %v", tc.hex, err)
		}
		if !entriesEqual(&got, &tc.want) || len(got.Op.Appends)+len(got.Op.Relocs) != 0 {
			t.Fatalf("%s: decoded %+v, want %+v", tc.hex, got, tc.want)
		}
		if again := AppendEntry(nil, &got); !bytes.Equal(again, b) {
			t.Fatalf("%s: re-encoded as %x", tc.hex, again)
		}
	}
}

func TestQueryRoundTrip(t *testing.T) {
	for i, e := range sampleEntries() {
		b := AppendQuery(nil, e.Now, &e.Op)
		now, op, err := DecodeQuery(b)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if now != e.Now || !bytes.Equal(AppendQuery(nil, now, &op), b) {
			t.Fatalf("%d: query round trip differs", i)
		}
	}
}

func TestResultRoundTrip(t *testing.T) {
	m, _ := New(Config{})
	invalidErr := m.Apply(&Entry{Kind: 42}).Err
	for i, r := range []Result{
		{FailedCompare: -1},
		{Vote: VoteOK, FailedCompare: -1, Reads: [][]byte{[]byte("ab"), {0, 0, 0}}},
		{Vote: VoteBadCmp, FailedCompare: 1023},
		{Vote: VoteBadForced, FailedCompare: -1, Outcome: OutcomeAborted},
		{FailedCompare: -1, Outcome: OutcomeCommitted},
		{FailedCompare: -1, Outcome: OutcomeExpired}, // same layout: version 1 carries any outcome byte
		{FailedCompare: -1, Err: invalidErr},
		{Vote: VoteOK, FailedCompare: -1, Reads: [][]byte{[]byte("ab")}, Appended: []Appended{{Tail: 7, Count: math.MaxUint64}, {}}},
		{Vote: VoteOK, FailedCompare: -1, Appended: []Appended{{Tail: 1}}},
	} {
		b := AppendResult(nil, &r)
		got, err := DecodeResult(b)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if (r.Err == nil) != (got.Err == nil) {
			t.Fatalf("%d: error lost or invented: %v", i, got.Err)
		}
		if r.Err != nil {
			if got.Err.Error() != r.Err.Error() || !errors.Is(got.Err, ErrInvalid) {
				t.Fatalf("%d: decoded error %q (Is ErrInvalid: %v), want %q", i, got.Err, errors.Is(got.Err, ErrInvalid), r.Err)
			}
			got.Err, r.Err = nil, nil
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%d: round trip:\n got %+v\nwant %+v", i, got, r)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good := AppendEntry(nil, &sampleEntries()[2])
	// Version 4 must carry fences (else it is version 3 or older): a
	// version-3 encoding relabelled 4, with an empty fence list.
	v4NoFences := AppendEntry(nil, &Entry{Kind: KindExec, Aborts: []TID{{Client: 1}}})
	v4NoFences[0] = 4
	v4NoFences = append(v4NoFences, 0)
	// Version 5 must carry appends or relocs.
	v5NoAppends := append(bytes.Clone(v4NoFences), 0, 0)
	v5NoAppends[0] = 5
	v5BadFlags := AppendEntry(nil, &Entry{Kind: KindExec, Op: Op{Relocs: []Reloc{{Write: true}}}})
	v5BadFlags[len(v5BadFlags)-3] = 4 // the flags byte: unknown bit
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrCorrupt},
		{"version", append([]byte{6}, good[1:]...), ErrVersion},
		{"version 5 without appends", v5NoAppends, ErrCorrupt},
		{"reloc flags", v5BadFlags, ErrCorrupt},
		{"version 4 without fences", v4NoFences, ErrCorrupt},
		{"trailing", append(bytes.Clone(good), 0), ErrCorrupt},
		{"non-minimal varint", []byte{1, 1, 0x80, 0x00, 0, 0, 0, 0, 0, 0, 0}, ErrCorrupt},
		{"huge count", []byte{1, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, ErrCorrupt},
		{"huge length", []byte{1, 1, 0, 0, 0, 0, 0, 1, 0, 0xff, 0xff, 0x03}, ErrCorrupt},
		{"read len over 32 bits", []byte{1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0}, ErrCorrupt},
		{"varint overflow", []byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, ErrCorrupt},
	} {
		if _, err := DecodeEntry(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: DecodeEntry error %v, want %v", tc.name, err, tc.want)
		}
	}
	for i := range good {
		if _, err := DecodeEntry(good[:i]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d: error %v", i, err)
		}
	}
	if _, err := DecodeResult([]byte{1, 1, 1, 0, 2, 0}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("bad error flag: %v", err)
	}
	if _, err := DecodeResult([]byte{2, 1, 1, 0, 0, 0, 0}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("result version 2 without appended: %v", err)
	}
	if _, err := DecodeResult([]byte{9}); !errors.Is(err, ErrVersion) {
		t.Errorf("result version: %v", err)
	}
	if _, _, err := DecodeQuery([]byte{1}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated query: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	err := Config{MaxItems: -1, Horizon: -1}.Validate()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("error %v does not wrap ErrInvalid", err)
	}
	for _, field := range []string{"Size", "MaxItemBytes", "MaxItems", "Horizon"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error %q does not report %s", err, field)
		}
	}
	if _, err := New(Config{Horizon: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("New accepted a negative horizon: %v", err)
	}
	m, err := New(Config{Size: 100})
	if err != nil || m.Config() != (Config{Size: 100, MaxItemBytes: 1 << 20, MaxItems: 1024, Horizon: 60e9}) {
		t.Fatalf("New(Size: 100) = %+v, %v", m.Config(), err)
	}
}

func TestValidateOpAllocs(t *testing.T) {
	cfg := DefaultConfig()
	op := benchOp()
	if n := testing.AllocsPerRun(100, func() {
		if err := cfg.ValidateOp(KindExec, &op); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("ValidateOp allocates %v times", n)
	}
}

// populated returns a Memnode with pages, in-doubt, forced and decided.
func populated(t testing.TB) *Memnode { return apply(t, populateEntries) }

// apply returns a Memnode that applied es, all valid and voting OK.
func apply(t testing.TB, es []Entry) *Memnode {
	m, err := New(Config{Horizon: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if r := m.Apply(&e); r.Err != nil || (r.Vote != 0 && r.Vote != VoteOK) {
			t.Fatalf("populate: %+v", r)
		}
	}
	return m
}

var populateEntries = []Entry{
	{Kind: KindExec, Now: 10, Op: Op{Writes: []Write{{Addr: 0xffe, Data: []byte("span")}, {Addr: 1 << 30, Data: []byte("far")}}}},
	{Kind: KindPrepare, Now: 11, TID: TID{1, 1, 11}, Participants: []uint64{4, 5},
		Op: Op{Compares: []Compare{{Addr: 0xffe, Data: []byte("sp")}}, Reads: []Read{{Addr: 0, Len: 8}}, Writes: []Write{{Addr: 0x2000, Data: []byte("indoubt")}}}},
	{Kind: KindPrepare, Now: 12, TID: TID{2, 1, 12}, Participants: []uint64{4}, Op: Op{Reads: []Read{{Addr: 0, Len: 4}}}},
	{Kind: KindAbort, Now: 13, TID: TID{3, 1, 13}},
	{Kind: KindPrepare, Now: 14, TID: TID{4, 1, 14}, Participants: []uint64{4, 6}, Op: Op{Writes: []Write{{Addr: 0x3000, Data: []byte("c")}}}},
	{Kind: KindCommit, Now: 15, TID: TID{4, 1, 14}},
}

func TestRestoreRejects(t *testing.T) {
	src := populated(t)
	snap := src.Snapshot()
	other, _ := New(Config{Horizon: 1000})
	other.Apply(&Entry{Kind: KindExec, Now: 99, Op: Op{Writes: []Write{{Addr: 7, Data: []byte("keep")}}}})
	keep := other.Snapshot()

	check := func(name string, b []byte, want error) {
		t.Helper()
		if err := other.Restore(b); !errors.Is(err, want) {
			t.Fatalf("%s: error %v, want %v", name, err, want)
		}
		if !bytes.Equal(other.Snapshot(), keep) {
			t.Fatalf("%s: failed Restore changed the state", name)
		}
	}
	for i := range len(snap) * 8 {
		b := bytes.Clone(snap)
		b[i/8] ^= 1 << (i % 8)
		check(fmt.Sprintf("bit %d", i), b, ErrCorrupt)
	}
	for i := range snap {
		check(fmt.Sprintf("truncated to %d", i), snap[:i], ErrCorrupt)
	}
	check("extended", append(bytes.Clone(snap), 0), ErrCorrupt)

	// A well-checksummed snapshot of another version, or with a bad body.
	b := bytes.Clone(snap[:len(snap)-4])
	b[len(snapshotMagic)] = 2
	check("version 2", withCRC(b), ErrVersion)
	check("trailing body byte", withCRC(append(bytes.Clone(snap[:len(snap)-4]), 0)), ErrCorrupt)

	// Pages beyond this memnode's size.
	small, _ := New(Config{Size: 1 << 20, Horizon: 1000})
	if err := small.Restore(snap); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore into a smaller memnode: %v", err)
	}

	// And the good one restores everything, locks included.
	if err := other.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(other.Snapshot(), snap) || !reflect.DeepEqual(other.InDoubt(), src.InDoubt()) || other.Stats() != src.Stats() {
		t.Fatal("restored state differs")
	}
	checkInvariants(t, other)
	if r := other.Apply(&Entry{Kind: KindExec, Now: 16, Op: Op{Reads: []Read{{Addr: 0x2003, Len: 1}}}}); r.Vote != VoteBadLock {
		t.Fatalf("restored lock not held: %+v", r)
	}
}

func TestRestoreRejectsInconsistent(t *testing.T) {
	m, _ := New(Config{})
	// Two in-doubt tids with conflicting locks, checksummed correctly.
	b := []byte(snapshotMagic)
	b = append(b, snapshotVersion, 0, 0, 0) // clock, lastSweep, no pages
	b = append(b, 2)
	for seq := range 2 {
		b = appendTID(b, TID{Client: 1, Seq: uint64(seq)})
		b = append(b, 0, 0, 0, 0, 1, 0) // preparedAt, parts, compares, reads, one write
		b = appendBytes(b, []byte("x"))
	}
	b = append(b, 0, 0)
	if err := m.Restore(withCRC(b)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "conflicting") {
		t.Fatalf("conflicting locks: %v", err)
	}
}

func withCRC(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func FuzzDecodeEntry(f *testing.F) {
	for _, e := range sampleEntries() {
		f.Add(AppendEntry(nil, &e))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEntry(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrVersion", err)
			}
			return
		}
		if again := AppendEntry(nil, &e); !bytes.Equal(again, b) {
			t.Fatalf("decode accepted a non-canonical encoding:\n in %x\nout %x", b, again)
		}
		m, _ := New(Config{Size: 1 << 20, Horizon: 1000})
		before := m.Snapshot()
		r := m.Apply(&e)
		if r.Err != nil && !bytes.Equal(before, m.Snapshot()) {
			t.Fatal("invalid entry changed the state")
		}
		checkInvariants(t, m)
	})
}

func FuzzDecodeResult(f *testing.F) {
	f.Add(AppendResult(nil, &Result{Vote: VoteOK, FailedCompare: -1, Reads: [][]byte{[]byte("ab")}}))
	f.Add(AppendResult(nil, &Result{FailedCompare: -1, Err: fmt.Errorf("%w: x", ErrInvalid)}))
	f.Add(AppendResult(nil, &Result{Vote: VoteBadCmp, FailedCompare: 3}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResult(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrVersion", err)
			}
			return
		}
		if r.Err != nil && !errors.Is(r.Err, ErrInvalid) {
			t.Fatal("decoded Err does not match ErrInvalid")
		}
		if again := AppendResult(nil, &r); !bytes.Equal(again, b) {
			t.Fatalf("decode accepted a non-canonical encoding:\n in %x\nout %x", b, again)
		}
	})
}

func FuzzDecodeQuery(f *testing.F) {
	for _, e := range sampleEntries() {
		f.Add(AppendQuery(nil, e.Now, &e.Op))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		now, op, err := DecodeQuery(b)
		if err != nil {
			return
		}
		if again := AppendQuery(nil, now, &op); !bytes.Equal(again, b) {
			t.Fatalf("decode accepted a non-canonical encoding")
		}
		m, _ := New(Config{Size: 1 << 20})
		before := m.Snapshot()
		m.Query(now, &op)
		if !bytes.Equal(before, m.Snapshot()) {
			t.Fatal("query changed the state")
		}
	})
}

// FuzzRestore feeds Restore both the input and the input with its checksum
// fixed, so that the fuzzer reaches the body's parser.
func FuzzRestore(f *testing.F) {
	f.Add(populated(f).Snapshot())
	// No pages: a small seed keeps the fuzzer fast.
	f.Add(apply(f, append(populateEntries[2:5:5], Entry{Kind: KindAbort, Now: 15, TID: TID{4, 1, 14}})).Snapshot())
	empty, _ := New(Config{Horizon: 1000})
	f.Add(empty.Snapshot())
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range [][]byte{b, fixCRC(b)} {
			m := populated(t)
			keep := m.Snapshot()
			if err := m.Restore(in); err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
					t.Fatalf("error %v wraps neither ErrCorrupt nor ErrVersion", err)
				}
				if !bytes.Equal(keep, m.Snapshot()) {
					t.Fatal("failed Restore changed the state")
				}
				continue
			}
			if !bytes.Equal(m.Snapshot(), in) {
				t.Fatal("Restore accepted a non-canonical snapshot")
			}
			checkInvariants(t, m)
		}
	})
}

func fixCRC(b []byte) []byte {
	if len(b) < 4 {
		return b
	}
	return withCRC(bytes.Clone(b[:len(b)-4]))
}
