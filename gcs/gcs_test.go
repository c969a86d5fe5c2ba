package gcs_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/internal/leakcheck"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/vscheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

type env struct {
	t    *testing.T
	c    *cluster.Cluster
	hist vscheck.History
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, cluster.Config{})
}

// newEnvWith is newEnv on a cluster configured by cfg (NoSync and DataDir
// are set here).
func newEnvWith(t *testing.T, cfg cluster.Config) *env {
	t.Helper()
	cfg.NoSync, cfg.DataDir = true, t.TempDir()
	c, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, c: c}
}

// client returns a client of the test cluster, closed with the test.
func (e *env) client() *client.Client {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: e.c.Seeds()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl
}

// transitClient returns a client of the test cluster whose transport can
// take one request aside (cluster.Transit), closed with the test.
func (e *env) transitClient() (*client.Client, *cluster.Transit) {
	e.t.Helper()
	transit := cluster.NewTransit()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: e.c.Seeds(), DialOptions: []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()), transit.DialOption()}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl, transit
}

func (e *env) node(id string) *gcs.Node {
	e.t.Helper()
	return e.nodeWith(id, gcs.Config{})
}

func (e *env) check() {
	e.t.Helper()
	vs := vscheck.Check(&e.hist, vscheck.Options{Complete: true})
	for _, v := range vs {
		e.t.Errorf("violation: %v", v)
	}
}

// member consumes one Group's events into the history and a local state
// (the payloads applied, in order).
type member struct {
	e    *env
	g    *gcs.Group
	name string

	// sendMu orders the goroutines sending on this member from taking a
	// seq until gcs has queued the message, so the seq recorded is the
	// one gcs gives it.
	sendMu sync.Mutex

	mu        sync.Mutex
	ended     bool
	installed chan struct{} // closed at the first view
	seq       uint64
	views     []*gcs.View
	msgs      []*gcs.Message
	state     []string // applied payloads (restored from a snapshot first)
	evicted   *gcs.Evicted
	done      chan struct{}
}

func (e *env) join(n *gcs.Node, group string) *member {
	e.t.Helper()
	m := &member{e: e, installed: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g, err := n.Join(ctx, group, gcs.JoinOptions{
		Snapshot: func() ([]byte, error) {
			m.mu.Lock()
			defer m.mu.Unlock()
			return []byte(strings.Join(m.state, "\n")), nil
		},
		Restore: func(b []byte) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			if len(b) > 0 {
				m.state = strings.Split(string(b), "\n")
			}
			return nil
		},
	})
	if err != nil {
		e.t.Fatalf("join: %v", err)
	}
	m.g, m.name = g, g.Name()
	go m.consume()
	return m
}

func (m *member) add(ev vscheck.Event) {
	ev.Member = m.name
	m.e.hist.Add(ev)
}

func (m *member) consume() {
	defer close(m.done)
	first := true
	for ev := range m.g.Events() {
		m.mu.Lock()
		switch ev := ev.(type) {
		case *gcs.View:
			mem := append([]string(nil), ev.Members...)
			sort.Strings(mem)
			m.add(vscheck.Event{Kind: vscheck.Install, View: ev.ID, Members: mem})
			m.views = append(m.views, ev)
		case *gcs.Message:
			m.add(vscheck.Event{Kind: vscheck.Deliver, View: ev.View, Sender: ev.Sender, Seq: ev.Seq, Payload: string(ev.Payload)})
			m.msgs = append(m.msgs, ev)
			m.state = append(m.state, string(ev.Payload))
		case *gcs.Evicted:
			m.add(vscheck.Event{Kind: vscheck.Evict, View: ev.View})
			m.evicted = ev
			m.ended = true
		}
		m.mu.Unlock()
		if first {
			close(m.installed)
			first = false
		}
	}
}

// send multicasts count messages sequentially.
func (m *member) send(count, size int) error {
	<-m.installed
	for i := 0; i < count; i++ {
		m.sendMu.Lock()
		m.mu.Lock()
		if m.ended {
			m.mu.Unlock()
			m.sendMu.Unlock()
			return gcs.ErrEvicted
		}
		m.seq++
		p := fmt.Sprintf("%s/%d/", m.name, m.seq)
		if size > len(p) {
			p += strings.Repeat("x", size-len(p))
		}
		m.add(vscheck.Event{Kind: vscheck.Send, Sender: m.name, Seq: m.seq, Payload: p})
		m.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := m.g.MulticastQueued(ctx, []byte(p), m.sendMu.Unlock)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// leaveAll has every member of ms leave, then checks the whole history.
func (e *env) leaveAll(ms []*member) {
	e.t.Helper()
	for _, m := range ms {
		m.leave()
	}
	e.check()
}

func (m *member) leave() {
	m.e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.g.Leave(ctx); err != nil {
		m.e.t.Fatalf("leave %s: %v", m.name, err)
	}
	<-m.done
	m.mu.Lock()
	m.ended = true
	m.add(vscheck.Event{Kind: vscheck.Leave})
	m.mu.Unlock()
}

func (m *member) crash(n *gcs.Node) {
	n.Close()
	<-m.done
	m.mu.Lock()
	m.ended = true
	m.add(vscheck.Event{Kind: vscheck.Crash})
	m.mu.Unlock()
}

func (m *member) delivered() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.msgs)
}

// viewSize returns the number of members of m's last view, 0 before its
// first: Join returns before consume has taken the first view.
func (m *member) viewSize() int {
	if v := m.lastView(); v != nil {
		return len(v.Members)
	}
	return 0
}

func (m *member) lastView() *gcs.View {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.views) == 0 {
		return nil
	}
	return m.views[len(m.views)-1]
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// sendAll runs send on every member concurrently.
// joinAll joins n members p0..p(n-1), each on a node of its own, to group
// and waits until each has installed the n-member view.
func (e *env) joinAll(n int, group string) []*member {
	e.t.Helper()
	return e.joinAllWith(n, group, gcs.Config{})
}

// joinAllWith is joinAll with nodes configured by cfg.
func (e *env) joinAllWith(n int, group string, cfg gcs.Config) []*member {
	e.t.Helper()
	var ms []*member
	for i := 0; i < n; i++ {
		ms = append(ms, e.join(e.nodeWith(fmt.Sprintf("p%d", i), cfg), group))
	}
	waitUntil(e.t, 20*time.Second, fmt.Sprintf("everyone in the %d-member view", n), func() bool {
		for _, m := range ms {
			if v := m.lastView(); v == nil || len(v.Members) != n {
				return false
			}
		}
		return true
	})
	return ms
}

// sendAll has every member of ms send count messages of size bytes, all
// members at once (a member listed k times sends from k goroutines).
func sendAll(t *testing.T, ms []*member, count, size int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.send(count, size)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: multicast: %v", ms[i].name, err)
		}
	}
}

// deliveredInOrder waits until every member of ms delivered n messages and
// checks that they delivered them in the same order.
func deliveredInOrder(t *testing.T, ms []*member, n int) {
	t.Helper()
	waitUntil(t, 30*time.Second, "all messages delivered", func() bool {
		for _, m := range ms {
			if m.delivered() < n {
				return false
			}
		}
		return true
	})
	for _, m := range ms[1:] {
		sameOrder(t, ms[0], m)
	}
}

func sameOrder(t *testing.T, a, b *member) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	// b may have joined later: compare from b's first message.
	if len(b.msgs) == 0 {
		return
	}
	start := -1
	for i, m := range a.msgs {
		if m.Pos == b.msgs[0].Pos {
			start = i
		}
	}
	if start < 0 {
		t.Fatalf("%s never delivered %s's first message pos %d", a.name, b.name, b.msgs[0].Pos)
	}
	for i, m := range b.msgs {
		if start+i >= len(a.msgs) {
			break
		}
		x := a.msgs[start+i]
		if x.Pos != m.Pos || x.Sender != m.Sender || x.Seq != m.Seq || !bytes.Equal(x.Payload, m.Payload) {
			t.Fatalf("order differs at %d: %s has %s/%d@%d, %s has %s/%d@%d", i, a.name, x.Sender, x.Seq, x.Pos, b.name, m.Sender, m.Seq, m.Pos)
		}
	}
}

func TestConcurrentMulticastTotalOrder(t *testing.T) {
	e := newEnv(t)
	const members, per = 4, 40
	ms := e.joinAll(members, "g")
	// Small messages go inline in the order log, large ones through the
	// senders' queues.
	sendAll(t, ms, per/2, 64)
	sendAll(t, ms, per/2, 3000)
	deliveredInOrder(t, ms, members*per)
	waitUntil(t, 10*time.Second, "stability", func() bool { return ms[0].g.Stability().Pos >= uint64(members*per) })
	e.leaveAll(ms)
}

func TestJoinMidStreamWithStateTransfer(t *testing.T) {
	e := newEnv(t)
	a := e.join(e.node("a"), "g")
	b := e.join(e.node("b"), "g")
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = a.send(80, 32) }()
	go func() { defer wg.Done(); _ = b.send(80, 2000) }()
	waitUntil(t, 20*time.Second, "some messages", func() bool { return a.delivered() >= 20 })
	c := e.join(e.node("c"), "g")
	if err := c.send(10, 16); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	waitUntil(t, 20*time.Second, "all delivered", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return a.delivered() == 170 && b.delivered() == 170 && len(c.state) == 170
	})
	a.mu.Lock()
	c.mu.Lock()
	if strings.Join(a.state, ",") != strings.Join(c.state, ",") {
		t.Errorf("joiner state differs: %d vs %d entries", len(c.state), len(a.state))
	}
	if c.msgs[0].Pos <= 1 {
		t.Errorf("joiner should start mid-stream, first pos %d", c.msgs[0].Pos)
	}
	c.mu.Unlock()
	a.mu.Unlock()
	sameOrder(t, a, c)
	for _, m := range []*member{a, b, c} {
		m.leave()
	}
	e.check()
}

func TestLeaveAndCrashRemoval(t *testing.T) {
	e := newEnv(t)
	na, nb, nc := e.node("a"), e.node("b"), e.node("c")
	a, b, c := e.join(na, "g"), e.join(nb, "g"), e.join(nc, "g")
	sendAll(t, []*member{a, b, c}, 10, 100)
	b.leave()
	if err := b.g.Multicast(context.Background(), []byte("late")); !errors.Is(err, gcs.ErrNotMember) {
		t.Fatalf("multicast after leave: %v, want ErrNotMember", err)
	}
	c.crash(nc)
	sendAll(t, []*member{a}, 5, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.g.Remove(ctx, c.name); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "view without c", func() bool {
		v := a.lastView()
		return len(v.Members) == 1 && v.Members[0] == a.name
	})
	sendAll(t, []*member{a}, 5, 100)
	waitUntil(t, 10*time.Second, "a delivered all", func() bool { return a.delivered() == 40 })
	a.leave()
	e.check()
}

func TestEvictionAndRejoin(t *testing.T) {
	e := newEnv(t)
	na, nb := e.node("a"), e.node("b")
	a, b := e.join(na, "g"), e.join(nb, "g")
	sendAll(t, []*member{a, b}, 5, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.g.Remove(ctx, b.name); err != nil {
		t.Fatal(err)
	}
	<-b.done
	if b.evicted == nil {
		t.Fatal("b was not told it was evicted")
	}
	if err := b.g.Multicast(ctx, []byte("x")); !errors.Is(err, gcs.ErrEvicted) {
		t.Fatalf("multicast after eviction: %v, want ErrEvicted", err)
	}
	b2 := e.join(nb, "g")
	if b2.name == b.name {
		t.Fatalf("rejoin kept the name %s", b.name)
	}
	sendAll(t, []*member{a, b2}, 5, 10)
	waitUntil(t, 10*time.Second, "delivered", func() bool { return a.delivered() == 20 && b2.delivered() == 10 })
	sameOrder(t, a, b2)
	a.leave()
	b2.leave()
	e.check()
}

// TestLogWrapsAndIsTrimmed sends far more than the order log and queues
// hold: delivery, trimming and queue reuse must keep up.
func TestLogWrapsAndIsTrimmed(t *testing.T) {
	e := newEnv(t)
	mk := func(id string) *gcs.Node {
		return e.nodeWith(id, gcs.Config{LogCapacity: 8192, QueueCapacity: 16 << 10, MaxBatchBytes: 4 << 10,
			GCInterval: 5 * time.Millisecond})
	}
	a, b := e.join(mk("a"), "small"), e.join(mk("b"), "small")
	sendAll(t, []*member{a, b}, 80, 700)
	waitUntil(t, 30*time.Second, "delivered", func() bool { return a.delivered() == 160 && b.delivered() == 160 })
	sameOrder(t, a, b)
	a.leave()
	b.leave()
	e.check()
}

var _ = binary.LittleEndian

// TestLinkOfUnknownOutcomeOrderedOnce: a link commits but its sender hears
// ErrUnknownOutcome, and its first reads to settle it fail too (the home
// memnode unavailable to it for a moment). The sender must settle before
// linking anything again: every message is delivered once, in one order.
// Before, a failed read-back sent the sender round again, and it linked
// the committed batch a second time (delivered twice by every member).
func TestLinkOfUnknownOutcomeOrderedOnce(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(2, "g")
	restoreReads := gcs.FailSettleReads(3)
	defer restoreReads()
	fired, restore := gcs.UnknownAfterCommit(t, "link", func() {})
	defer restore()
	e.linkOnceThrough(ms, fired, restore)
}

// linkOnceThrough multicasts one message from ms[0] (two members) through
// a failpoint on its link, which must fire, then more from every member
// without it, and checks that each member delivered everything once, in
// one order.
func (e *env) linkOnceThrough(ms []*member, fired func() bool, restore func()) {
	t := e.t
	t.Helper()
	if err := ms[0].send(1, 10); err != nil {
		t.Fatalf("multicast whose link's outcome was unknown: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	sendAll(t, ms, 3, 10)
	deliveredInOrder(t, ms, 7)
	e.leaveAll(ms) // no duplicates, same order, everything sent delivered
}

// TestLinkPendingWhenSettledIsOrderedOnce: a link's answer is lost while
// the home memnode's leader has it appended, not yet committed (its
// followers slow to persist). A read (ReadIndex) does not wait for it:
// settled by a read, the sender took the link for not committed, and
// linked the batch again once it had committed: every member delivered it
// twice. The settling read is now a logged step, ordered after the link.
// The lost answer names the link's attempt, as the client's does, so the
// settling step also fences it if it was still on its way to the leader
// when the first append was held.
func TestLinkPendingWhenSettledIsOrderedOnce(t *testing.T) {
	faults := cluster.NewFaults()
	e := newEnvWith(t, cluster.Config{WrapTransport: faults.Wrap})
	// No housekeeping meanwhile (it writes to the home memnode too): the
	// first append held is the link's, so the failpoint reports the
	// outcome unknown only once the leader has the link in its log. (A
	// link still on its way to the leader: TestLinkInTransitWhenSettled-
	// IsOrderedOnce.)
	ms, transit := e.joinPairThroughTransit("g", gcs.Config{GCInterval: time.Hour})
	gi := describe(t, e.node("obs"), "g", "the group", func(gcs.GroupInfo) bool { return true })
	reads := gcs.SettleReads()
	fired, restore := gcs.UnknownWhilePending("link", transit, gi.Home, func() bool { return faults.HeldAppends() > 0 })
	defer restore()
	faults.HoldAppends(gi.Home)
	defer faults.ReleaseAppends()
	// Release the appends once the sender's settling read returned (a
	// read does not wait for them) or, as a logged one waits for them,
	// after a second.
	go func() {
		for deadline := time.Now().Add(time.Second); gcs.SettleReads() == reads && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond) // polling a condition, bounded
		}
		faults.ReleaseAppends()
	}()
	e.linkOnceThrough(ms, fired, restore)
	if _, ok := transit.Held(); !ok {
		t.Fatal("the link's attempt was not recorded on its way")
	}
}

// joinPairThroughTransit joins two members to group with cfg's tunables,
// the first (p0) on a client whose transport goes through the returned
// Transit (transitClient), the second (p1) on a client of its own, and
// waits until both are in the view.
func (e *env) joinPairThroughTransit(group string, cfg gcs.Config) ([]*member, *cluster.Transit) {
	e.t.Helper()
	cl, transit := e.transitClient()
	c0 := cfg
	c0.Client = cl
	ms := []*member{e.join(e.nodeWith("p0", c0), group), e.join(e.nodeWith("p1", cfg), group)}
	waitUntil(e.t, 20*time.Second, "both in the view", func() bool {
		v0, v1 := ms[0].lastView(), ms[1].lastView()
		return v0 != nil && v1 != nil && len(v0.Members) == 2 && len(v1.Members) == 2
	})
	return ms, transit
}

// TestJoinOfUnsettledOutcomeLeavesNoGhost: a join's view change commits
// but answers ErrUnknownOutcome and cannot be settled. Join fails, and the
// slot it may have placed must not stay in the view: a member nobody runs
// pins the log (senders block once it is full) and may be named state
// provider. Before, the ghost stayed in every later view; now Join leaves
// it, and the next Join from the same node takes another name.
func TestJoinOfUnsettledOutcomeLeavesNoGhost(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(1, "g")
	n := e.node("ghost")
	restoreSettle := gcs.SettleGivesUp()
	defer restoreSettle()
	fired, restore := gcs.UnknownAfterCommit(t, "view", func() {})
	defer restore()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := n.Join(ctx, "g", gcs.JoinOptions{}); !errors.Is(err, client.ErrUnknownOutcome) {
		t.Fatalf("join with an unsettled outcome: %v, want ErrUnknownOutcome", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	restoreSettle()
	waitUntil(t, 10*time.Second, "the ghost left the view", func() bool {
		v := ms[0].lastView()
		return v != nil && len(v.Members) == 1
	})
	gi, err := n.Describe(ctx, "g")
	if err != nil || len(gi.Members) != 1 {
		t.Fatalf("describe: %+v %v", gi.Members, err)
	}
	again := e.join(n, "g")
	if again.name == "ghost#2" {
		t.Fatalf("the second join reused the unsettled one's name %s", again.name)
	}
	sendAll(t, []*member{ms[0], again}, 2, 10)
	deliveredInOrder(t, []*member{ms[0], again}, 4)
	e.leaveAll([]*member{ms[0], again})
}

// TestJoinOfUnknownOutcomeSettles: a join's view change commits but
// answers ErrUnknownOutcome and the first reads to settle it fail; the
// joiner keeps reading until it knows, and the join succeeds.
func TestJoinOfUnknownOutcomeSettles(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(1, "g")
	restoreReads := gcs.FailSettleReads(3)
	defer restoreReads()
	fired, restore := gcs.UnknownAfterCommit(t, "view", func() {})
	defer restore()
	m := e.join(e.node("late"), "g")
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	sendAll(t, []*member{ms[0], m}, 2, 10)
	deliveredInOrder(t, []*member{ms[0], m}, 4)
	e.leaveAll([]*member{ms[0], m})
}

// TestLeaveAfterTheSenderFailed: a member whose sender ended on its own (a
// link whose outcome could not be settled: it must not link again) can no
// longer multicast, but it is still in the view and must be able to leave.
// Before, Leave returned the sender's error and the member stayed, pinning
// the log.
func TestLeaveAfterTheSenderFailed(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(2, "g")
	restoreSettle := gcs.SettleGivesUp()
	defer restoreSettle()
	fired, restore := gcs.UnknownAfterCommit(t, "link", func() {})
	defer restore()
	err := ms[0].send(1, 10)
	if !errors.Is(err, gcs.ErrClosed) || !fired() {
		t.Fatalf("multicast whose link cannot be settled: %v (failpoint fired: %v), want ErrClosed", err, fired())
	}
	restore()
	restoreSettle()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ms[0].g.Leave(ctx); err != nil {
		t.Fatalf("leave after the sender failed: %v", err)
	}
	// Out of the view, it is no longer a member: its sender's error gave
	// way to ErrNotMember.
	if err := ms[0].g.Multicast(ctx, []byte("x")); !errors.Is(err, gcs.ErrNotMember) {
		t.Fatalf("multicast after leaving: %v, want ErrNotMember", err)
	}
	waitUntil(t, 10*time.Second, "p1 alone in the view", func() bool {
		v := ms[1].lastView()
		return v != nil && len(v.Members) == 1
	})
}

// TestJoinsFromOneNodeSettleApart: two joins of one group from one Node
// decide on the same header, so they write the same view record (slot,
// tag, name; the record does not name the queue). One commits; the other's
// request is lost (ErrUnknownOutcome) and settling finds the identical
// record. Reading it back alone, the loser took the winner's membership as
// its own: two Groups on one slot and tag. The slot's queue tells them
// apart; the loser joins again and both are members.
func TestJoinsFromOneNodeSettleApart(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(1, "g")
	n := e.node("twice")
	var second *member
	fired, restore := gcs.UnknownWithoutCommit("view", func() {
		second = e.join(n, "g")
	})
	defer restore()
	first := e.join(n, "g")
	if !fired() || second == nil {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	if first.name == second.name {
		t.Fatalf("both joins are %s", first.name)
	}
	all := []*member{ms[0], first, second}
	waitUntil(t, 10*time.Second, "three members in the view", func() bool {
		v := ms[0].lastView()
		return v != nil && len(v.Members) == 3
	})
	sendAll(t, all, 2, 10)
	deliveredInOrder(t, all, 6)
	e.leaveAll(all)
}
