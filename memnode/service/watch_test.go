package service

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/segs"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

func testMachine(t *testing.T) (*machine, *watchHub) {
	t.Helper()
	mn, err := memnode.New(memnode.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	hub := newWatchHub()
	return &machine{m: mn, w: hub.target(7)}, hub
}

func apply(t *testing.T, m *machine, index uint64, es ...memnode.Entry) []memnode.Result {
	t.Helper()
	cmds := make([]replication.Command, len(es))
	for i := range es {
		cmds[i] = replication.Command{Index: index, Data: memnode.AppendEntry(nil, &es[i])}
	}
	var rs []memnode.Result
	for _, b := range m.Apply(cmds) {
		r, err := memnode.DecodeResult(b)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

func ranges(ev *tuttipb.WatchEvent) []wrange {
	var out []wrange
	for _, r := range ev.GetRanges() {
		out = append(out, wrange{r.GetAddr(), r.GetAddr() + r.GetLen()})
	}
	return out
}

func write(addr uint64, data string) memnode.Op {
	return memnode.Op{Writes: []memnode.Write{{Addr: addr, Data: []byte(data)}}}
}

// The machine reports what applied entries wrote, and only that: an Exec
// that voted OK, the in-doubt writes of committed tids, a reset after a
// snapshot is restored.
func TestWatchMachineReportsAppliedWrites(t *testing.T) {
	m, hub := testMachine(t)
	apply(t, m, 1, memnode.Entry{Kind: memnode.KindExec, Op: write(100, "before")})
	tg, sub, ok := hub.subscribe(7, []wrange{{100, 200}}, false)
	if !ok || sub.start != 1 {
		t.Fatalf("subscribe: ok %v start %d, want start 1", ok, sub.start)
	}
	defer tg.unsubscribe(sub)
	if ev := sub.take(); ev != nil {
		t.Fatalf("event %v before any write", ev)
	}

	tid1 := memnode.TID{Client: 1, Seq: 1, Time: 1}
	tid2 := memnode.TID{Client: 1, Seq: 2, Time: 1}
	rs := apply(t, m, 2,
		memnode.Entry{Kind: memnode.KindExec, Now: 1, Op: write(150, "in")},
		memnode.Entry{Kind: memnode.KindExec, Now: 1, Op: write(300, "out")},
		memnode.Entry{Kind: memnode.KindExec, Now: 1, Op: memnode.Op{
			Compares: []memnode.Compare{{Addr: 100, Data: []byte("nope")}}, Writes: write(110, "x").Writes}},
		memnode.Entry{Kind: memnode.KindPrepare, Now: 1, TID: tid1, Participants: []uint64{7}, Op: write(120, "p1")},
		memnode.Entry{Kind: memnode.KindPrepare, Now: 1, TID: tid2, Participants: []uint64{7}, Op: write(190, "p2-long-write")},
	)
	if rs[2].Vote != memnode.VoteBadCmp || rs[3].Vote != memnode.VoteOK || rs[4].Vote != memnode.VoteOK {
		t.Fatalf("votes %+v", rs)
	}
	ev := sub.take()
	if ev == nil || ev.GetIndex() != 2 || ev.GetReset_() || !slices.Equal(ranges(ev), []wrange{{150, 152}}) {
		t.Fatalf("event %v, want [150,152) at index 2 (no failed compare, no prepare)", ev)
	}
	select {
	case <-sub.notify:
	default:
		t.Fatal("subscriber not woken")
	}

	// One Commit entry decides both tids (More) and an unknown one.
	apply(t, m, 3, memnode.Entry{Kind: memnode.KindCommit, Now: 2, TID: tid1,
		More: []memnode.TID{{Client: 9, Seq: 9, Time: 1}, tid2}})
	ev = sub.take()
	if ev == nil || ev.GetIndex() != 3 || !slices.Equal(ranges(ev), []wrange{{120, 122}, {190, 200}}) {
		t.Fatalf("event %v, want [120,122) [190,200) at index 3", ev)
	}
	// Committing again writes nothing.
	apply(t, m, 4, memnode.Entry{Kind: memnode.KindCommit, Now: 2, TID: tid1})
	if ev := sub.take(); ev != nil {
		t.Fatalf("event %v for a duplicate commit", ev)
	}

	snap, _ := m.Snapshot()
	if err := m.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if ev := sub.take(); ev == nil || !ev.GetReset_() || len(ev.GetRanges()) != 0 {
		t.Fatalf("event %v after a restore, want a reset", ev)
	}
}

// A subscriber nobody drains keeps bounded state: past watchMaxPending
// ranges it collapses into one reset.
func TestWatchSubscriberOverflowBecomesReset(t *testing.T) {
	hub := newWatchHub()
	tg, sub, _ := hub.subscribe(1, []wrange{{0, 1 << 30}}, false)
	for i := range uint64(3 * watchMaxPending) {
		tg.publish(i+1, []wrange{{i * 16, i*16 + 1}}, nil)
		sub.mu.Lock()
		n := len(sub.mu.pending)
		sub.mu.Unlock()
		if n > watchMaxPending+1 {
			t.Fatalf("%d pending ranges", n)
		}
	}
	ev := sub.take()
	if ev == nil || !ev.GetReset_() || len(ev.GetRanges()) != 0 || ev.GetIndex() != 3*watchMaxPending {
		t.Fatalf("event %v, want a reset at index %d", ev, 3*watchMaxPending)
	}
	// Adjacent writes merge instead.
	for i := range uint64(3 * watchMaxPending) {
		tg.publish(i+1, []wrange{{i, i + 1}}, nil)
	}
	if ev := sub.take(); ev.GetReset_() || !slices.Equal(ranges(ev), []wrange{{0, 3 * watchMaxPending}}) {
		t.Fatalf("event %v, want one merged range", ev)
	}
	tg.unsubscribe(sub)
	hub.close()
	if _, _, ok := hub.subscribe(1, []wrange{{0, 1}}, false); ok {
		t.Fatal("subscribed to a closed hub")
	}
}

func TestWatchRangesValidation(t *testing.T) {
	s := testServer()
	size := memnode.DefaultConfig().Size
	for _, rs := range [][]*tuttipb.Range{
		nil,
		{{Addr: 0, Len: 0}},
		{{Addr: size, Len: 1}},
		{{Addr: 1, Len: size}},
		{{Addr: ^uint64(0), Len: 2}},
	} {
		if _, err := s.watchRanges(&tuttipb.WatchRequest{Memnode: 0, Ranges: rs}); err == nil {
			t.Errorf("ranges %v accepted", rs)
		}
	}
	got, err := s.watchRanges(&tuttipb.WatchRequest{Ranges: []*tuttipb.Range{{Addr: 10, Len: 5}, {Addr: 0, Len: 10}, {Addr: size - 1, Len: 1}}})
	if err != nil || !slices.Equal(got, []wrange{{0, 15}, {size - 1, size}}) {
		t.Fatalf("ranges %v, %v", got, err)
	}
}

// Commits carried by an entry of another kind report the committed tids'
// writes too, even when the entry itself writes nothing; an invalid carrier
// reports nothing.
func TestWatchMachineReportsCarriedCommits(t *testing.T) {
	m, hub := testMachine(t)
	tg, sub, _ := hub.subscribe(7, []wrange{{100, 200}}, false)
	defer tg.unsubscribe(sub)
	tid1 := memnode.TID{Client: 1, Seq: 1, Time: 1}
	tid2 := memnode.TID{Client: 1, Seq: 2, Time: 1}
	rs := apply(t, m, 1,
		memnode.Entry{Kind: memnode.KindPrepare, Now: 1, TID: tid1, Participants: []uint64{7}, Op: write(120, "p1")},
		memnode.Entry{Kind: memnode.KindPrepare, Now: 1, TID: tid2, Participants: []uint64{7}, Op: write(150, "p2")})
	if rs[0].Vote != memnode.VoteOK || rs[1].Vote != memnode.VoteOK {
		t.Fatalf("votes %+v", rs)
	}
	if ev := sub.take(); ev != nil {
		t.Fatalf("event %v for prepares", ev)
	}
	// Invalid: an out-of-range write. Nothing applies, nothing is reported.
	bad := memnode.Entry{Kind: memnode.KindExec, Now: 2, Op: write(memnode.DefaultConfig().Size, "x"), Commits: []memnode.TID{tid1}}
	if rs := apply(t, m, 2, bad); rs[0].Err == nil {
		t.Fatalf("invalid carrier applied: %+v", rs[0])
	}
	if ev := sub.take(); ev != nil {
		t.Fatalf("event %v for an invalid carrier", ev)
	}
	// A Prepare (which writes nothing yet) carrying tid1's commit and
	// tid2's abort reports tid1's writes only.
	rs = apply(t, m, 3, memnode.Entry{Kind: memnode.KindPrepare, Now: 2, TID: memnode.TID{Client: 1, Seq: 3, Time: 2},
		Participants: []uint64{7}, Op: write(400, "p3"), Commits: []memnode.TID{tid1}, Aborts: []memnode.TID{tid2}})
	if rs[0].Vote != memnode.VoteOK {
		t.Fatalf("carrier vote %+v", rs[0])
	}
	ev := sub.take()
	if ev == nil || ev.GetIndex() != 3 || !slices.Equal(ranges(ev), []wrange{{120, 122}}) {
		t.Fatalf("event %v, want [120,122) at index 3", ev)
	}
}

// dataOf returns an event's ranges with their data, as strings.
func dataOf(t *testing.T, ev *tuttipb.WatchEvent) map[uint64]string {
	t.Helper()
	if len(ev.GetData()) != len(ev.GetRanges()) {
		t.Fatalf("event %v: %d data for %d ranges", ev, len(ev.GetData()), len(ev.GetRanges()))
	}
	out := map[uint64]string{}
	for i, r := range ev.GetRanges() {
		if uint64(len(ev.GetData()[i])) != r.GetLen() {
			t.Fatalf("event %v: range %d has %d bytes of data", ev, i, len(ev.GetData()[i]))
		}
		out[r.GetAddr()] = string(ev.GetData()[i])
	}
	return out
}

// With data, events carry the bytes of their ranges as of their index:
// several writes to the same bytes, in one Apply batch or in several
// coalesced into one event, leave the latest bytes; a commit carries the
// in-doubt writes; a subscriber without data gets none; a restore resets
// and the data resumes after it.
func TestWatchDataCarriesLatestBytes(t *testing.T) {
	m, hub := testMachine(t)
	tg, sub, _ := hub.subscribe(7, []wrange{{100, 200}, {300, 310}}, true)
	defer tg.unsubscribe(sub)
	_, plain, _ := hub.subscribe(7, []wrange{{100, 200}, {300, 310}}, false)
	defer tg.unsubscribe(plain)

	apply(t, m, 1,
		memnode.Entry{Kind: memnode.KindExec, Op: write(150, "aaaa")},
		memnode.Entry{Kind: memnode.KindExec, Op: write(152, "bb")},
		memnode.Entry{Kind: memnode.KindExec, Op: write(195, "0123456789")}, // beyond 200
		memnode.Entry{Kind: memnode.KindExec, Op: write(250, "outside")},
	)
	ev := sub.take()
	if got := dataOf(t, ev); ev.GetIndex() != 1 || len(got) != 2 || got[150] != "aabb" || got[195] != "01234" {
		t.Fatalf("event %v: data %v", ev, got)
	}
	if ev := plain.take(); ev == nil || len(ev.GetData()) != 0 || !slices.Equal(ranges(ev), []wrange{{150, 154}, {195, 200}}) {
		t.Fatalf("event %v for a subscriber without data", ev)
	}

	// Three batches, one event: the latest bytes, adjacent ranges joined.
	tid := memnode.TID{Client: 1, Seq: 1, Time: 1}
	apply(t, m, 2, memnode.Entry{Kind: memnode.KindExec, Now: 1, Op: write(151, "Q")},
		memnode.Entry{Kind: memnode.KindPrepare, Now: 1, TID: tid, Participants: []uint64{7}, Op: write(305, "2pc")})
	apply(t, m, 3, memnode.Entry{Kind: memnode.KindExec, Now: 1, Op: write(154, "cd")})
	apply(t, m, 4, memnode.Entry{Kind: memnode.KindExec, Now: 1, Op: write(150, "Z")},
		memnode.Entry{Kind: memnode.KindCommit, Now: 1, TID: tid})
	ev = sub.take()
	if got := dataOf(t, ev); ev.GetIndex() != 4 || len(got) != 3 || got[150] != "ZQ" || got[154] != "cd" || got[305] != "2pc" {
		t.Fatalf("event %v: data %v", ev, got)
	}
	if ev := sub.take(); ev != nil {
		t.Fatalf("event %v after take", ev)
	}

	snap, _ := m.Snapshot()
	if err := m.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if ev := sub.take(); ev == nil || !ev.GetReset_() || len(ev.GetData()) != 0 {
		t.Fatalf("event %v after a restore, want a reset without data", ev)
	}
	apply(t, m, 5, memnode.Entry{Kind: memnode.KindExec, Now: 1, Op: write(300, "x")})
	if ev := sub.take(); dataOf(t, ev)[300] != "x" {
		t.Fatalf("event %v after the reset", ev)
	}
}

// fillReader is memory whose byte at addr is byte(addr*7 + seed).
type fillReader struct{ seed byte }

func (f fillReader) ReadAt(dst []byte, addr uint64) {
	for i := range dst {
		dst[i] = byte((addr+uint64(i))*7) + f.seed
	}
}

// Past watchMaxData pending bytes the next event carries ranges only; the
// one after it carries data again. Without a memory (publish with nil) an
// event carries none either.
func TestWatchDataCapFallsBackToHint(t *testing.T) {
	hub := newWatchHub()
	tg, sub, _ := hub.subscribe(1, []wrange{{0, 1 << 30}}, true)
	defer tg.unsubscribe(sub)
	const chunk = 64 << 10
	for i := range uint64(watchMaxData/chunk + 1) {
		tg.publish(i+1, []wrange{{i * 2 * chunk, i*2*chunk + chunk}}, fillReader{})
	}
	ev := sub.take()
	if ev.GetReset_() || len(ev.GetData()) != 0 || len(ev.GetRanges()) != watchMaxData/chunk+1 {
		t.Fatalf("event with %d ranges, %d data, reset %v: want ranges only", len(ev.GetRanges()), len(ev.GetData()), ev.GetReset_())
	}
	sub.mu.Lock()
	n := len(sub.mu.segs)
	sub.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d segments kept after the cap", n)
	}
	// Rewriting the same bytes does not grow the data.
	for i := range uint64(2 * watchMaxData / chunk) {
		tg.publish(100+i, []wrange{{0, chunk}}, fillReader{seed: byte(i)})
	}
	ev = sub.take()
	if len(ev.GetData()) != 1 || len(ev.GetData()[0]) != chunk || ev.GetData()[0][0] != byte(2*watchMaxData/chunk-1) {
		t.Fatalf("event %v: want the latest data of [0, %d)", ev.GetRanges(), chunk)
	}
	tg.publish(200, []wrange{{8, 16}}, nil)
	if ev := sub.take(); len(ev.GetData()) != 0 || len(ev.GetRanges()) != 1 {
		t.Fatalf("event %v without a memory", ev)
	}
}

// segs.Overlay and segData against a model: random writes into pending segments, then the
// event data of the merged ranges equals the memory's bytes there.
func TestWatchOverlayModel(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var mem [256]byte
		written := make([]bool, len(mem))
		var ss []segs.Seg
		var pending []wrange
		total := 0
		for range 1 + rnd.IntN(20) {
			a := uint64(rnd.IntN(len(mem) - 1))
			e := a + 1 + uint64(rnd.IntN(min(40, len(mem)-int(a)-1)+1))
			b := make([]byte, e-a)
			for i := range b {
				b[i] = byte(rnd.Uint32())
				mem[a+uint64(i)] = b[i]
				written[a+uint64(i)] = true
			}
			var d int
			ss, d = segs.Overlay(ss, segs.Seg{Addr: a, B: b})
			total += d
			pending = append(pending, wrange{a, e})
		}
		sum := 0
		for i, g := range ss {
			sum += len(g.B)
			if i > 0 && ss[i-1].End() > g.Addr {
				t.Fatalf("round %d: segments overlap: %v", round, ss)
			}
		}
		if sum != total {
			t.Fatalf("round %d: %d bytes counted, %d held", round, total, sum)
		}
		merged := mergeRanges(pending)
		data := segData(merged, ss)
		if data == nil {
			t.Fatalf("round %d: segments %v do not cover %v", round, ss, merged)
		}
		n := 0
		for i, r := range merged {
			if string(data[i]) != string(mem[r.addr:r.end]) {
				t.Fatalf("round %d: range %v holds %x, want %x", round, r, data[i], mem[r.addr:r.end])
			}
			n += int(r.end - r.addr)
		}
		for _, w := range written {
			if w {
				n--
			}
		}
		if n != 0 {
			t.Fatalf("round %d: merged ranges cover %d bytes more than written", round, n)
		}
	}
}

// An entry of a newer format (an upgraded leader's, reaching an older
// host) must not be skipped: upgraded replicas apply it, and a replica
// that applied nothing would differ from them for good. The machine stops
// instead. A command that does not decode at all is refused alike by every
// replica, so it changes nothing and the machine goes on.
func TestMachineStopsOnNewerEntryFormat(t *testing.T) {
	m, _ := testMachine(t)
	good := memnode.AppendEntry(nil, &memnode.Entry{Kind: memnode.KindExec, Now: 1,
		Op: memnode.Op{Writes: []memnode.Write{{Addr: 8, Data: []byte{1}}}}})
	rs := m.Apply([]replication.Command{{Index: 1, Data: good[:len(good)-1]}}) // truncated: corrupt
	if r, err := memnode.DecodeResult(rs[0]); err != nil || !errors.Is(r.Err, memnode.ErrInvalid) {
		t.Fatalf("corrupt command: %+v %v; want ErrInvalid", r, err)
	}
	newer := append([]byte{99}, good[1:]...)
	defer func() {
		p := recover()
		if s, _ := p.(string); !strings.Contains(s, "format this binary does not know") {
			t.Fatalf("entry of a newer format: recovered %v; want the machine to stop", p)
		}
	}()
	m.Apply([]replication.Command{{Index: 2, Data: newer}})
}
