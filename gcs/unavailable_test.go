package gcs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
)

// TestBlobReadsWaitOutAnUnavailableQueue: a receiver that cannot read a
// batch from its sender's queue for a while (the queue's memnode
// unavailable: an election, a partition) delivers it once the memnode
// answers again. Delivery used to give up after 20 tries, about three
// seconds, and evicted the member from a group that still had it.
func TestBlobReadsWaitOutAnUnavailableQueue(t *testing.T) {
	waitOutFailures(t, gcs.SiteBlob)
}

// TestQueueWritesWaitOutAnUnavailableQueue: a sender whose queue writes
// fail for a while (its queue's memnode unavailable) sends once the
// memnode answers again. The sender used to give up after 20 tries and
// end: Multicast failed, then and for the rest of the membership.
func TestQueueWritesWaitOutAnUnavailableQueue(t *testing.T) {
	waitOutFailures(t, gcs.SiteQueue)
}

// waitOutFailures has p0 multicast to p1 while the next 30 steps at site
// fail as unavailable (more than retry's 20), and checks that both
// deliver it, nobody is evicted, and the group goes on.
func waitOutFailures(t *testing.T, site string) {
	e := newEnv(t)
	ms := e.joinAllWith(2, "g", gcs.Config{InlineBytes: -1}) // every batch through a queue
	const fails = 30
	failed, restore := gcs.FailAt(site, fails)
	defer restore()
	sendAll(t, ms[:1], 1, 100)
	deliveredInOrder(t, ms, 1)
	if n := failed(); n != fails {
		t.Fatalf("%d steps at %s failed, want %d: the failpoint missed them", n, site, fails)
	}
	for _, m := range ms {
		m.mu.Lock()
		ev := m.evicted
		m.mu.Unlock()
		if ev != nil {
			t.Fatalf("%s evicted: %+v", m.name, ev)
		}
	}
	sendAll(t, ms, 2, 100)
	deliveredInOrder(t, ms, 5)
}

// TestSenderStopsWhenItsGroupIsGone: a sender that finds the view changed
// reads the group's metadata; when that says the group was deleted
// (Delete takes an empty group only: this member was removed, or left,
// and its slot reclaimed meanwhile), Multicast fails with ErrEvicted. The
// sender used to read again at once, without a pause, until the group
// closed, and Multicast waited for its ctx.
func TestSenderStopsWhenItsGroupIsGone(t *testing.T) {
	t.Cleanup(gcs.SetLinkViewFromDelivery(false)) // the link fails its view compare
	e := newEnv(t)
	ms := e.joinAll(2, "g")
	failed, restore := gcs.FailAtWith(gcs.SiteSenderMeta, 1<<30, fmt.Errorf("failpoint: %w: g was deleted", gcs.ErrNoGroup))
	defer restore()
	e.join(e.node("p2"), "g") // a view change: a sender reads the metadata
	waitUntil(t, 20*time.Second, "p0 in the 3-member view", func() bool {
		v := ms[0].lastView()
		return v != nil && len(v.Members) == 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ms[0].g.Multicast(ctx, []byte("x")); !errors.Is(err, gcs.ErrEvicted) {
		t.Fatalf("multicast after the group was deleted: %v, want ErrEvicted", err)
	}
	if failed() == 0 {
		t.Fatal("the sender did not read the metadata: the failpoint missed it")
	}
}

// removedThenDeleted joins a and b to a group, with b's application
// reading nothing (b's delivery stays at its first View), removes b, has
// a leave (the last member out: it reclaims b's slot and queue too) and
// deletes the group. It returns b, still open.
func (e *env) removedThenDeleted(ctx context.Context) *gcs.Group {
	t := e.t
	t.Helper()
	a := e.join(e.node("a"), "g")
	gb, err := e.node("b").Join(ctx, "g", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a sees b", func() bool { return a.viewSize() == 2 })
	if err := a.g.Remove(ctx, gb.Name()); err != nil {
		t.Fatal(err)
	}
	a.leave()
	reclaimedThenDeleted(t, ctx, e.node("obs"), "g", "a left, b removed")
	return gb
}

// TestSenderOfADeletedGroupStops: a member removed while its delivery was
// stalled (its application read nothing) multicasts after the group was
// emptied and deleted. Its link fails the compare and the header it then
// reads says the group is deleted (ErrNoGroup from the tombstoned
// metadata): Multicast fails with ErrEvicted. The sender used to retry
// that read for as long as the group was open (persist), and Multicast
// waited for its ctx.
func TestSenderOfADeletedGroupStops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gb := newEnv(t).removedThenDeleted(ctx)
	mctx, mcancel := context.WithTimeout(ctx, 10*time.Second)
	defer mcancel()
	if err := gb.Multicast(mctx, []byte("x")); !errors.Is(err, gcs.ErrEvicted) {
		t.Fatalf("multicast of a removed member after its group was deleted: %v, want ErrEvicted", err)
	}
}

// TestDeliveryOfADeletedGroupEndsInEviction: a member removed while its
// application read nothing (its delivery held at its first View) takes
// up its Events after the group was emptied and deleted. What it has not
// read of the log, its removal included, is gone: the header it reads is
// the deleted group's. Its Events must end with *Evicted. Delivery used
// to retry that read every 10 ms for as long as the group was open, and
// the application waited for an event that never came. (With watch data
// on, a watch event can carry the log before it is reclaimed; it is off
// here so that delivery reads the log itself.)
func TestDeliveryOfADeletedGroupEndsInEviction(t *testing.T) {
	defer gcs.SetWatchData(false)()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gb := newEnv(t).removedThenDeleted(ctx)
	evs := eventsUntilClosed(t, gb, 20*time.Second, "b's group was deleted")
	if len(evs) == 0 {
		t.Fatal("b's Events closed without *Evicted")
	}
	if _, ok := evs[len(evs)-1].(*gcs.Evicted); !ok {
		t.Fatalf("b's Events closed without *Evicted: the last was %#v", evs[len(evs)-1])
	}
}

// eventsUntilClosed reads g's Events until the channel closes and returns
// what it read; it fails the test if that takes longer than within (after).
func eventsUntilClosed(t *testing.T, g *gcs.Group, within time.Duration, after string) []gcs.Event {
	t.Helper()
	var evs []gcs.Event
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-g.Events():
			if !ok {
				return evs
			}
			evs = append(evs, ev)
		case <-deadline:
			t.Fatalf("Events still open %v after %s (read %d events)", within, after, len(evs))
		}
	}
}

// TestClientClosedUnderAGroupEndsItsEvents: the client a Node runs on is
// closed while a member runs (the application closed it before the
// Node). No wait brings the client back: Events must close, as when the
// Node closes, and Multicast fail with ErrClosed. Delivery used to read
// again every 10 ms for as long as the group was open, and the
// application waited for an event that never came.
func TestClientClosedUnderAGroupEndsItsEvents(t *testing.T) {
	e := newEnv(t)
	cl := e.client()
	g, err := e.nodeWith("a", gcs.Config{Client: cl}).Join(context.Background(), "g", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ev := <-g.Events(); ev == nil {
		t.Fatal("no first view")
	}
	cl.Close()
	for _, ev := range eventsUntilClosed(t, g, 20*time.Second, "the client was closed") {
		t.Logf("event after the client closed: %#v", ev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Multicast(ctx, []byte("x")); !errors.Is(err, gcs.ErrClosed) {
		t.Fatalf("multicast after the client closed: %v, want ErrClosed", err)
	}
}

// TestBlobReadOfAClosedClientClosesTheGroup: delivery's read of a batch
// from a sender's queue finds the client closed (the application closed it
// under the Node). The member was not removed: its Events must close
// without *Evicted, as a closed Node's do, and Multicast fail with
// ErrClosed. Delivery used to deliver *Evicted ("client closed") from a
// group that still had the member.
func TestBlobReadOfAClosedClientClosesTheGroup(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAllWith(2, "g", gcs.Config{InlineBytes: -1}) // every batch through a queue
	// Only p1 reads p0's batch from the queue (p0 takes its own from memory).
	failed, restore := gcs.FailAtWith(gcs.SiteBlob, 1, &client.Error{Err: client.ErrClosed, Detail: "failpoint"})
	defer restore()
	if err := ms[0].send(1, 100); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ms[1].done:
	case <-time.After(20 * time.Second):
		t.Fatal("p1's Events still open 20 s after its blob read found the client closed")
	}
	if failed() != 1 {
		t.Fatal("the failpoint did not fire")
	}
	ms[1].mu.Lock()
	ev := ms[1].evicted
	ms[1].mu.Unlock()
	if ev != nil {
		t.Fatalf("p1 evicted from a group that still has it: %+v", ev)
	}
	if err := ms[1].g.Multicast(context.Background(), []byte("x")); !errors.Is(err, gcs.ErrClosed) {
		t.Fatalf("multicast after the group closed: %v, want ErrClosed", err)
	}
}

// TestAbandonOfADeletedGroupEnds: a join whose view change has an outcome
// nobody can settle leaves again (abandon), in case its slot was placed.
// When the group was deleted meanwhile (it was empty: this join's change
// never ran), there is nothing to leave. abandon used to take ErrNoGroup
// for a failure and retry every 2 s in the background for five minutes,
// then log at error level that the slot stays.
func TestAbandonOfADeletedGroupEnds(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obs := e.node("obs")
	logs := &syncbuf.Buffer{}
	n, err := gcs.Open(ctx, gcs.Config{ID: "j", Client: e.client(), Logger: zerolog.New(logs).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	defer gcs.SettleGivesUp()()
	fired, restore := gcs.UnknownWithoutCommit("view", func() {
		if err := obs.Delete(ctx, "g"); err != nil {
			t.Errorf("deleting the empty group: %v", err)
		}
	})
	defer restore()
	if _, err := n.Join(ctx, "g", gcs.JoinOptions{}); err == nil || !fired() {
		t.Fatalf("join whose view change cannot be settled: %v (failpoint fired: %v)", err, fired())
	}
	if l := logs.String(); strings.Contains(l, "retrying in the background") {
		t.Fatalf("abandon retries leaving a deleted group:\n%s", l)
	}
}
