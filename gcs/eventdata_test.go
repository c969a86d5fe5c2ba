package gcs_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode"
)

// Members that did not send deliver from the data the watch events carry
// instead of reading the order log, inline batches and queued ones (whose
// blobs they still read) alike, in the same order as the sender.
func TestDeliveryFromWatchData(t *testing.T) {
	testDeliveryWatch(t, true)
}

// Without data in the events, the same exchange is delivered by reading
// the order log after each notification.
func TestDeliveryWithoutWatchData(t *testing.T) {
	t.Cleanup(gcs.SetWatchData(false))
	testDeliveryWatch(t, false)
}

func testDeliveryWatch(t *testing.T, withData bool) {
	e := newEnv(t)
	const members, per = 3, 30
	ms := e.joinAll(members, "g")
	before, beforeRd := make([]int64, members), make([]int64, members)
	for i, m := range ms {
		before[i], beforeRd[i] = gcs.DeliveryCounts(m.g)
	}
	// One sender at a time, one message per link: the others learn of
	// each link from a watch event.
	if err := ms[0].send(per/2, 64); err != nil {
		t.Fatal(err)
	}
	if err := ms[1].send(per/2, 3000); err != nil {
		t.Fatal(err)
	}
	deliveredInOrder(t, ms, per)
	for i, m := range ms {
		ev, rd := gcs.DeliveryCounts(m.g)
		t.Logf("%s: %d deliveries from watch data, %d log reads", m.name, ev-before[i], rd-beforeRd[i])
	}
	// ms[2] sent nothing: it learns of every link from a watch event (or
	// from the 100 ms backup poll, if it fires first).
	ev, rd := gcs.DeliveryCounts(ms[2].g)
	switch {
	case withData && ev-before[2] < per/2:
		t.Fatalf("%s delivered %d times from watch data, want most of %d links", ms[2].name, ev-before[2], per)
	case !withData && (ev != 0 || rd-beforeRd[2] == 0):
		t.Fatalf("%s without data: %d deliveries from watch data, %d reads", ms[2].name, ev, rd-beforeRd[2])
	}
	e.leaveAll(ms)
}

// Links of several members never conflict: each appends its records
// at the tail the home memnode has when it applies the link (gcs/doc.go,
// "Mechanism"), so members that link at the same time all commit at the
// first attempt. With links that compared the tail, a few rounds of
// three concurrent senders lost dozens of races.
func TestConcurrentLinksNeverConflict(t *testing.T) {
	e := newEnv(t)
	const members, rounds = 3, 10
	ms := e.joinAll(members, "g")
	var senders []*member // four goroutines per member
	for _, m := range ms {
		senders = append(senders, m, m, m, m)
	}
	// A first message each: a sender's first link after the joins that
	// followed its own fails its view compare once (legitimately).
	sendAll(t, ms, 1, 64)
	sent := len(ms)
	before := make([]gcs.SendStats, len(ms))
	for i, m := range ms {
		before[i] = m.g.SendStats()
	}
	for range rounds {
		sendAll(t, senders, 10, 64)
		sent += len(senders) * 10
	}
	deliveredInOrder(t, ms, sent)
	var links, lost uint64
	for i, m := range ms {
		st := m.g.SendStats()
		st.Links, st.LostRaces = st.Links-before[i].Links, st.LostRaces-before[i].LostRaces
		t.Logf("%s: %d links, %d lost races", m.name, st.Links, st.LostRaces)
		links, lost = links+st.Links, lost+st.LostRaces
	}
	if lost != 0 {
		t.Fatalf("%d of %d links failed their compare with nobody joining or leaving", lost, links+lost)
	}
	if links < uint64(members*rounds) {
		t.Fatalf("%d links for %d messages in %d rounds of %d senders", links, sent, rounds, members)
	}
}

// A member that sends publishes its delivered position with its links
// (a write in the link's minitransaction), so its housekeeping rounds
// need no Raft entry of their own for it while it links: before, almost
// every round of a busy member published (a fifth of the Raft entries of
// three members sending 100/s each). Once the sends stop, housekeeping
// publishes again, and every member's Stability covers everything.
func TestLinksPublishTheDeliveredPosition(t *testing.T) {
	e := newEnv(t)
	const members, per = 3, 400
	ms := e.joinAll(members, "g")
	sendAll(t, ms, 1, 64)
	count := func() (rounds, pubs int64) {
		for _, m := range ms {
			rounds, pubs = rounds+gcs.HousekeepingRounds(m.g), pubs+gcs.HousekeepingPublishes(m.g)
		}
		return rounds, pubs
	}
	r0, p0 := count()
	sendAll(t, ms, per, 64)
	r1, p1 := count()
	rounds, pubs := r1-r0, p1-p0
	t.Logf("%d messages: %d housekeeping rounds, %d published", members*per, rounds, pubs)
	if rounds < 6 {
		t.Fatalf("only %d housekeeping rounds while %d messages were sent: nothing measured", rounds, members*per)
	}
	if pubs*2 > rounds {
		t.Fatalf("%d of %d housekeeping rounds published while every member linked", pubs, rounds)
	}
	total := uint64(members * (per + 1))
	deliveredInOrder(t, ms, int(total))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		done := true
		for _, m := range ms {
			done = done && m.g.Stability().Pos >= total
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stability did not cover the %d messages within 10 s", total)
		}
	}
	e.leaveAll(ms)
}

// TestIdleGroupBacksOff: a group in which nothing happens costs its
// members about one metadata read and one backup poll of the order log a
// second, not twenty and ten (gcs/doc.go, "Idle groups"). Traffic brings
// both back to their short periods.
func TestIdleGroupBacksOff(t *testing.T) {
	e := newEnv(t)
	const members = 3
	ms := e.joinAll(members, "g")
	if err := ms[0].send(1, 64); err != nil {
		t.Fatal(err)
	}
	deliveredInOrder(t, ms, 1)
	count := func() (rounds, reads []int64) {
		for _, m := range ms {
			_, rd := gcs.DeliveryCounts(m.g)
			rounds, reads = append(rounds, gcs.HousekeepingRounds(m.g)), append(reads, rd)
		}
		return rounds, reads
	}
	// Windows of 3 s until one shows every member at most 8 rounds and 8
	// reads (about one a second once backed off; the first window may
	// include the backoff from 50 and 100 ms). Before, every window
	// showed about 60 rounds and 30 reads per member.
	const window = 3 * time.Second
	var last string
	for deadline := time.Now().Add(20 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatalf("no %v window of an idle group with at most 8 housekeeping rounds and 8 log reads per member; last: %s", window, last)
		}
		r0, d0 := count()
		time.Sleep(window) // the window measured
		r1, d1 := count()
		ok := true
		last = ""
		for i, m := range ms {
			r, d := r1[i]-r0[i], d1[i]-d0[i]
			last += fmt.Sprintf("%s %d rounds %d reads; ", m.name, r, d)
			ok = ok && r <= 8 && d <= 8
		}
		if ok {
			t.Logf("idle for %v: %s", window, last)
			break
		}
	}
	// Traffic after idleness is delivered, and published: every member's
	// stability covers it.
	if err := ms[1].send(5, 64); err != nil {
		t.Fatal(err)
	}
	deliveredInOrder(t, ms, 6)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		done := true
		for _, m := range ms {
			done = done && m.g.Stability().Pos >= 6
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stability did not cover the six messages within 10 s")
		}
	}
	e.leaveAll(ms)
}

// TestTrimmerWatchesALaggard: while a member has not delivered what is
// ordered, the oldest member's housekeeping stays at GCInterval, however
// little of the order log is in use. That member publishes its progress
// without poking the trimmer, and a sender whose queue is full waits for
// the trim that follows (blobs stay until head passes their references,
// a few dozen bytes of log each: a full 16 MiB queue holds far less than
// a quarter of the 1 MiB log). Before, the trimmer backed off to
// IdleGCInterval as soon as nothing changed for two rounds, so once the
// laggard caught up the sender waited up to IdleGCInterval more (here an
// hour: in 10 s, about 12 rounds instead of hundreds).
func TestTrimmerWatchesALaggard(t *testing.T) {
	e := newEnv(t)
	cfg := gcs.Config{GCInterval: 5 * time.Millisecond, IdleGCInterval: time.Hour,
		QueueCapacity: 32 << 10, MaxBatchBytes: 8 << 10, InlineBytes: -1}
	a := e.join(e.nodeWith("a", cfg), "g") // the oldest: the trimmer, and the sender
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	gb, err := e.nodeWith("b", cfg).Join(ctx, "g", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// b's application takes nothing until released: its delivery waits
	// at its first view, its published position below the tail.
	release := make(chan struct{})
	var bGot atomic.Int64
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		<-release
		for ev := range gb.Events() {
			if _, ok := ev.(*gcs.Message); ok {
				bGot.Add(1)
			}
		}
	}()
	// More than a's queue holds: a's Multicasts wait for room that only
	// a trim past b's position gives.
	const count = 100
	sendErr := make(chan error, 1)
	go func() { sendErr <- a.send(count, 1000) }()
	waitUntil(t, 20*time.Second, "a's first messages delivered", func() bool { return a.delivered() >= 5 })
	r0 := gcs.HousekeepingRounds(a.g)
	if !pollFor(10*time.Second, func() bool { return gcs.HousekeepingRounds(a.g) >= r0+100 }) {
		t.Fatalf("the trimmer ran %d housekeeping rounds in 10 s while b lagged, want 100 (GCInterval 5 ms)", gcs.HousekeepingRounds(a.g)-r0)
	}
	if a.delivered() >= count {
		t.Fatalf("a delivered all %d messages while b held its queue", count)
	}
	close(release)
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "b delivered everything", func() bool { return bGot.Load() == count })
	a.leave()
	if err := gb.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	<-bDone
}

// A link carries two relocations per record, and memnodes refuse a
// minitransaction with more relocations than their item limit: with many
// batches ready at once (one message per batch here) a link must carry at
// most half the cluster's MaxItems records, or the memnode refuses it as
// invalid and the sender ends. Before, with MaxItems 16, the first link of
// more than 8 batches ended the group's sender.
func TestLinksFitTheClustersItemLimit(t *testing.T) {
	e := newEnvWith(t, cluster.Config{Memnode: memnode.Config{MaxItems: 16}})
	n := e.nodeWith("p0", gcs.Config{MaxBatch: 1})
	m := e.join(n, "g")
	var senders []*member // 24 goroutines: many one-message batches wait for each link
	for range 24 {
		senders = append(senders, m)
	}
	sendAll(t, senders, 5, 64)
	deliveredInOrder(t, []*member{m}, 24*5)
	if st := m.g.SendStats(); st.Links >= 24*5 {
		t.Fatalf("%d links for %d messages: no link carried several batches, nothing tested", st.Links, 24*5)
	}
	e.leaveAll([]*member{m})
}
