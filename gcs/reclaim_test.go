package gcs_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// describe waits for what cond wants of group's metadata, read by n.
func describe(t *testing.T, n *gcs.Node, group, what string, cond func(gcs.GroupInfo) bool) gcs.GroupInfo {
	t.Helper()
	var gi gcs.GroupInfo
	waitUntil(t, 20*time.Second, what, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if gi, err = n.Describe(ctx, group); err != nil {
			t.Fatalf("describe %s: %v", group, err)
		}
		return cond(gi)
	})
	return gi
}

// emptied reports a group with no member slot left, active or retired.
func emptied(gi gcs.GroupInfo) bool { return len(gi.Members)+len(gi.Retired) == 0 }

// reclaimedThenDeleted waits until every member slot of group is reclaimed
// (what: why it should be), then deletes the group through n.
func reclaimedThenDeleted(t *testing.T, ctx context.Context, n *gcs.Node, group, what string) {
	t.Helper()
	describe(t, n, group, what, emptied)
	if err := n.Delete(ctx, group); err != nil {
		t.Fatalf("delete %s: %v", group, err)
	}
}

// blockFree reports whether r is a free block of client.Allocator: the
// allocator's block header (len|state, 16 bytes before the region with
// gcs's 8-byte alignment) says free (2).
func blockFree(t *testing.T, cl *client.Client, r client.Region) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := cl.Exec(ctx, client.NewTx().Read(r.Memnode, r.Addr-16, 8))
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(res.Reads[0])&7 == 2
}

// TestLastLeaverReclaimsTheGroup: removed members' slots and queues are
// reclaimed by the oldest member once the log is trimmed past their
// removal; when the last member leaves there is no oldest member, so the
// last leaver trims the log and reclaims every slot, its own included.
// Before, the queues of a group's last members (16 MiB each by default)
// stayed allocated for good.
func TestLastLeaverReclaimsTheGroup(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(3, "g")
	sendAll(t, ms, 10, 3000) // queued batches as well as inline ones
	deliveredInOrder(t, ms, 30)
	obs := e.node("observer")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := obs.Describe(ctx, "nope"); !errors.Is(err, gcs.ErrNoGroup) {
		t.Fatalf("describe of a group never joined: %v, want ErrNoGroup", err)
	}
	if _, err := obs.Describe(ctx, "nope"); !errors.Is(err, gcs.ErrNoGroup) {
		t.Fatalf("describe created the group: %v", err)
	}
	before := describe(t, obs, "g", "three members", func(gi gcs.GroupInfo) bool { return len(gi.Members) == 3 })
	if before.Msgs != 30 || before.Tail == 0 {
		t.Fatalf("before leaving: msgs %d, log [%d, %d)", before.Msgs, before.Head, before.Tail)
	}
	for _, m := range ms {
		m.leave()
	}
	after := describe(t, obs, "g", "every slot reclaimed", func(gi gcs.GroupInfo) bool {
		return len(gi.Members) == 0 && len(gi.Retired) == 0
	})
	if after.Head != after.Tail {
		t.Errorf("log not trimmed after the last leave: [%d, %d)", after.Head, after.Tail)
	}
	cl := e.client()
	// reclaim frees a queue before it zeroes the slot: every queue is free.
	for _, m := range before.Members {
		waitUntil(t, 10*time.Second, fmt.Sprintf("the queue of %s freed", m.Name), func() bool { return blockFree(t, cl, m.Queue) })
	}
	// The group lives on: a new member joins, sends and delivers.
	m := e.join(e.node("late"), "g")
	sendAll(t, []*member{m}, 3, 100)
	waitUntil(t, 10*time.Second, "the late member delivered", func() bool { return m.delivered() == 3 })
	m.leave()
	e.check()
}

// TestLastLeaverWaitsForSlowerLeaver: the last leaver must not reclaim the
// log under a member that left before it but is still delivering up to
// its leave record (that member would be evicted and lose messages of its
// last view); it reclaims once that member is done.
func TestLastLeaverWaitsForSlowerLeaver(t *testing.T) {
	e := newEnv(t)
	mk := func(id string) *gcs.Node { return e.nodeWith(id, gcs.Config{GCInterval: 5 * time.Millisecond}) }
	a := e.join(mk("a"), "g")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gb, err := mk("b").Join(ctx, "g", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a sees b", func() bool { return a.viewSize() == 2 })
	// b's application stalls: nothing is read from its Events for now.
	if err := a.send(30, 200); err != nil {
		t.Fatal(err)
	}
	left := make(chan error, 1)
	go func() { left <- gb.Leave(ctx) }()
	waitUntil(t, 20*time.Second, "the view without b at a", func() bool { return a.viewSize() == 1 })
	a.leave() // the last member out, while b still has 30 messages to deliver
	obs := mk("observer")
	gi := describe(t, obs, "g", "an empty view", func(gi gcs.GroupInfo) bool { return len(gi.Members) == 0 })
	var bInfo *gcs.MemberInfo
	for i, m := range gi.Retired {
		if m.Name == gb.Name() {
			bInfo = &gi.Retired[i]
		}
	}
	if bInfo == nil {
		t.Fatalf("b's slot was reclaimed while b was still delivering: %+v", gi)
	}
	if gi.Head > bInfo.RemovedAt {
		t.Fatalf("log trimmed to %d, past b's leave record at %d, while b was still delivering", gi.Head, bInfo.RemovedAt)
	}
	n := 0
	var evicted *gcs.Evicted
	for ev := range gb.Events() {
		switch ev := ev.(type) {
		case *gcs.Message:
			n++
		case *gcs.Evicted:
			evicted = ev
		}
	}
	if err := <-left; err != nil {
		t.Errorf("b's leave: %v", err)
	}
	if evicted != nil || n != 30 {
		t.Errorf("b delivered %d messages (evicted: %v), want the 30 ordered before its leave", n, evicted)
	}
	describe(t, obs, "g", "every slot reclaimed once b is done", func(gi gcs.GroupInfo) bool {
		return len(gi.Retired) == 0 && gi.Head == gi.Tail
	})
}

// TestLeaverFinalPositionIsPastItsRecord: the position a leaver publishes
// at the end of its Leave is past its leave record, which it has read:
// the trimmer stops waiting for it only then (it used to publish the
// record's own position, and the trimmer took that for done).
func TestLeaverFinalPositionIsPastItsRecord(t *testing.T) {
	e := newEnv(t)
	// Nobody trims or reclaims meanwhile: b's slot stays to be read.
	mk := func(id string) *gcs.Node { return e.nodeWith(id, gcs.Config{GCInterval: time.Hour}) }
	a, b := e.join(mk("a"), "g"), e.join(mk("b"), "g")
	sendAll(t, []*member{a, b}, 5, 100)
	waitUntil(t, 20*time.Second, "delivered", func() bool { return a.delivered() == 10 && b.delivered() == 10 })
	b.leave()
	gi := describe(t, e.node("obs"), "g", "b removed", func(gi gcs.GroupInfo) bool { return len(gi.Retired) == 1 })
	if r := gi.Retired[0]; !r.Left || r.DeliveredLog <= r.RemovedAt {
		t.Fatalf("b's final position %d, its leave record at %d (left %v): want past the record", r.DeliveredLog, r.RemovedAt, r.Left)
	}
	a.leave()
	e.check()
}

// TestJoinLeaveOfEmptyGroupDoesNotExhaust: one process at a time joining,
// sending and leaving (what `tutti send` does) used to leave its slot and
// queue allocated whenever nobody else was in the group, so the 65th such
// join failed with ErrGroupFull (64 slots, all held by departed members,
// with 1 GiB of queues: the whole gcs range of a memnode).
func TestJoinLeaveOfEmptyGroupDoesNotExhaust(t *testing.T) {
	e := newEnv(t)
	n := e.node("sender")
	const rounds = 80 // > MaxMembers (64), and > 1 GiB of 16 MiB queues
	for i := range rounds {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		g, err := n.Join(ctx, "g", gcs.JoinOptions{})
		if err != nil {
			cancel()
			t.Fatalf("join %d: %v", i, err)
		}
		go func() {
			for range g.Events() {
			}
		}()
		if err := g.Multicast(ctx, []byte("hello")); err != nil {
			t.Fatalf("multicast %d: %v", i, err)
		}
		if err := g.Leave(ctx); err != nil {
			t.Fatalf("leave %d: %v", i, err)
		}
		cancel()
	}
	gi := describe(t, n, "g", "the group's memory reclaimed", func(gi gcs.GroupInfo) bool { return len(gi.Retired) == 0 })
	if gi.Msgs != rounds {
		t.Errorf("%d messages ordered, want %d", gi.Msgs, rounds)
	}
}

// TestGroupsListsEveryGroup: Groups finds every group, whatever its home
// memnode, and nothing else.
func TestGroupsListsEveryGroup(t *testing.T) {
	e := newEnv(t)
	n := e.node("lister")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if gs, err := n.Groups(ctx); err != nil || len(gs) != 0 {
		t.Fatalf("groups of an empty cluster: %+v %v", gs, err)
	}
	want := []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta"}
	homes := map[uint64]bool{}
	for _, name := range want {
		g, err := n.Join(ctx, name, gcs.JoinOptions{})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for range g.Events() {
			}
		}()
		if err := g.Leave(ctx); err != nil {
			t.Fatal(err)
		}
		gi, err := n.Describe(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		homes[gi.Home] = true
	}
	if len(homes) < 2 {
		t.Fatalf("the groups all live on one memnode (%v): pick names that spread", homes)
	}
	gis, err := n.Groups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, gi := range gis {
		got = append(got, gi.Name)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("groups: %q, want %q", got, want)
	}
}

// TestReclaimSurvivesFailedFrees: a removed member's queue is freed after
// its slot was marked (retiredFreeing, the marker in the fence) and before
// the slot is zeroed, so a free that fails (here the first rounds' frees,
// by a failpoint) leaves the marked slot for the next round, which frees
// the queue and zeroes the slot. Before, the slot was zeroed first and the
// queue freed next: a free that failed or took longer than its 2 s bound
// (CI under load) lost the queue for good, 16 MiB each.
func TestReclaimSurvivesFailedFrees(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(2, "g")
	sendAll(t, ms, 5, 3000)
	deliveredInOrder(t, ms, 10)
	obs := e.node("observer")
	before := describe(t, obs, "g", "two members", func(gi gcs.GroupInfo) bool { return len(gi.Members) == 2 })
	defer gcs.FailReclaimFrees(3)()
	for _, m := range ms {
		m.leave()
	}
	describe(t, obs, "g", "every slot reclaimed", emptied)
	cl := e.client()
	for _, m := range before.Members {
		waitUntil(t, 10*time.Second, fmt.Sprintf("the queue of %s freed", m.Name), func() bool { return blockFree(t, cl, m.Queue) })
	}
}

// TestJoinerFreesItsStateRegion: a joiner that restored the state frees
// the region the provider wrote it to, marking its slot consumed; the
// free runs on the region's memnode alone, after the slot was marked, so a
// joiner that stops half-way leaves the slot for its reclaim.
func TestJoinerFreesItsStateRegion(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(2, "g")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := e.client()
	obs := e.node("observer")
	var r client.Region
	waitUntil(t, 10*time.Second, "the joiner's state consumed", func() bool {
		st, reg, err := gcs.StateOf(ctx, obs, "g", ms[1].name)
		if err != nil {
			t.Fatal(err)
		}
		r = reg
		return st == gcs.StateConsumed
	})
	if r.Len < 8 || !blockFree(t, cl, r) {
		t.Fatalf("state region %+v not freed after the joiner consumed it", r)
	}
}

// TestPublishOfUnknownOutcomeKeepsTheRegion: a state provider's
// publication commits but answers ErrUnknownOutcome; before the provider
// settles it, the joiner restores and frees the region, and another
// process allocates the same block. The provider must see the publication
// in the slot (consumed) and keep its hands off the region. Before, it
// compared the slot with what it had written, concluded "not published"
// and freed the block, now another owner's (whose own Free then failed).
func TestPublishOfUnknownOutcomeKeepsTheRegion(t *testing.T) {
	e := newEnv(t)
	a := e.join(e.node("a"), "g")
	if err := a.send(5, 32); err != nil {
		t.Fatal(err)
	}
	obs := e.node("obs")
	var (
		stolen client.Region
		alloc  *client.Allocator
	)
	fired, restore := gcs.UnknownAfterCommit(t, "publish", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var r client.Region
		for {
			st, rr, err := gcs.StateOf(ctx, obs, "g", "b#2")
			if err == nil && st == gcs.StateConsumed {
				r = rr
				break
			}
			if ctx.Err() != nil {
				t.Errorf("the joiner never consumed its state: %v", err)
				return
			}
			time.Sleep(5 * time.Millisecond) // polling a condition, bounded by ctx
		}
		var err error
		alloc, err = client.NewAllocator(e.client(), client.AllocatorConfig{Memnode: r.Memnode, Base: gcs.AllocBase, Limit: gcs.AllocLimit})
		if err != nil {
			t.Error(err)
			return
		}
		if stolen, err = alloc.Alloc(ctx, r.Len); err != nil {
			t.Error(err)
			return
		}
		if stolen.Addr != r.Addr {
			t.Errorf("the freed block %#x was not handed out again (got %#x): the test needs first fit", r.Addr, stolen.Addr)
		}
	})
	defer restore()
	b := e.join(e.node("b"), "g")
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	waitUntil(t, 20*time.Second, "the provider settled its publication", func() bool { return gcs.Provided(a.g) >= 1 })
	if alloc == nil {
		t.FailNow()
	}
	if err := alloc.Free(context.Background(), stolen); err != nil {
		t.Fatalf("the block's new owner cannot free it (the provider freed it): %v", err)
	}
	b.mu.Lock()
	got := len(b.state)
	b.mu.Unlock()
	if got != 5 {
		t.Fatalf("joiner restored %d messages of state, want 5", got)
	}
}

// TestLeaveThatTimesOutStillReclaims: the last member's Leave times out
// before the application drained its Events (its view change committed,
// delivery not finished). What Leave leaves undone — the final position,
// and reclaiming the emptied group's members, its own slot and queue
// included — must happen once delivery ends: when the application drains
// Events later, or calls Leave again. Before, nobody did it: the slot and
// its 16 MiB queue stayed, and Delete said "removed members not yet
// reclaimed" for good.
func TestLeaveThatTimesOutStillReclaims(t *testing.T) {
	for _, how := range []string{"drain", "leave again"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			g, err := e.node("a").Join(ctx, "g", gcs.JoinOptions{})
			if err != nil {
				t.Fatal(err)
			}
			obs := e.node("obs")
			leaveCutShort(t, ctx, g)
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				for range g.Events() {
				}
			}()
			if how == "leave again" {
				if err := g.Leave(ctx); err != nil {
					t.Fatalf("second leave: %v", err)
				}
			}
			<-drained
			reclaimedThenDeleted(t, ctx, obs, "g", "the emptied group's members reclaimed")
		})
	}
}

// leaveCutShort calls g.Leave with a ctx that ends once its view change is
// in (whatever the machine's load), before delivery can finish: nobody
// reads g's Events yet, so delivery waits on the first view.
func leaveCutShort(t *testing.T, ctx context.Context, g *gcs.Group) {
	t.Helper()
	lctx, lcancel := context.WithCancel(ctx)
	go func() {
		defer lcancel()
		for ctx.Err() == nil && !gcs.LeftView(g) {
			time.Sleep(time.Millisecond) // polling a condition, bounded by ctx
		}
	}()
	err := g.Leave(lctx)
	lcancel()
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "delivery not finished") {
		t.Fatalf("leave without draining: %v, want it cut short after its view change", err)
	}
}

// TestSecondLeaveKeepsToItsContext: a Leave cut short after its view change
// leaves the rest (final position, reclaiming the emptied group) to a
// finisher that runs on the Node's context once the application drains
// Events. A second Leave that finds the finisher running waits for it only
// as long as its own ctx allows. Before, it waited for the finisher
// whatever its ctx said.
func TestSecondLeaveKeepsToItsContext(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := e.node("a").Join(ctx, "g", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obs := e.node("obs")
	leaveCutShort(t, ctx, g)
	// The finisher's first step (publishing the final position) commits,
	// then stalls until released.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()
	fired, restore := gcs.UnknownAfterCommit(t, "final", func() {
		close(entered)
		<-release
	})
	defer restore()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range g.Events() {
		}
	}()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the finisher did not start once Events were drained")
	}
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	res := make(chan error, 1)
	go func() { res <- g.Leave(sctx) }()
	select {
	case err := <-res:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second leave while the finisher runs: %v, want its ctx's error", err)
		}
	case <-time.After(10 * time.Second):
		unblock()
		t.Fatal("second leave still waits for the finisher 10 s after its ctx ended")
	}
	unblock()
	<-drained
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	if err := g.Leave(ctx); err != nil {
		t.Fatalf("leave once the finisher is done: %v", err)
	}
	reclaimedThenDeleted(t, ctx, obs, "g", "the emptied group's members reclaimed")
}

// TestAbandonedJoinThatEmptiesTheGroupIsReclaimed: the first joiner of a
// group cannot settle its join (unknown outcome) and abandons the slot it
// may have placed; that leaves the view empty, so the last member's work
// (trim, reclaim its slot and queue) is the abandoner's. Before, nobody did
// it: the slot and queue stayed and Delete refused the group.
func TestAbandonedJoinThatEmptiesTheGroupIsReclaimed(t *testing.T) {
	e := newEnv(t)
	n := e.node("solo")
	restoreSettle := gcs.SettleGivesUp()
	defer restoreSettle()
	fired, restore := gcs.UnknownAfterCommit(t, "view", func() {})
	defer restore()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.Join(ctx, "g", gcs.JoinOptions{}); !errors.Is(err, client.ErrUnknownOutcome) || !fired() {
		t.Fatalf("join with an unsettled outcome: %v (failpoint fired: %v)", err, fired())
	}
	restore()
	restoreSettle()
	obs := e.node("obs")
	reclaimedThenDeleted(t, ctx, obs, "g", "the abandoned slot reclaimed")
}

// TestLinkSettledByOwnDeliveryAfterTrim: a sender's link is lost
// (ErrUnknownOutcome; it did not commit), and before the sender reads back,
// another member links at the same position and every member (the sender
// too: delivery runs apart from it) delivers past it, so head passes the
// position and the ring no longer tells. The sender's own delivery does:
// it never handed over the link's first message, so the link did not
// commit and the sender links again. Before, it gave up (ErrClosed) — seen
// in the randomized test, where chaos delays the read-back while the
// others deliver and trim.
func TestLinkSettledByOwnDeliveryAfterTrim(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(2, "g")
	obs := e.node("obs")
	fired, restore := gcs.UnknownWithoutCommit("link", func() {
		if err := ms[1].send(1, 10); err != nil {
			t.Errorf("the other member's multicast: %v", err)
		}
		describe(t, obs, "g", "head past the lost link's position", func(gi gcs.GroupInfo) bool { return gi.Msgs >= 1 && gi.Head == gi.Tail })
	})
	defer restore()
	if err := ms[0].send(1, 10); err != nil {
		t.Fatalf("multicast settled after the trim: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	sendAll(t, ms, 2, 10)
	deliveredInOrder(t, ms, 6)
	e.leaveAll(ms)
}

// TestJoinSettledBySlotAfterTrim: a join's request is lost (it did not
// commit); before the joiner reads back, another process joins at the same
// position and the members deliver past it and trim, so the ring no longer
// tells. A placed joiner's slot would have held head at its record, so the
// slot tells: not placed, and the joiner joins again (with a new queue).
// Before, Join failed with ErrUnknownOutcome — seen in the randomized test.
func TestJoinSettledBySlotAfterTrim(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(1, "g")
	obs := e.node("obs")
	var other *member
	fired, restore := gcs.UnknownWithoutCommit("view", func() {
		other = e.join(e.node("other"), "g")
		describe(t, obs, "g", "head past the lost join's position", func(gi gcs.GroupInfo) bool { return len(gi.Members) == 2 && gi.Head == gi.Tail })
	})
	defer restore()
	late := e.join(e.node("late"), "g")
	if !fired() || other == nil {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	all := []*member{ms[0], other, late}
	sendAll(t, all, 2, 10)
	deliveredInOrder(t, all, 6)
	e.leaveAll(all)
}

// withUndrained joins group g with one member that delivers (stay) and one,
// g, whose Events nobody reads yet: its delivery waits on the first view.
func (e *env) withUndrained(ctx context.Context) (stay []*member, g *gcs.Group) {
	e.t.Helper()
	stay = e.joinAll(1, "g")
	g, err := e.node("a").Join(ctx, "g", gcs.JoinOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return stay, g
}

// TestLeaveOfUnsettledOutcomeEndsWithoutEviction: a Leave whose view change
// committed but whose outcome it could not settle returns that error (and
// resets 'leaving'); the member is out nonetheless. A Multicast made
// before delivery reaches the leave record finds the slot retired by the
// member's own Leave (retiredLeft), and delivery, reaching the record
// after Leave returned, ends there as after any Leave: nothing says
// ErrEvicted or *Evicted, later Multicasts say ErrNotMember, and Leave
// again returns nil. Before, delivery took the member's own removal for an
// eviction (*Evicted, reason "left"), and so did the sender (ErrEvicted).
func TestLeaveOfUnsettledOutcomeEndsWithoutEviction(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stay, g := e.withUndrained(ctx)
	restoreSettle := gcs.SettleGivesUp()
	defer restoreSettle()
	fired, restore := gcs.UnknownAfterCommit(t, "view", func() {})
	defer restore()
	if err := g.Leave(ctx); !errors.Is(err, client.ErrUnknownOutcome) || !fired() {
		t.Fatalf("leave with an unsettled outcome: %v (failpoint fired: %v)", err, fired())
	}
	restore()
	restoreSettle()
	mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
	err := g.Multicast(mctx, []byte("x"))
	mcancel()
	if errors.Is(err, gcs.ErrEvicted) {
		t.Errorf("multicast after a committed, unsettled leave: %v, want ErrNotMember", err)
	}
	for ev := range g.Events() {
		if ev, ok := ev.(*gcs.Evicted); ok {
			t.Fatalf("the leaver was told it was evicted: %+v", ev)
		}
	}
	if err := g.Multicast(ctx, []byte("y")); !errors.Is(err, gcs.ErrNotMember) {
		t.Errorf("multicast after leaving: %v, want ErrNotMember", err)
	}
	if err := g.Leave(ctx); err != nil {
		t.Errorf("leave again: %v", err)
	}
	waitUntil(t, 10*time.Second, "the leaver out of the view", func() bool {
		v := stay[0].lastView()
		return v != nil && len(v.Members) == 1
	})
	e.leaveAll(stay)
}

// TestLeaveAfterRemovalReportsEviction: a member removed by another
// (Group.Remove) calls Leave before its delivery reached the removal. Its
// Leave removes nothing (it is out already), yet 'leaving' made delivery
// take the removal for the member's own leave: no *Evicted, Leave nil.
func TestLeaveAfterRemovalReportsEviction(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stay, g := e.withUndrained(ctx)
	if err := stay[0].g.Remove(ctx, g.Name()); err != nil {
		t.Fatal(err)
	}
	evicted := make(chan bool, 1)
	go func() {
		ev := false
		for e := range g.Events() {
			if _, ok := e.(*gcs.Evicted); ok {
				ev = true
			}
		}
		evicted <- ev
	}()
	lerr := g.Leave(ctx)
	if !<-evicted {
		t.Errorf("a member removed by another was not told it was evicted (Leave: %v)", lerr)
	}
	if !errors.Is(lerr, gcs.ErrEvicted) {
		t.Errorf("leave of a removed member: %v, want ErrEvicted", lerr)
	}
	e.leaveAll(stay)
}
