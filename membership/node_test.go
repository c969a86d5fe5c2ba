package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
	"github.com/tutti-gcs/tutti/internal/leakcheck"
	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// testTiming makes absence and isolation quick; gossip keeps the defaults.
var testLogLevel = zerolog.WarnLevel

var testTiming = Timing{PollInterval: 50 * time.Millisecond, TakeoverTimeout: 500 * time.Millisecond,
	AbsentTimeout: 2 * time.Second, IsolationDelay: 5 * time.Second}

type env struct {
	t   *testing.T
	c   *cluster.Cluster
	net *netFilter
	key []byte
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, cluster.Config{})
}

// newEnvWith is newEnv on a cluster configured by cfg (NoSync, Memnodes and
// DataDir are set here).
func newEnvWith(t *testing.T, cfg cluster.Config) *env {
	t.Helper()
	cfg.NoSync, cfg.Memnodes, cfg.DataDir = true, 1, t.TempDir()
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
	return &env{t: t, c: c, net: &netFilter{isolated: map[string]bool{}}}
}

// client returns a client of the test cluster, closed with the test; dial
// options replace the default (insecure credentials), so they must name
// some.
func (e *env) client(dial ...grpc.DialOption) *client.Client {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: e.c.Seeds(), DialOptions: dial})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl
}

func (e *env) config(id string, seeds ...*Node) Config {
	cfg := Config{ID: id, Client: e.client(), Bind: "127.0.0.1:0", GRPCAddr: "grpc-" + id, Key: e.key,
		Timing: testTiming, Logger: zerolog.New(testLogWriter(e.t)).Level(testLogLevel)}
	for _, s := range seeds {
		cfg.Seeds = append(cfg.Seeds, s.GossipAddr())
	}
	cfg.wrapTransport = e.net.wrap
	return cfg
}

func (e *env) start(cfg Config) *Node {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Start(ctx, cfg)
	if err != nil {
		e.t.Fatalf("start %s: %v", cfg.ID, err)
	}
	e.t.Cleanup(func() { n.Close() })
	return n
}

// row reads the table through n and returns id's row.
func row(t *testing.T, n *Node, id string) Row {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tb, err := n.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := tb.Lookup(id)
	return r
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
	return time.Since(start)
}

// recorder collects a subscription.
type recorder struct {
	mu   sync.Mutex
	all  []Change
	done chan struct{}
}

func record(n *Node) (*recorder, func()) {
	ch, cancel := n.Subscribe()
	r := &recorder{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for c := range ch {
			r.mu.Lock()
			r.all = append(r.all, c)
			r.mu.Unlock()
		}
	}()
	return r, func() { cancel(); <-r.done }
}

func (r *recorder) changes() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.all...)
}

func (r *recorder) has(pred func(Change) bool) bool {
	for _, c := range r.changes() {
		if pred(c) {
			return true
		}
	}
	return false
}

// waitRecorded waits until r has received the table changes up to version
// v. A node publishes a change once its watcher polled it, and the
// recorder receives it after that: the waits that read the table directly
// (row) or the node's cache (Known) can be ahead of r.
func waitRecorded(t *testing.T, r *recorder, v uint64) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("the recorder reaching version %d", v), func() bool {
		cs := tableChanges(r.changes())
		return len(cs) > 0 && cs[len(cs)-1].Version >= v
	})
}

// tableChanges drops local notices.
func tableChanges(cs []Change) []Change {
	var out []Change
	for _, c := range cs {
		if !c.Local() {
			out = append(out, c)
		}
	}
	return out
}

// agreed checks that every recorder saw contiguous versions and that, on
// versions two recorders both saw, they saw the same change.
func agreed(t *testing.T, rs ...*recorder) {
	t.Helper()
	byVersion := map[uint64][]byte{}
	for i, r := range rs {
		cs := tableChanges(r.changes())
		for j, c := range cs {
			if c.Resync {
				t.Fatalf("recorder %d: unexpected resync at %d", i, c.Version)
			}
			if j > 0 && c.Version != cs[j-1].Version+1 {
				t.Fatalf("recorder %d: version %d after %d", i, c.Version, cs[j-1].Version)
			}
			enc := encodeEntry(c.Version, c.Row)
			if prev, ok := byVersion[c.Version]; ok && !bytes.Equal(prev, enc) {
				t.Fatalf("version %d: recorders disagree", c.Version)
			}
			byVersion[c.Version] = enc
		}
	}
}

func TestCrashLeaveRestart(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b", a))
	c := e.start(e.config("c", a))
	if a.Incarnation() != 1 || b.Incarnation() != 2 || c.Incarnation() != 3 {
		t.Fatalf("incarnations %d %d %d", a.Incarnation(), b.Incarnation(), c.Incarnation())
	}
	if r := row(t, a, "b"); r.State != StateAlive || r.GossipAddr != b.GossipAddr() || r.GRPCAddr != "grpc-b" {
		t.Fatalf("b's row %+v", r)
	}
	ra, stopA := record(a)
	rb, stopB := record(b)
	defer stopA()
	ctx0, cancel0 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel0()
	w, err := NewWatcher(ctx0, e.client(), DefaultTable)
	if err != nil {
		t.Fatal(err)
	}

	// Crash: c stops gossiping without leaving.
	crashed := time.Now()
	c.Close()
	took := waitFor(t, 10*time.Second, "c declared dead", func() bool { return row(t, a, "c").State == StateDead })
	t.Logf("crash to dead in the table: %v", took)
	dead := row(t, a, "c")
	if dead.Incarnation != 3 || (dead.By != 1 && dead.By != 2) || dead.Since.Before(crashed) {
		t.Fatalf("dead row %+v", dead)
	}

	// Graceful leave: in the table when Leave returns.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if r := row(t, a, "b"); r.State != StateLeft || r.By != 2 {
		t.Fatalf("after leave b's row is %+v", r)
	}
	stopB()

	// Restart c: a new incarnation in the same row.
	c2 := e.start(e.config("c", a))
	if c2.Incarnation() != 4 {
		t.Fatalf("restarted c has incarnation %d, want 4", c2.Incarnation())
	}
	if r := row(t, a, "c"); r.State != StateAlive || r.Incarnation != 4 || r.Slot != dead.Slot {
		t.Fatalf("restarted c's row %+v", r)
	}
	waitFor(t, 5*time.Second, "a sees c's restart", func() bool {
		return ra.has(func(ch Change) bool { return ch.Kind == Rejoined && ch.Row.ID == "c" && ch.Row.Incarnation == 4 })
	})
	// b left gracefully: nobody declared it dead later.
	if ra.has(func(ch Change) bool { return ch.Row.ID == "b" && ch.Kind == Died }) {
		t.Fatal("b was declared dead after leaving")
	}
	// An outside watcher (as `tutti members --watch` uses) saw the same.
	wc, err := w.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(wc) > 0 {
		waitRecorded(t, ra, wc[len(wc)-1].Version)
	}
	rw := &recorder{all: wc}
	agreed(t, ra, rb, rw)
	if len(wc) != len(tableChanges(ra.changes())) {
		t.Fatalf("watcher saw %d changes, a %d", len(wc), len(tableChanges(ra.changes())))
	}
	want := []ChangeKind{Died, Left, Rejoined}
	var got []ChangeKind
	for _, ch := range tableChanges(ra.changes()) {
		got = append(got, ch.Kind)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("a saw %v, want %v", got, want)
	}
}

// pause makes n look like a stopped process: no gossip in or out, no table
// work. resume undoes it.
func (e *env) pause(n *Node, driver bool) {
	if driver {
		n.paused.Store(true)
	}
	e.net.set(n.GossipAddr(), true)
}

func (e *env) resume(n *Node) {
	e.net.set(n.GossipAddr(), false)
	n.paused.Store(false)
	select {
	case n.del.poke <- struct{}{}:
	default:
	}
}

func TestFalseSuspicionRejoinsWithNewIncarnation(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b", a))
	c := e.start(e.config("c", a))
	ra, stopA := record(a)
	defer stopA()
	rc, stopC := record(c)
	defer stopC()

	e.pause(c, true)
	waitFor(t, 10*time.Second, "paused c declared dead", func() bool { return row(t, a, "c").State == StateDead })
	e.resume(c)
	waitFor(t, 10*time.Second, "c notices its eviction", func() bool {
		return rc.has(func(ch Change) bool { return ch.Kind == Evicted && ch.Row.Incarnation == 3 })
	})
	waitFor(t, 10*time.Second, "c alive again", func() bool {
		r := row(t, a, "c")
		return r.State == StateAlive && r.Incarnation == 4 && c.Incarnation() == 4
	})
	waitFor(t, 10*time.Second, "gossip carries c's new incarnation", func() bool {
		o := a.del.view()["c"]
		return o.Seen == SeenAlive && o.Incarnation == 4
	})
	// a's recorder may lag the table the waits above read: "a never saw c
	// die" failed under load when it had not yet received c's death.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tb, err := a.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitRecorded(t, ra, tb.Version)
	// The old incarnation never came back. No incarnation of any process
	// reappears after it died: a bystander starved by a loaded machine may
	// itself be suspected and rejoin, but only under a new incarnation.
	died := map[string]uint64{} // id → highest incarnation seen dead
	diedAt := uint64(0)
	for _, ch := range tableChanges(ra.changes()) {
		id, inc := ch.Row.ID, ch.Row.Incarnation
		if ch.Kind == Died {
			died[id] = max(died[id], inc)
			if id == "c" && inc == 3 {
				diedAt = ch.Version
			}
			continue
		}
		if d, ok := died[id]; ok && inc <= d {
			t.Fatalf("incarnation %d of %s reappeared at version %d after incarnation %d died: %+v", inc, id, ch.Version, d, ch)
		}
		if id != "c" {
			t.Logf("bystander change under load (allowed, new incarnation): %+v", ch)
		}
	}
	if diedAt == 0 {
		t.Fatal("a never saw c die")
	}
	waitFor(t, 10*time.Second, "b alive in the table under its current incarnation", func() bool {
		r := row(t, a, "b")
		return r.State == StateAlive && r.Incarnation == b.Incarnation()
	})
	agreed(t, ra, rc)
}

func TestPartitionedProcessIsEvictedNotTheMajority(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b", a))
	c := e.start(e.config("c", a))
	ra, stopA := record(a)
	defer stopA()
	rb, stopB := record(b)
	defer stopB()
	rc, stopC := record(c)
	defer stopC()

	// c is cut off from gossip but still reaches the memnodes; its driver
	// keeps running and sees a and b "dead" — it must not win.
	e.pause(c, false)
	waitFor(t, 15*time.Second, "c evicted while partitioned", func() bool {
		return rc.has(func(ch Change) bool { return ch.Kind == Evicted })
	})
	e.resume(c)
	waitFor(t, 20*time.Second, "everyone alive and c seen alive in gossip", func() bool {
		tb := a.Known()
		for _, id := range []string{"a", "b", "c"} {
			if r, _ := tb.Lookup(id); !r.State.Live() {
				return false
			}
		}
		r, _ := tb.Lookup("c")
		oa, ob := a.del.view()["c"], b.del.view()["c"]
		return r.Incarnation == c.Incarnation() && oa.Seen == SeenAlive && ob.Seen == SeenAlive &&
			oa.Incarnation == r.Incarnation && ob.Incarnation == r.Incarnation
	})
	if c.Incarnation() <= 3 {
		t.Fatalf("c rejoined with incarnation %d", c.Incarnation())
	}
	waitRecorded(t, ra, a.Known().Version)
	// The cut-off c (incarnation 3) must never have changed the majority's
	// rows, and nothing about a or b may happen before c was evicted. After
	// the heal a starved machine may falsely suspect a bystander; it then
	// rejoins under a new incarnation, which is allowed.
	evictedAt := uint64(0)
	for _, ch := range tableChanges(ra.changes()) {
		if ch.Row.ID == "c" && ch.Kind == Died && ch.Row.Incarnation == 3 {
			evictedAt = ch.Version
			break
		}
	}
	for _, r := range []*recorder{ra, rb, rc} {
		for _, ch := range tableChanges(r.changes()) {
			if ch.Row.ID == "c" {
				continue
			}
			if ch.Row.By == 3 || evictedAt == 0 || ch.Version < evictedAt {
				t.Fatalf("the majority was changed by the partitioned process (evicted at version %d): %+v", evictedAt, ch)
			}
			t.Logf("bystander change after the heal (allowed under load): %+v", ch)
		}
	}
	waitFor(t, 10*time.Second, "a and b alive under their current incarnations", func() bool {
		ra, rb := row(t, a, "a"), row(t, a, "b")
		return ra.State == StateAlive && ra.Incarnation == a.Incarnation() && rb.State == StateAlive && rb.Incarnation == b.Incarnation()
	})
	agreed(t, ra, rb, rc)
}

func TestWrongGossipKeyIsRefused(t *testing.T) {
	e := newEnv(t)
	e.key = []byte("0123456789abcdef")
	a := e.start(e.config("a"))
	e.start(e.config("b", a)) // same key: fine
	if r := row(t, a, "b"); r.State != StateAlive {
		t.Fatalf("b %+v", r)
	}
	for _, k := range [][]byte{[]byte("fedcba9876543210"), nil} {
		var logs bytes.Buffer
		cfg := e.config("mallory", a)
		cfg.Key = k
		cfg.Logger = zerolog.New(&syncWriter{w: &logs})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		n, err := Start(ctx, cfg)
		cancel()
		if err == nil {
			n.Close()
			t.Fatalf("key %q: joined", k)
		}
		if !errors.Is(err, ErrJoin) || !strings.Contains(err.Error(), "key") {
			t.Fatalf("key %q: error %v", k, err)
		}
		if !strings.Contains(logs.String(), "no seed accepted") {
			t.Fatalf("key %q: the refusal was not logged: %s", k, logs.String())
		}
	}
	if _, ok := a.Known().Lookup("mallory"); ok {
		t.Fatal("a refused process got a row")
	}
	if r := row(t, a, "mallory"); r.State != StateEmpty {
		t.Fatalf("mallory has a row %+v", r)
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// testLogWriter writes to t's log until t's cleanups have run. memberlist's
// goroutines may still log once Node.Close has returned, and t.Log after
// the test completed panics. The cleanup registered here runs after those
// of the nodes started later (cleanups run last-in first-out).
func testLogWriter(t *testing.T) io.Writer {
	w := &stoppableWriter{w: zerolog.NewTestWriter(t)}
	t.Cleanup(func() {
		w.mu.Lock()
		w.stopped = true
		w.mu.Unlock()
	})
	return w
}

type stoppableWriter struct {
	mu      sync.Mutex
	stopped bool
	w       io.Writer
}

func (s *stoppableWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return len(p), nil
	}
	return s.w.Write(p)
}

// netFilter cuts isolated gossip addresses off: every node's transport drops
// packets to them and refuses to dial them, and theirs do the same for
// everything, so both directions are cut without filtering reception.
type netFilter struct {
	mu       sync.Mutex
	isolated map[string]bool
}

func (f *netFilter) set(addr string, cut bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.isolated[addr] = cut
}

func (f *netFilter) blocked(from, to string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.isolated[from] || f.isolated[to]
}

func (f *netFilter) wrap(t memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
	return &filterTransport{NodeAwareTransport: t, f: f}
}

type filterTransport struct {
	memberlist.NodeAwareTransport
	f    *netFilter
	mu   sync.Mutex
	self string
}

func (t *filterTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	a, p, err := t.NodeAwareTransport.FinalAdvertiseAddr(ip, port)
	if err == nil {
		t.mu.Lock()
		t.self = net.JoinHostPort(a.String(), fmt.Sprint(p))
		t.mu.Unlock()
	}
	return a, p, err
}

func (t *filterTransport) cut(to string) bool {
	t.mu.Lock()
	self := t.self
	t.mu.Unlock()
	return t.f.blocked(self, to)
}

func (t *filterTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.cut(addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *filterTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.cut(a.Addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, a)
}

func (t *filterTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.cut(addr) {
		return nil, fmt.Errorf("test partition: %s unreachable", addr)
	}
	return t.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (t *filterTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.cut(a.Addr) {
		return nil, fmt.Errorf("test partition: %s unreachable", a.Addr)
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, timeout)
}

// Two processes that each started a gossip cluster of their own (the first
// of a set of servers that list each other as seeds) merge with Join, and
// then neither declares the other absent.
func TestJoinMergesSeparatelyStartedProcesses(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b"))
	if a.GossipMembers() != 1 || b.GossipMembers() != 1 {
		t.Fatalf("before Join: a sees %d, b sees %d", a.GossipMembers(), b.GossipMembers())
	}
	if k, err := b.Join([]string{a.GossipAddr()}); k != 1 || err != nil {
		t.Fatalf("Join: %d %v", k, err)
	}
	waitFor(t, 5*time.Second, "one gossip cluster", func() bool { return a.GossipMembers() == 2 && b.GossipMembers() == 2 })
	// Past AbsentTimeout both rows are still alive.
	until := time.Now().Add(testTiming.AbsentTimeout + time.Second)
	waitFor(t, 2*testTiming.AbsentTimeout, "AbsentTimeout to pass with both alive", func() bool {
		if row(t, a, "a").State != StateAlive || row(t, a, "b").State != StateAlive {
			t.Fatalf("a row went dead after Join: a=%v b=%v", row(t, a, "a"), row(t, a, "b"))
		}
		return time.Now().After(until)
	})
	a.Close()
	if _, err := a.Join([]string{b.GossipAddr()}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Join after Close: %v", err)
	}
}

// TestLeaveAfterSupersededReturnsItsError: Leave of a node stopped as
// superseded (a newer incarnation of its id registered) says so. It used
// to panic: the node had shut its gossip down, and Leave then asked
// memberlist to leave ("leave after shutdown"), as a server or an example
// does when told to stop.
func TestLeaveAfterSupersededReturnsItsError(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	old := e.start(e.config("c", a))
	rec, stop := record(old)
	defer stop()
	e.start(e.config("c", a)) // the same id again: a restart elsewhere
	waitFor(t, 20*time.Second, "the old c superseded", func() bool {
		return rec.has(func(ch Change) bool { return ch.Kind == Superseded })
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := old.Leave(ctx); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("Leave of a superseded node: %v, want ErrSuperseded", err)
	}
}

// TestClientClosedUnderANodeStopsIt: a node whose client the application
// closed can neither read nor change the process table. It says so once,
// at error level, and leaves gossip, so the others declare the process
// dead (else it would look alive for ever, and nothing it is a member of
// would remove it); Leave then answers client.ErrClosed. It used to warn on
// every poll and keep gossiping.
func TestClientClosedUnderANodeStopsIt(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	var logs syncbuf.Buffer
	cfg := e.config("b", a)
	cfg.Logger = zerolog.New(&logs).Level(zerolog.WarnLevel)
	b := e.start(cfg)
	cfg.Client.Close()
	waitFor(t, 20*time.Second, "b declared dead", func() bool { return row(t, a, "b").State == StateDead })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Leave(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Leave with the client closed: %v, want client.ErrClosed", err)
	}
	errs := logs.Lines(`"level":"error"`, "client under this membership node was closed")
	warns := logs.Lines(`"level":"warn"`, "process table")
	if errs != 1 || warns != 0 {
		t.Fatalf("%d error lines saying the client was closed (want 1), %d warnings about the table (want 0):\n%s", errs, warns, logs.String())
	}
}

// TestQuickRestartOnANewPortIsNotEvicted: a process that crashed and was
// restarted under the same id on another gossip port before the others
// noticed the crash must not be declared dead. With the id as memberlist's
// node name, memberlist refused the new life while the old held the name
// ("Conflicting address"), and once it took the new life in, a death that
// another member declared for the old life, gossiped late, landed on the
// new one: its row was declared dead with the new incarnation as evidence
// (1 run in 15 here, and on a CI run: "c's row c#4 dead ..., want alive
// under incarnation 4"). Memberlist names are now per life (gossipName).
func TestQuickRestartOnANewPortIsNotEvicted(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b", a))
	c := e.start(e.config("c", a))
	c.Close()                          // a crash
	c2 := e.start(e.config("c", a, b)) // restarted at once, on a new port
	rc, stop := record(c2)
	defer stop()
	inc := c2.Incarnation()
	if inc != 4 {
		t.Fatalf("restarted c has incarnation %d, want 4", inc)
	}
	ok := func() bool {
		if rc.has(func(ch Change) bool { return ch.Kind == Evicted }) {
			t.Fatalf("the restarted c (alive) was declared dead: row %v, a's view of c %+v", row(t, a, "c"), a.del.view()["c"])
		}
		for _, n := range []*Node{a, b} {
			if o := n.del.view()["c"]; o.Seen != SeenAlive || o.Incarnation != inc {
				return false
			}
		}
		return true
	}
	waitFor(t, 10*time.Second, "a and b seeing the restarted c alive in gossip", ok)
	// Past AbsentTimeout it is still alive under the same incarnation.
	until := time.Now().Add(testTiming.AbsentTimeout + time.Second)
	waitFor(t, 2*testTiming.AbsentTimeout+5*time.Second, "AbsentTimeout to pass with c alive", func() bool {
		if r := row(t, a, "c"); r.State != StateAlive || r.Incarnation != inc {
			t.Fatalf("c's row %v, want alive under incarnation %d", r, inc)
		}
		return ok() && time.Now().After(until)
	})
}

// TestStartHonoursJoinTimeoutAndContext: seeds that accept a connection and
// never answer (a hung process, a black-holed route) each hold memberlist's
// Join for its TCPTimeout (1 s), and Start tried them all: six took over
// 6 s whatever Timing.JoinTimeout or Start's ctx said.
func TestStartHonoursJoinTimeoutAndContext(t *testing.T) {
	e := newEnv(t)
	var silent []string
	// accepted runs on every connection a silent seed accepts.
	var accepted atomic.Pointer[func()]
	accepted.Store(new(func()))
	for range 6 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close() // held open, never answered
				(*accepted.Load())()
			}
		}()
		silent = append(silent, l.Addr().String())
	}
	for _, c := range []struct {
		name        string
		joinTimeout time.Duration
		cancel      bool // cancel Start's ctx once the first seed is dialled
		want        string
	}{
		{"JoinTimeout", 300 * time.Millisecond, false, "JoinTimeout"},
		// Canceled during the join, not on a timer that could run out
		// while Start still read the table.
		{"ctx", 20 * time.Second, true, "context canceled"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := e.config("x-" + c.name)
			cfg.Seeds = silent
			cfg.Timing.JoinTimeout = c.joinTimeout
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			f := func() {}
			if c.cancel {
				f = cancel
			}
			accepted.Store(&f)
			defer func() { f := func() {}; accepted.Store(&f) }()
			t0 := time.Now()
			n, err := Start(ctx, cfg)
			took := time.Since(t0)
			if err == nil {
				n.Close()
				t.Fatal("joined through silent seeds")
			}
			if !errors.Is(err, ErrJoin) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrJoin saying %q", err, c.want)
			}
			// The caller can tell its own cancellation from a refusal.
			if errors.Is(err, context.Canceled) != c.cancel {
				t.Fatalf("error %v: errors.Is(err, context.Canceled) = %v", err, !c.cancel)
			}
			// Bounded by the first silent seed's TCPTimeout, not by six.
			if took > 4*time.Second {
				t.Fatalf("Start took %v with six silent seeds", took)
			}
		})
	}
	// Silent seeds listed before a live one: the join goes through (seeds
	// tried in turn, 1 s each, reached the live one after JoinTimeout
	// and failed; memberlist's own Join reached it after 6 s).
	t.Run("live seed last", func(t *testing.T) {
		a := e.start(e.config("a"))
		cfg := e.config("x-last")
		cfg.Seeds = append(append([]string(nil), silent...), a.GossipAddr())
		cfg.Timing.JoinTimeout = 3 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		n, err := Start(ctx, cfg)
		if err != nil {
			t.Fatalf("Start with six silent seeds before a live one: %v", err)
		}
		n.Close()
	})
}

// TestTableChangesAreWatchedNotPolled: with the cluster's watch stream a
// node reads the table header when it changes, not every PollInterval (a
// read every 50 ms per process here, 250 ms by default), and still learns
// of a change at once.
func TestTableChangesAreWatchedNotPolled(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b", a))
	// Steady state: count b's reads over 2 s (PollInterval 50 ms: 40
	// without the watch; the backup poll every 200 ms makes 10).
	p0 := b.polls.Load()
	time.Sleep(2 * time.Second) // the window measured
	if k := b.polls.Load() - p0; k > 20 {
		t.Fatalf("b read the table header %d times in 2 s with nothing changing (PollInterval %v)", k, testTiming.PollInterval)
	}
	// A change is still seen at once: c registers, and b, which has not
	// heard of c in gossip yet if its row came first, knows the row.
	c := e.start(e.config("c", a))
	waitFor(t, 5*time.Second, "b to know c's row", func() bool {
		r, ok := b.Known().Lookup("c")
		return ok && r.Incarnation == c.Incarnation() && r.State == StateAlive
	})
}

// TestRestartOnTheSamePortIsNotEvicted: the usual restart, at the same
// gossip address, before the others noticed the crash. The old life's name
// is probed at the address the new life holds; the new life does not
// answer for it, so the old life is declared dead in gossip while the new
// one stays alive, and its row is never declared dead.
func TestRestartOnTheSamePortIsNotEvicted(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b", a))
	c := e.start(e.config("c", a))
	addr := c.GossipAddr()
	c.Close()
	cfg := e.config("c", a, b)
	cfg.Bind = addr
	c2 := e.start(cfg)
	if c2.GossipAddr() != addr {
		t.Fatalf("restarted c gossips at %s, want %s", c2.GossipAddr(), addr)
	}
	rc, stop := record(c2)
	defer stop()
	inc := c2.Incarnation()
	until := time.Now().Add(testTiming.AbsentTimeout + time.Second)
	waitFor(t, 2*testTiming.AbsentTimeout+10*time.Second, "AbsentTimeout to pass with c alive in gossip and the table", func() bool {
		if rc.has(func(ch Change) bool { return ch.Kind == Evicted }) {
			t.Fatalf("the restarted c (alive) was declared dead: row %v, a's view of c %+v", row(t, a, "c"), a.del.view()["c"])
		}
		if r := row(t, a, "c"); r.State != StateAlive || r.Incarnation != inc {
			t.Fatalf("c's row %v, want alive under incarnation %d", r, inc)
		}
		for _, n := range []*Node{a, b} {
			if o := n.del.view()["c"]; o.Seen != SeenAlive || o.Incarnation != inc {
				return false
			}
		}
		return time.Now().After(until)
	})
}

// TestGossipViewPerLife: the view a node decides on, given what memberlist
// reports about several lives of one process.
func TestGossipViewPerLife(t *testing.T) {
	now := time.Unix(1000, 0)
	d := &gossipDelegate{self: gossipName("a", "n0"), now: func() time.Time { return now }, poke: make(chan struct{}, 1)}
	d.mu.lives = map[string]life{}
	node := func(name string, inc uint64) *memberlist.Node {
		return &memberlist.Node{Name: name, Meta: encodeMeta(Meta{ID: gossipID(name), Incarnation: inc})}
	}
	check := func(what string, want Observation) {
		t.Helper()
		if got := d.view()["c"]; got.Seen != want.Seen || got.Incarnation != want.Incarnation {
			t.Fatalf("%s: view of c %+v, want seen %d incarnation %d", what, got, want.Seen, want.Incarnation)
		}
	}
	old, young := gossipName("c", "n1"), gossipName("c", "n2")
	d.observe(node(old, 3), false)
	check("one life", Observation{Seen: SeenAlive, Incarnation: 3})
	d.observe(node(young, 4), false)
	check("the new life taken in while the old is still alive", Observation{Seen: SeenAlive, Incarnation: 4})
	if k := d.aliveProcesses("a"); k != 1 {
		t.Fatalf("two alive lives of c count as %d processes, want 1", k)
	}
	now = now.Add(time.Second)
	d.observe(node(old, 3), true) // the old life's death, declared late
	check("the old life dead after the new one is alive", Observation{Seen: SeenAlive, Incarnation: 4})
	d.mu.Lock()
	_, kept := d.mu.lives[old]
	d.mu.Unlock()
	if kept {
		t.Fatal("the dead older life is still held")
	}
	d.observe(node(young, 4), true)
	check("the new life dead", Observation{Seen: SeenDead, Incarnation: 4})
	// A later life that died before registering, with the same incarnation
	// tentatively (the one it meant to register): it does not outrank the
	// registered life's death, and outranks it once alone is newer.
	tentative := func(name string, inc uint64) *memberlist.Node {
		return &memberlist.Node{Name: name, Meta: encodeMeta(Meta{ID: gossipID(name), Incarnation: inc, Tentative: true})}
	}
	now = now.Add(time.Second)
	d.observe(tentative(gossipName("c", "t1"), 4), true)
	if got := d.view()["c"]; got.Seen != SeenDead || got.Incarnation != 4 || got.Tentative {
		t.Fatalf("a registered and a tentative death under one incarnation: view of c %+v, want the registered one", got)
	}
	d.observe(tentative(gossipName("c", "t2"), 4), false)
	if got := d.view()["c"]; got.Seen != SeenAlive || !got.Tentative {
		t.Fatalf("a life starting under the dead one's incarnation: view of c %+v, want it alive, tentative", got)
	}
	d.mu.Lock()
	delete(d.mu.lives, gossipName("c", "t1"))
	delete(d.mu.lives, gossipName("c", "t2"))
	d.mu.Unlock()
	// A second process under a live one's id that dies before it
	// registered (its tentative incarnation above the live row's): the
	// live one stays alive in the view.
	live, dup := gossipName("e", "n1"), gossipName("e", "n2")
	d.observe(node(live, 5), false)
	d.observe(node(dup, 6), false)
	d.observe(node(dup, 6), true)
	if o := d.view()["e"]; o.Seen != SeenAlive || o.Incarnation != 5 {
		t.Fatalf("a failed duplicate's death hides the live process: view of e %+v", o)
	}
	d.observe(node(d.self, 9), false)
	if _, ok := d.view()["a"]; ok {
		t.Fatal("the node observes itself")
	}
	now = now.Add(forgetDead + time.Second)
	if o, ok := d.view()["c"]; ok {
		t.Fatalf("after forgetDead, view of c %+v, want none", o)
	}
	d.mu.Lock()
	n := len(d.mu.lives)
	d.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d lives held after forgetDead, want 1 (e's alive one)", n)
	}
}

// TestLeaveRacingCloseDoesNotPanic: Close, from another goroutine, shuts
// gossip down between Leave's table change and its gossip leave (a server
// told to stop twice, or Leave's caller and a deferred Close). memberlist
// panics on a Leave after Shutdown ("leave after shutdown"), and Leave
// called it after checking only the node's own stops (superseded, client
// closed). The same happened when the driver stopped the node as
// superseded or for a closed client in that window.
func TestLeaveRacingCloseDoesNotPanic(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	cfg := e.config("b", a)
	var b *Node
	cfg.beforeGossipLeave = func() { b.Close() }
	b = e.start(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Leave racing Close panicked: %v", r)
		}
	}()
	if err := b.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if r := row(t, a, "b"); r.State != StateLeft {
		t.Fatalf("b's row %v, want left", r)
	}
}

// TestDeathBeforeRegistrationIsNoEvidenceAgainstTheNextLife: a life that
// joined gossip and died before registering (its registration failed, or it
// was killed in Start) had advertised its tentative incarnation, the
// table's maximum + 1. The next life of its id registers that same
// incarnation if nothing registered in between. An observer that saw the
// first life die and had not yet heard of the second (gossip is slower than
// the table) took that death as evidence against the second life's row —
// dead under an incarnation >= the row's — and, as the lowest-ranked
// process, declared the new life dead at once: a false removal.
func TestDeathBeforeRegistrationIsNoEvidenceAgainstTheNextLife(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	b := e.start(e.config("b", a))
	cfg := e.config("c", a)
	cfg.execFault = func(Plan, func() (*client.Result, error)) (*client.Result, error) {
		return nil, errors.New("injected: the registration failed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := Start(ctx, cfg); err == nil {
		n.Close()
		t.Fatal("c registered through a failing client")
	}
	waitFor(t, 10*time.Second, "a seeing c's unregistered life dead", func() bool {
		o, ok := a.del.view()["c"]
		return ok && o.Seen == SeenDead
	})
	// a hears nothing of c's next life until it has decided on its row
	// (kept short: a cut off for long is suspected and declared dead).
	e.pause(a, false)
	c := e.start(e.config("c", b))
	rc, stop := record(c)
	defer stop()
	inc := c.Incarnation()
	tb, err := a.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	self, epoch := a.mu.self, a.mu.epoch
	a.mu.Unlock()
	in := Input{Self: self, Table: tb, View: a.del.view(), Epoch: epoch, Now: time.Now(), Timing: a.cfg.Timing}
	e.resume(a)
	if r, _ := tb.Lookup("c"); r.State != StateAlive || r.Incarnation != inc {
		t.Fatalf("c's row %v, want alive under incarnation %d (a's view of c %+v)", r, inc, in.View["c"])
	}
	if d := Decide(in); d.Action == ActMarkDead && d.Plan.New.ID == "c" {
		t.Fatalf("a would declare c's new life dead at once on the death of the life before it: view of c %+v, row %v", in.View["c"], d.Plan.Old)
	}
	// The cut dropped the gossip that announced c's next life to a (a
	// delay, not a loss, in the case above): a hears it from c itself.
	if k, err := a.Join([]string{c.GossipAddr()}); k != 1 {
		t.Fatalf("a joining c: %v", err)
	}
	until := time.Now().Add(testTiming.AbsentTimeout + time.Second)
	waitFor(t, 2*testTiming.AbsentTimeout+10*time.Second, "AbsentTimeout to pass with c alive", func() bool {
		if rc.has(func(ch Change) bool { return ch.Kind == Evicted }) {
			t.Fatalf("c's new life (alive) was declared dead: row %v, a's view of c %+v", row(t, a, "c"), a.del.view()["c"])
		}
		if r := row(t, a, "c"); r.State != StateAlive || r.Incarnation != inc {
			t.Fatalf("c's row %v, want alive under incarnation %d", r, inc)
		}
		o := a.del.view()["c"]
		return o.Seen == SeenAlive && o.Incarnation == inc && time.Now().After(until)
	})
}
