package gcs

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// testRef is a group whose order log is 4 KiB at logBase.
func testGroup() *Group {
	return &Group{ref: groupRef{name: "t", home: 1, meta: 0x1000, logSize: 4096, maxMembers: 1}}
}

func TestOwnOnly(t *testing.T) {
	g := testGroup()
	base, size := g.ref.logBase(), g.ref.logSize
	hdrRange := client.Range{Addr: g.ref.meta + offView, Len: 24}
	logAt := func(pos, n uint64) []client.Range {
		var rs []client.Range
		for _, it := range ringSplit(base, size, pos, n) {
			rs = append(rs, client.Range{Addr: it.addr, Len: it.n})
		}
		return rs
	}
	with := func(rs ...[]client.Range) []client.Range {
		out := []client.Range{hdrRange}
		for _, r := range rs {
			out = append(out, r...)
		}
		return out
	}
	g.addOwn(1000, 200)
	g.addOwn(1200, 100)
	g.addOwn(4000, 200) // wraps: 96 bytes at the end, 104 at the start
	cases := []struct {
		name string
		rs   []client.Range
		pos  uint64
		want bool
	}{
		{"own record, delivered", with(logAt(1000, 200)), 1300, true},
		{"two own records merged", with(logAt(1000, 300)), 1300, true},
		{"own record not delivered yet", with(logAt(1200, 100)), 1250, false},
		{"own and a foreign record", with(logAt(1000, 400)), 1400, false},
		{"foreign record only", with(logAt(1300, 64)), 1300, false},
		{"header only", []client.Range{hdrRange}, 1300, false},
		{"no ranges", nil, 1300, false},
		{"own record across the wrap", with(logAt(4000, 200)), 4200, true},
		// Half a log past our records they no longer count: the same ring
		// offsets may be a new record one lap later.
		{"own record too old", with(logAt(1000, 200)), 1000 + size/2 + 1, false},
		{"new record at pos aliasing an own one", with(logAt(1000+size, 200)), 1000 + size, false},
	}
	for _, c := range cases {
		if got := g.ownOnly(c.rs, c.pos); got != c.want {
			t.Errorf("%s: ownOnly = %v, want %v", c.name, got, c.want)
		}
	}
	for i := 0; i < 2*maxOwn; i++ {
		g.addOwn(uint64(10000+i*8), 8)
	}
	if n := len(g.own.ws); n != maxOwn {
		t.Fatalf("own links remembered: %d, want %d", n, maxOwn)
	}
}

func TestHandoff(t *testing.T) {
	g := testGroup()
	h := header{view: 3, tail: 160, msgs: 7}
	g.handoff(100, slices.Concat(bytes.Repeat([]byte{1}, 20), bytes.Repeat([]byte{2}, 16), bytes.Repeat([]byte{3}, 24)), h)
	if s := g.seen.Load(); s == nil || *s != h {
		t.Fatalf("seen header %v, want %v", s, h)
	}
	if _, _, ok, _ := g.takeHandoff(96); ok {
		t.Fatal("a handoff from 100 served position 96")
	}
	gh, b, ok, passed := g.takeHandoff(120)
	if !ok || passed || gh != h || len(b) != 40 || b[0] != 2 || b[16] != 3 {
		t.Fatalf("takeHandoff(120) = %v, %v, %v, %v", gh, b, ok, passed)
	}
	if _, _, ok, passed := g.takeHandoff(120); ok || passed {
		t.Fatal("a handoff was served twice")
	}
	g.handoff(100, make([]byte, 60), h)
	if gh, _, ok, passed := g.takeHandoff(160); ok || !passed || gh != h {
		t.Fatal("a handoff delivery passed was served, or not reported passed")
	}
	if _, _, ok, passed := g.takeHandoff(100); ok || passed {
		t.Fatal("a handoff delivery passed was kept")
	}
}

// TestHoldForLeaversClock replays the trimmer's treatment of a graceful
// leaver on a fake clock (Config.Now): trimming waits for it while it
// makes progress and gives it up after leaveGrace without progress.
func TestHoldForLeaversClock(t *testing.T) {
	cfg := Config{GCInterval: 50 * time.Millisecond, TakeoverTimeout: time.Second}
	clock := time.Unix(1000, 0)
	cfg.Now = func() time.Time { return clock }
	g := &Group{n: &Node{cfg: cfg}}
	leaver := member{slot: 1, tag: 7, retiredAt: 4096 | retiredLeft, dLog: 1024}
	ms := metaState{h: header{head: 512}, members: []member{{slot: 0, tag: 5, dLog: 8192}, leaver}}
	leavers := map[uint64]leaverProgress{}
	if got := g.holdForLeavers(ms, 8192, leavers, cfg.Now()); got != 1024 {
		t.Fatalf("trim bound %d, want 1024 (the leaver's position)", got)
	}
	clock = clock.Add(g.n.leaveGrace())
	if got := g.holdForLeavers(ms, 8192, leavers, cfg.Now()); got != 1024 {
		t.Fatalf("trim bound %d at the grace limit, want 1024", got)
	}
	ms.members[1].dLog = 2048 // progress restarts the grace period
	clock = clock.Add(time.Millisecond)
	if got := g.holdForLeavers(ms, 8192, leavers, cfg.Now()); got != 2048 {
		t.Fatalf("trim bound %d after progress, want 2048", got)
	}
	clock = clock.Add(g.n.leaveGrace() + time.Millisecond)
	if got := g.holdForLeavers(ms, 8192, leavers, cfg.Now()); got != 8192 {
		t.Fatalf("trim bound %d after the grace without progress, want 8192 (leaver given up)", got)
	}
	ms.members[1].tag = 0
	g.holdForLeavers(ms, 8192, leavers, cfg.Now())
	if len(leavers) != 0 {
		t.Fatalf("leavers remembered after the slot was freed: %v", leavers)
	}
}

// TestHoldForLeaversUpToTheLeaveRecord: a leaver that delivered
// everything before its leave record (published position = the record's)
// still has to read the record. The trimmer took it for done and trimmed
// past the record: the leaver's delivery found head beyond its position,
// was evicted ("fell behind the order log") and its Leave failed with
// ErrEvicted (TestLogWrapsAndIsTrimmed, now and then under load).
func TestHoldForLeaversUpToTheLeaveRecord(t *testing.T) {
	cfg := Config{GCInterval: 50 * time.Millisecond, TakeoverTimeout: time.Second}
	g := &Group{n: &Node{cfg: cfg}}
	leaver := member{slot: 1, tag: 7, retiredAt: 4096 | retiredLeft, dLog: 4096}
	ms := metaState{h: header{head: 512}, members: []member{{slot: 0, tag: 5, dLog: 8192}, leaver}}
	if got := g.holdForLeavers(ms, 8192, map[uint64]leaverProgress{}, time.Now()); got != 4096 {
		t.Fatalf("trim bound %d, want 4096 (the leaver has not read its leave record)", got)
	}
	ms.members[1].dLog = 4096 + 120 // past the record: done
	if got := g.holdForLeavers(ms, 8192, map[uint64]leaverProgress{}, time.Now()); got != 8192 {
		t.Fatalf("trim bound %d, want 8192 (the leaver read its leave record)", got)
	}
}

// TestOwnBlob: delivery takes our own queued batches from memory, exactly
// as written, and only for records that reference them.
func TestOwnBlob(t *testing.T) {
	g := testGroup()
	g.self = member{slot: 2, tag: 9}
	blob := func(q, firstSeq uint64, body string) []byte {
		b := make([]byte, align8(blobHeader+len(body)))
		putU64s(b, q)
		putU64s(b[16:], g.self.tag, firstSeq)
		copy(b[blobHeader:], body)
		return b
	}
	rec := func(q, firstSeq uint64, n int, slot int, tag uint64) record {
		return record{kind: recRef, slot: slot, tag: tag, firstSeq: firstSeq,
			body: refBody{qMemnode: 1, qAddr: 8, qLen: 1 << 20, qPos: q, bytes: uint64(n)}.encode()}
	}
	b0, b1 := blob(0, 1, "first batch"), blob(48, 3, "second batch")
	g.keepBlob(0, b0)
	g.keepBlob(48, b1)
	if _, ok := g.ownBlob(rec(48, 3, len(b1), 3, 9)); ok {
		t.Fatal("took a blob for another slot's record")
	}
	if _, ok := g.ownBlob(rec(48, 4, len(b1), 2, 9)); ok {
		t.Fatal("took a blob whose first sequence number differs")
	}
	body, ok := g.ownBlob(rec(48, 3, len(b1), 2, 9))
	if !ok || !bytes.HasPrefix(body, []byte("second batch")) {
		t.Fatalf("ownBlob = %q, %v", body, ok)
	}
	if len(g.blobs.m) != 0 {
		t.Fatalf("blobs at or below the one taken kept: %d", len(g.blobs.m))
	}
	if _, ok := g.ownBlob(rec(48, 3, len(b1), 2, 9)); ok {
		t.Fatal("a blob was taken twice")
	}
}

// TestCheckBlob: a reader must not take a blob whose header survived while
// a newer blob's write covered the rest (two queue writes in flight can
// commit out of order, the first retried, and a member that fell behind
// the trimmed log reads on until it learns it). The header check, all that
// blobs had before their checksum, accepted such a blob; the checksum
// refuses it.
func TestCheckBlob(t *testing.T) {
	batch := func(ps ...string) ([]*sendReq, int) {
		var rs []*sendReq
		size := 0
		for _, p := range ps {
			rs = append(rs, &sendReq{payload: []byte(p)})
			size += 4 + len(p)
		}
		return rs, size
	}
	b1, n1 := batch("first message", "second")
	blob := newBlob(4096, 7, 11, b1, n1)
	if len(blob)%8 != 0 {
		t.Fatalf("blob of %d bytes, want a multiple of 8", len(blob))
	}
	body, err := checkBlob(blob, 4096, 7, 11)
	if err != nil {
		t.Fatalf("intact blob: %v", err)
	}
	if msgs, err := decodeMsgs(body, 2); err != nil || string(msgs[0]) != "first message" || string(msgs[1]) != "second" {
		t.Fatalf("body decodes to %q, %v", msgs, err)
	}
	for _, tc := range []struct{ q, tag, seq uint64 }{{4104, 7, 11}, {4096, 8, 11}, {4096, 7, 12}} {
		if _, err := checkBlob(blob, tc.q, tc.tag, tc.seq); !errors.Is(err, ErrCorrupt) {
			t.Errorf("blob checked for %+v: %v, want ErrCorrupt", tc, err)
		}
	}
	// A newer blob's bytes over everything after the header.
	b2, n2 := batch("a newer message of the same sender, written over the tail")
	over := append([]byte(nil), blob...)
	copy(over[blobHeader:], newBlob(4096+1<<20, 7, 40, b2, n2)[blobHeader:])
	if _, err := checkBlob(over, 4096, 7, 11); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "overwritten") {
		t.Fatalf("blob with an overwritten tail: %v, want ErrCorrupt (overwritten)", err)
	}
	// One byte changed in the middle; a read shorter than the blob.
	over = append([]byte(nil), blob...)
	over[blobHeader+5] ^= 1
	if _, err := checkBlob(over, 4096, 7, 11); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("blob with a changed byte: %v, want ErrCorrupt", err)
	}
	if _, err := checkBlob(blob[:len(blob)-8], 4096, 7, 11); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short read of the blob: %v, want ErrCorrupt", err)
	}
	// Blobs written before the checksum (size without blobSealed) are
	// checked by their header alone, as they were.
	old := make([]byte, align8(blobHeader+n1))
	putU64s(old, 4096)
	le.PutUint32(old[8:], uint32(len(old)))
	le.PutUint32(old[12:], 2)
	putU64s(old[16:], 7, 11)
	encodeBatch(old[blobHeader:blobHeader], b1)
	if body, err := checkBlob(old, 4096, 7, 11); err != nil || !bytes.Equal(body, old[blobHeader:]) {
		t.Fatalf("unsealed blob: %v", err)
	}
}

// The provider frees a state region only when its publication is known
// not to have committed. It used to free it on any error, including an
// unknown outcome whose read-back failed (the provider stopping), after
// which a joiner could read a freed, reused region as its state.
func TestMayFreeUnpublished(t *testing.T) {
	for _, tc := range []struct {
		published, maybe, want bool
	}{
		{false, false, true}, // compare failed, or the request was not applied
		{true, false, false}, // published: the joiner frees it
		{true, true, false},  // an unknown outcome settled as published
		{false, true, false}, // unsettled: may be published
	} {
		if got := mayFreeUnpublished(tc.published, tc.maybe); got != tc.want {
			t.Errorf("published %v, maybe %v: free %v, want %v", tc.published, tc.maybe, got, tc.want)
		}
	}
}

// TestQueueFenceIsPerGroup: the fence of a member's queue must differ
// between groups for the same tag (every group counts tags from 1, and a
// freed queue block goes to the next member of any group that allocates
// its size on that memnode: a removed member retrying a queue write must
// not pass the new owner's fence), never look like a freeMarker (top bit)
// and never be zero (a freed, zeroed word).
func TestQueueFenceIsPerGroup(t *testing.T) {
	seen := map[string]string{}
	for home := uint64(0); home < 4; home++ {
		for i := uint64(0); i < 64; i++ {
			ref := groupRef{home: home, meta: IndexBase + IndexSlots*IndexSlotSize + 8 + i*4096}
			for tag := uint64(1); tag <= 64; tag++ {
				f := queueFence(ref, tag)
				v := le.Uint64(f)
				if v == 0 || v&(1<<63) != 0 {
					t.Fatalf("home %d meta %#x tag %d: fence %#x is zero or has the marker's bit", home, ref.meta, tag, v)
				}
				who := fmt.Sprintf("home %d meta %#x tag %d", home, ref.meta, tag)
				if other, ok := seen[string(f)]; ok {
					t.Fatalf("%s and %s have the same fence %#x", who, other, v)
				}
				seen[string(f)] = who
				if !bytes.Equal(f, queueFence(ref, tag)) {
					t.Fatalf("%s: fence not stable", who)
				}
			}
		}
	}
}
