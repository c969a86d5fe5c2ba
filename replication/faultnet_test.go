package replication

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// faultHosts starts one transport per id on n and returns them with their
// handlers; they are closed when the test ends.
func faultHosts(t *testing.T, n *FaultNetwork, ids ...uint64) (map[uint64]Transport, map[uint64]*trHandler) {
	t.Helper()
	trs := make(map[uint64]Transport)
	hs := make(map[uint64]*trHandler)
	for _, id := range ids {
		tr := n.Transport(id)
		h := newTrHandler()
		if err := tr.Start(h); err != nil {
			t.Fatalf("start %d: %v", id, err)
		}
		trs[id], hs[id] = tr, h
		t.Cleanup(func() {
			if err := tr.Close(); err != nil {
				t.Errorf("close %d: %v", id, err)
			}
		})
	}
	return trs, hs
}

// indexesFrom returns the indexes of the messages in msgs from host from in
// group group, in arrival order.
func indexesFrom(msgs []GroupMessage, group, from uint64) []uint64 {
	var out []uint64
	for _, m := range msgs {
		if m.Group == group && m.Msg.GetFrom() == from {
			out = append(out, m.Msg.GetIndex())
		}
	}
	return out
}

func TestFaultNetworkDeliveryOrderAndCopy(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2, 3)
	const per = 500
	sent := make([]GroupMessage, 0, per)
	for i := uint64(1); i <= per; i++ {
		for g := uint64(1); g <= 3; g++ {
			m := trMsg(g, 1, 2, raftpb.MsgApp, i)
			m.Msg.Entries = []*raftpb.Entry{{Index: proto.Uint64(i), Data: []byte("payload")}}
			trs[1].Send([]GroupMessage{m})
			if g == 1 {
				sent = append(sent, m)
			}
		}
		trs[3].Send([]GroupMessage{trMsg(1, 3, 2, raftpb.MsgHeartbeat, i), trMsg(2, 3, 1, raftpb.MsgHeartbeat, i)})
	}
	// The sender may reuse its messages once Send returns.
	for _, m := range sent {
		m.Msg.Entries[0].Data[0] = 'X'
		m.Msg.Index = proto.Uint64(0)
	}
	trEventually(t, 5*time.Second, "all messages", func() bool { return hs[2].count() == 4*per && hs[1].count() == per })

	want := make([]uint64, per)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	got := hs[2].received()
	for g := uint64(1); g <= 3; g++ {
		if idx := indexesFrom(got, g, 1); !slices.Equal(idx, want) {
			t.Fatalf("group %d from 1: order broken or messages lost: got %d messages, first %v", g, len(idx), idx[:min(10, len(idx))])
		}
	}
	if idx := indexesFrom(got, 1, 3); !slices.Equal(idx, want) {
		t.Fatalf("group 1 from 3: got %v", idx[:min(10, len(idx))])
	}
	if idx := indexesFrom(hs[1].received(), 2, 3); !slices.Equal(idx, want) {
		t.Fatalf("group 2 from 3 to 1: got %v", idx[:min(10, len(idx))])
	}
	for _, m := range got {
		if m.Msg.GetFrom() == 1 && string(m.Msg.GetEntries()[0].GetData()) != "payload" {
			t.Fatalf("receiver shares memory with sender: entry data %q", m.Msg.GetEntries()[0].GetData())
		}
		if m.Msg.GetTo() != 2 {
			t.Fatalf("host 2 got a message for %d", m.Msg.GetTo())
		}
	}
	if d, dr := n.Stats(); d != 5*per || dr != 0 {
		t.Fatalf("stats: delivered %d dropped %d, want %d and 0", d, dr, 5*per)
	}
}

// sendAndCheck sends one message from→to and reports whether it was accepted
// for delivery (drops by faults are decided synchronously in Send).
func sendAndCheck(n *FaultNetwork, tr Transport, from, to, index uint64) bool {
	_, before := n.Stats()
	tr.Send([]GroupMessage{trMsg(7, from, to, raftpb.MsgHeartbeat, index)})
	_, after := n.Stats()
	return after == before
}

// waitIndex waits until h has received the message with index from from.
func waitIndex(t *testing.T, h *trHandler, from, index uint64) {
	t.Helper()
	trEventually(t, 5*time.Second, "message delivery", func() bool {
		return slices.Contains(indexesFrom(h.received(), 7, from), index)
	})
}

func TestFaultNetworkPartitionAndHeal(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2, 3, 4)
	n.Partition([]uint64{1, 2}, []uint64{3})
	cases := []struct {
		from, to uint64
		ok       bool
	}{
		{1, 2, true}, {2, 1, true}, {1, 3, false}, {3, 1, false}, {2, 3, false},
		{4, 1, false}, {3, 4, false}, // 4 is in no set: a set of its own
	}
	for i, c := range cases {
		if got := sendAndCheck(n, trs[c.from], c.from, c.to, uint64(i+1)); got != c.ok {
			t.Errorf("partitioned %d->%d: passed=%v, want %v", c.from, c.to, got, c.ok)
		}
	}
	waitIndex(t, hs[2], 1, 1)
	waitIndex(t, hs[1], 2, 2)

	n.Heal()
	for i, c := range cases {
		index := uint64(100 + i)
		if !sendAndCheck(n, trs[c.from], c.from, c.to, index) {
			t.Fatalf("healed %d->%d dropped", c.from, c.to)
		}
		waitIndex(t, hs[c.to], c.from, index)
	}
	for i, c := range cases {
		if !c.ok && slices.Contains(indexesFrom(hs[c.to].received(), 7, c.from), uint64(i+1)) {
			t.Fatalf("message %d->%d crossed the partition", c.from, c.to)
		}
	}
}

func TestFaultNetworkPartitionStopsInFlight(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2)
	n.SetDelay(time.Hour, time.Hour) // stays queued
	trs[1].Send([]GroupMessage{trMsg(7, 1, 2, raftpb.MsgHeartbeat, 1)})
	n.Isolate(2)
	n.SetDelay(0, 0)
	// Close drops the queued message: nothing reached the handler.
	if err := trs[2].Close(); err != nil {
		t.Fatal(err)
	}
	if d, dr := n.Stats(); d != 0 || dr != 1 || hs[2].count() != 0 {
		t.Fatalf("delivered %d dropped %d received %d, want 0 1 0", d, dr, hs[2].count())
	}
}

func TestFaultNetworkIsolate(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2, 3)
	n.Isolate(2)
	for _, c := range [][2]uint64{{1, 2}, {2, 1}, {2, 3}, {3, 2}} {
		if sendAndCheck(n, trs[c[0]], c[0], c[1], 1) {
			t.Fatalf("isolated: %d->%d passed", c[0], c[1])
		}
	}
	if !sendAndCheck(n, trs[1], 1, 3, 2) {
		t.Fatal("1->3 dropped while only 2 is isolated")
	}
	waitIndex(t, hs[3], 1, 2)
	n.Heal()
	if !sendAndCheck(n, trs[2], 2, 1, 3) {
		t.Fatal("2->1 dropped after heal")
	}
	waitIndex(t, hs[1], 2, 3)
}

func TestFaultNetworkOneWayCut(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2)
	n.Cut(1, 2)
	if sendAndCheck(n, trs[1], 1, 2, 1) {
		t.Fatal("1->2 passed a cut link")
	}
	if !sendAndCheck(n, trs[2], 2, 1, 2) {
		t.Fatal("2->1 dropped: the cut is one way")
	}
	waitIndex(t, hs[1], 2, 2)
	n.Heal()
	if !sendAndCheck(n, trs[1], 1, 2, 3) {
		t.Fatal("1->2 dropped after heal")
	}
	waitIndex(t, hs[2], 1, 3)
	if slices.Contains(indexesFrom(hs[2].received(), 7, 1), 1) {
		t.Fatal("the message sent over the cut arrived")
	}
}

// faultDropRun sends count messages 1->2 with drop rate p on a network seeded
// with seed and returns the indexes that arrived.
func faultDropRun(t *testing.T, seed int64, p float64, count int) []uint64 {
	t.Helper()
	n := NewFaultNetwork(seed)
	trs, hs := faultHosts(t, n, 1, 2)
	n.SetDropRate(p)
	for i := 1; i <= count; i++ {
		trs[1].Send([]GroupMessage{trMsg(7, 1, 2, raftpb.MsgApp, uint64(i))})
	}
	_, dropped := n.Stats()
	want := count - int(dropped)
	trEventually(t, 5*time.Second, "survivors", func() bool { return hs[2].count() == want })
	if d, _ := n.Stats(); int(d) != want {
		t.Fatalf("delivered %d, want %d", d, want)
	}
	return indexesFrom(hs[2].received(), 7, 1)
}

func TestFaultNetworkDropRate(t *testing.T) {
	const count, p = 10000, 0.3
	a := faultDropRun(t, 42, p, count)
	// Binomial(10000, 0.3): sd ≈ 46; allow > 6 sd.
	if lost := count - len(a); lost < 2700 || lost > 3300 {
		t.Fatalf("dropped %d of %d at p=%v", lost, count, p)
	}
	if !slices.IsSorted(a) {
		t.Fatal("survivors out of order")
	}
	if b := faultDropRun(t, 42, p, count); !slices.Equal(a, b) {
		t.Fatal("same seed, different drops")
	}
	if c := faultDropRun(t, 43, p, count); slices.Equal(a, c) {
		t.Fatal("different seeds, identical drops")
	}
	if all := faultDropRun(t, 42, 1, 100); len(all) != 0 {
		t.Fatalf("p=1 delivered %d", len(all))
	}
}

func TestFaultNetworkDelay(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2)
	const lo, hi = 30 * time.Millisecond, 60 * time.Millisecond
	n.SetDelay(lo, hi)
	arrived := make(chan time.Time, 10)
	hs[2].mu.Lock()
	hs[2].onMsgs = func(msgs []GroupMessage) {
		for range msgs {
			arrived <- time.Now()
		}
	}
	hs[2].mu.Unlock()
	start := time.Now()
	for i := uint64(1); i <= 10; i++ {
		trs[1].Send([]GroupMessage{trMsg(7, 1, 2, raftpb.MsgApp, i)})
	}
	for range 10 {
		select {
		case at := <-arrived:
			if d := at.Sub(start); d < lo {
				t.Fatalf("message arrived after %v, before the minimum delay %v", d, lo)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("delayed messages never arrived")
		}
	}
	idx := indexesFrom(hs[2].received(), 7, 1)
	slices.Sort(idx)
	if len(idx) != 10 || idx[0] != 1 || idx[9] != 10 {
		t.Fatalf("got indexes %v", idx)
	}
}

func TestFaultNetworkSnapshotReports(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2, 3)
	data := bytes.Repeat([]byte("snap"), 1000)
	trs[1].Send([]GroupMessage{trSnap(5, 1, 2, data)})
	trEventually(t, 5*time.Second, "snapshot report", func() bool { return len(hs[1].snapReports()) == 1 })
	if r := hs[1].snapReports()[0]; r != (trSnapReport{group: 5, to: 2, ok: true}) {
		t.Fatalf("report %+v, want ok for group 5 to 2", r)
	}
	got := hs[2].received()
	if len(got) != 1 || got[0].Msg.GetType() != raftpb.MsgSnap || !bytes.Equal(got[0].Msg.GetSnapshot().GetData(), data) ||
		got[0].Msg.GetSnapshot().GetMetadata().GetIndex() != 100 {
		t.Fatalf("receiver got %v", got)
	}

	n.Cut(1, 3)
	trs[1].Send([]GroupMessage{trSnap(6, 1, 3, data)})
	trs[1].Send([]GroupMessage{trSnap(7, 1, 9, data)}) // no such host
	trEventually(t, 5*time.Second, "failure reports", func() bool { return len(hs[1].snapReports()) == 3 })
	reports := hs[1].snapReports()[1:]
	slices.SortFunc(reports, func(a, b trSnapReport) int { return int(a.group) - int(b.group) })
	if want := []trSnapReport{{6, 3, false}, {7, 9, false}}; !slices.Equal(reports, want) {
		t.Fatalf("reports %+v, want %+v", reports, want)
	}
	trEventually(t, 5*time.Second, "unreachable report", func() bool { return hs[1].unreachableCount(7, 9) == 1 })
	if hs[1].unreachableCount(6, 3) != 0 {
		t.Fatal("a cut link reported unreachable")
	}
	if hs[3].count() != 0 {
		t.Fatal("snapshot crossed a cut")
	}
}

func TestFaultNetworkCloseAndRestart(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2)
	if err := trs[2].Close(); err != nil {
		t.Fatal(err)
	}
	if err := trs[2].Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := trs[2].Start(newTrHandler()); err == nil {
		t.Fatal("restarting a closed transport succeeded")
	}
	for i := uint64(1); i <= 100; i++ {
		trs[1].Send([]GroupMessage{trMsg(3, 1, 2, raftpb.MsgApp, i)})
	}
	trEventually(t, 5*time.Second, "unreachable report", func() bool { return hs[1].unreachableCount(3, 2) > 0 })
	if c := hs[1].unreachableCount(3, 2); c > 100 {
		t.Fatalf("%d unreachable reports for 100 messages", c)
	}
	if _, dropped := n.Stats(); dropped != 100 {
		t.Fatalf("dropped %d, want 100", dropped)
	}

	// A restarted host gets a new transport and is reachable again.
	again := n.Transport(2)
	h2 := newTrHandler()
	if err := again.Start(h2); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := again.Close(); err != nil {
			t.Error(err)
		}
	}()
	dup := n.Transport(2)
	if err := dup.Start(newTrHandler()); err == nil {
		t.Fatal("two started transports for one host")
	}
	trs[1].Send([]GroupMessage{trMsg(7, 1, 2, raftpb.MsgApp, 1)})
	waitIndex(t, h2, 1, 1)
	if hs[2].count() != 0 {
		t.Fatal("closed transport's handler was called")
	}
}

func TestFaultNetworkClosedSenderStopsInFlight(t *testing.T) {
	n := NewFaultNetwork(1)
	trs, hs := faultHosts(t, n, 1, 2)
	n.SetDelay(20*time.Millisecond, 20*time.Millisecond)
	trs[1].Send([]GroupMessage{trMsg(7, 1, 2, raftpb.MsgApp, 1)})
	if err := trs[1].Close(); err != nil {
		t.Fatal(err)
	}
	trEventually(t, 5*time.Second, "in-flight message dropped", func() bool {
		_, dropped := n.Stats()
		return dropped == 1
	})
	if hs[2].count() != 0 {
		t.Fatal("message from a closed host delivered")
	}
}
