package service

import (
	"slices"
	"testing"

	"github.com/tutti-gcs/tutti/api/tuttipb"
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
	tg, sub, ok := hub.subscribe(7, []wrange{{100, 200}})
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
	tg, sub, _ := hub.subscribe(1, []wrange{{0, 1 << 30}})
	for i := range uint64(3 * watchMaxPending) {
		tg.publish(i+1, []wrange{{i * 16, i*16 + 1}})
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
		tg.publish(i+1, []wrange{{i, i + 1}})
	}
	if ev := sub.take(); ev.GetReset_() || !slices.Equal(ranges(ev), []wrange{{0, 3 * watchMaxPending}}) {
		t.Fatalf("event %v, want one merged range", ev)
	}
	tg.unsubscribe(sub)
	hub.close()
	if _, _, ok := hub.subscribe(1, []wrange{{0, 1}}); ok {
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
	tg, sub, _ := hub.subscribe(7, []wrange{{100, 200}})
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
