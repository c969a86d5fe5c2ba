package replication

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
)

func TestProposeAndReadSeveralGroups(t *testing.T) {
	groups := []uint64{1, 2, 3, 4, 5}
	c := newCluster(t, 3, groups, nil)
	for _, g := range groups {
		for i := 1; i <= 5; i++ {
			res := c.propose(g, fmt.Sprintf("g%d-c%d", g, i))
			if string(res) != strconv.Itoa(i) {
				t.Fatalf("group %d command %d: result %q, want %q (its log position)", g, i, res, strconv.Itoa(i))
			}
		}
	}
	for _, g := range groups {
		lead := c.leader(g, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got, err := c.host(lead).Read(ctx, g, []byte("len"))
		cancel()
		if err != nil || string(got) != "5" {
			t.Fatalf("read len of group %d at leader %d = %q, %v; want 5", g, lead, got, err)
		}
		c.waitApplied(g, 5)
		log := c.checkSame(g)
		want := []string{}
		for i := 1; i <= 5; i++ {
			want = append(want, fmt.Sprintf("g%d-c%d", g, i))
		}
		if !slices.Equal(log, want) {
			t.Fatalf("group %d log %v, want %v", g, log, want)
		}
		// A follower refuses with a hint.
		for _, id := range c.ids {
			if id == lead {
				continue
			}
			_, err := c.host(id).Propose(context.Background(), g, []byte("x"))
			var nle *NotLeaderError
			if !errors.As(err, &nle) || nle.Leader != lead || nle.Group != g {
				t.Fatalf("propose at follower %d of group %d: %v; want NotLeaderError with leader %d", id, g, err, lead)
			}
			_, err = c.host(id).Read(context.Background(), g, []byte("len"))
			if !errors.Is(err, ErrNotLeader) {
				t.Fatalf("read at follower %d: %v; want ErrNotLeader", id, err)
			}
		}
	}
	// Unknown group, too large.
	h := c.host(1)
	if _, err := h.Propose(context.Background(), 99, []byte("x")); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("unknown group: %v", err)
	}
	lead := c.leader(1, nil)
	if _, err := c.host(lead).Propose(context.Background(), 1, make([]byte, 2<<20)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if st, err := c.host(lead).Status(1); err != nil || st.Leader != lead || st.Applied < 6 || st.Commit < st.Applied || st.Term == 0 {
		t.Fatalf("status %+v, %v", st, err)
	}
	if s := c.host(lead).Stats(); s.Proposals == 0 || s.Fsyncs == 0 || s.Applies == 0 || s.Reads == 0 {
		t.Fatalf("stats %+v", s)
	}
}

// Many concurrent async proposals: every future completes exactly once, with
// distinct positions, and they batch into fewer entries.
func TestProposeAsyncBatching(t *testing.T) {
	c := newCluster(t, 3, []uint64{1}, nil)
	lead := c.leader(1, nil)
	h := c.host(lead)
	const n = 2000
	var wg sync.WaitGroup
	var calls atomic.Int64
	results := make([]string, n)
	errs := make([]error, n)
	wg.Add(n)
	for i := range n {
		h.ProposeAsync(1, []byte(fmt.Sprintf("c%d", i)), func(r []byte, err error) {
			calls.Add(1)
			results[i], errs[i] = string(r), err
			wg.Done()
		})
	}
	wg.Wait()
	seen := make(map[string]bool)
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("proposal %d: %v", i, errs[i])
		}
		if seen[results[i]] {
			t.Fatalf("position %s returned twice", results[i])
		}
		seen[results[i]] = true
	}
	if calls.Load() != n {
		t.Fatalf("%d callbacks for %d proposals", calls.Load(), n)
	}
	c.waitApplied(1, n)
	log := c.checkSame(1)
	for i := range n {
		pos, _ := strconv.Atoi(results[i])
		if log[pos-1] != fmt.Sprintf("c%d", i) {
			t.Fatalf("proposal %d got position %d holding %q", i, pos, log[pos-1])
		}
	}
	if s := h.Stats(); s.Entries >= n {
		t.Fatalf("no batching: %d entries for %d proposals", s.Entries, s.Proposals)
	}
}

func TestLeaderCrash(t *testing.T) {
	groups := []uint64{1, 2, 3}
	c := newCluster(t, 3, groups, nil)
	for _, g := range groups {
		c.propose(g, "before")
	}
	lead := c.leader(1, nil)
	c.stop(lead)
	rest := slices.DeleteFunc(slices.Clone(c.ids), func(id uint64) bool { return id == lead })
	for _, g := range groups {
		nl := c.leader(g, rest)
		if nl == lead {
			t.Fatalf("group %d still led by stopped host", g)
		}
		c.propose(g, "after")
		for _, id := range rest {
			if id == nl {
				continue
			}
			_, err := c.host(id).Propose(context.Background(), g, []byte("x"))
			var nle *NotLeaderError
			if !errors.As(err, &nle) || nle.Leader != nl {
				t.Fatalf("follower %d of group %d: %v; want hint %d", id, g, err, nl)
			}
		}
	}
	// The old leader comes back and catches up.
	c.start(lead, nil)
	for _, g := range groups {
		c.waitApplied(g, 2)
		if log := c.checkSame(g); !slices.Equal(log, []string{"before", "after"}) {
			t.Fatalf("group %d log %v", g, log)
		}
	}
}

// A proposal whose leader loses its term before the proposal commits has
// an unknown outcome (ErrUnknownOutcome); under load that happens without
// any fault (the tests' election timeout is 100 ms, CheckQuorum is on).
// The harness's propose took it for a failure. It now settles it with a
// linearizable read at a later leader, which shows the command if it ever
// commits, and proposes it again only if not: it applies once, whether
// the old leader's followers had it (the next leader commits it) or not.
func TestProposeSettlesALeaderChange(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(c *cluster, lead uint64)
	}{
		// The leader's entries reach no one.
		{"lost", func(c *cluster, lead uint64) { c.net.Isolate(lead) }},
		// The followers append them, their answers are lost; the next
		// leader has the entry and commits it.
		{"kept", func(c *cluster, lead uint64) {
			for _, id := range c.ids {
				if id != lead {
					c.net.Cut(id, lead)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3, []uint64{1}, nil)
			c.propose(1, "before")
			// The leader accepts the next proposal, cannot commit it, and
			// steps down (CheckQuorum): its outcome is unknown.
			tc.fault(c, c.leader(1, nil))
			res := c.propose(1, "during")
			if c.unknownOutcomes.Load() == 0 {
				t.Fatal("the proposal's outcome was never unknown: the test shows nothing")
			}
			if string(res) != "2" {
				t.Fatalf("result %q, want 2 (its log position)", res)
			}
			c.net.Heal()
			c.waitApplied(1, 2)
			if log := c.checkSame(1); !slices.Equal(log, []string{"before", "during"}) {
				t.Fatalf("log %v, want [before during]", log)
			}
		})
	}
}

func TestFollowerRestartRecovers(t *testing.T) {
	groups := []uint64{1, 2}
	c := newCluster(t, 3, groups, func(cfg *Config) {
		cfg.SnapshotEntries = 20
		cfg.exciseMaxDefer = 20 * time.Millisecond // memtables never fill here
	})
	for i := range 30 {
		for _, g := range groups {
			c.propose(g, fmt.Sprintf("a%d", i))
		}
	}
	follower := c.follower(1)
	c.waitApplied(1, 30)
	c.waitApplied(2, 30)
	c.stop(follower)
	for i := range 30 {
		for _, g := range groups {
			c.propose(g, fmt.Sprintf("b%d", i))
		}
	}
	h := c.start(follower, nil)
	stored, err := h.StoredGroups()
	if err != nil || !slices.Equal(stored, groups) {
		t.Fatalf("StoredGroups = %v, %v", stored, err)
	}
	if !slices.Equal(h.Groups(), groups) {
		t.Fatalf("Groups = %v", h.Groups())
	}
	for _, g := range groups {
		c.waitApplied(g, 60)
		log := c.checkSame(g)
		if len(log) != 60 || log[0] != "a0" || log[59] != "b29" {
			t.Fatalf("group %d log %v", g, log)
		}
	}
	if h.Stats().Restores == 0 {
		t.Fatalf("restarted host restored no snapshot (SnapshotEntries=20, 30 applied before stop)")
	}
	// Hosts that stayed up truncated their logs and excised the
	// truncated entries from their tables (reclaim.go).
	for _, id := range c.ids {
		if id == follower {
			continue
		}
		waitFor(t, 10*time.Second, fmt.Sprintf("host %d to excise a truncated prefix", id), func() bool {
			return c.hosts[id].Stats().LogExcises > 0
		})
		if s := c.hosts[id].Stats(); s.LogExciseErrors != 0 {
			t.Fatalf("host %d: %d excises failed", id, s.LogExciseErrors)
		}
	}
}

func TestPartitionedFollowerCatchesUpBySnapshot(t *testing.T) {
	c := newCluster(t, 3, []uint64{1}, func(cfg *Config) { cfg.SnapshotEntries = 10 })
	c.propose(1, "first")
	victim := c.follower(1)
	c.net.Isolate(victim)
	rest := slices.DeleteFunc(slices.Clone(c.ids), func(id uint64) bool { return id == victim })
	for i := range 100 {
		c.propose(1, fmt.Sprintf("p%d", i))
	}
	restoresBefore := c.host(victim).Stats().Restores
	// The log was compacted past the victim: margin is SnapshotEntries/2.
	nl := c.leader(1, rest)
	if first, _ := c.host(nl).mustGroup(t, 1).ms.FirstIndex(); first <= 3 {
		t.Fatalf("leader log not compacted: first index %d", first)
	}
	c.net.Heal()
	c.waitApplied(1, 101)
	c.checkSame(1)
	if c.host(victim).Stats().Restores == restoresBefore {
		t.Fatalf("victim caught up without a snapshot")
	}
	// Neither replica keeps a snapshot's data in memory (it is the whole
	// state machine): the leader read it back from its engine to send it
	// (the victim could not have caught up otherwise), and the victim's
	// log store keeps only the restored snapshot's metadata.
	if s, _ := c.host(victim).mustGroup(t, 1).ms.Snapshot(); s.GetMetadata().GetIndex() <= 1 || len(s.GetData()) != 0 {
		t.Fatalf("victim's log store snapshot: index %d, %d bytes of data kept", s.GetMetadata().GetIndex(), len(s.GetData()))
	}
}

// mustGroup is for tests that look inside (only read fields safe to read
// from another goroutine, such as MemoryStorage's locked methods).
func (h *Host) mustGroup(t testing.TB, id uint64) *group {
	t.Helper()
	g, err := h.lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestReadIndex(t *testing.T) {
	c := newCluster(t, 3, []uint64{1}, nil)
	for i := range 10 {
		c.propose(1, fmt.Sprintf("w%d", i))
		lead := c.leader(1, nil)
		got, err := c.host(lead).Read(context.Background(), 1, []byte(fmt.Sprintf("w%d", i)))
		if err != nil || string(got) != "1" {
			t.Fatalf("read after write %d: %q, %v", i, got, err)
		}
	}
	// Concurrent reads share ReadIndex requests.
	lead := c.leader(1, nil)
	h := c.host(lead)
	before := h.Stats().ReadIndexes
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 200 {
		wg.Add(1)
		h.ReadAsync(1, []byte("len"), func(r []byte, err error) {
			if err != nil || string(r) != "10" {
				bad.Add(1)
			}
			wg.Done()
		})
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d bad reads", bad.Load())
	}
	if n := h.Stats().ReadIndexes - before; n >= 200 {
		t.Fatalf("reads not batched: %d ReadIndex requests for 200 reads", n)
	}

	// Partition the leader: a read there must not return (stale) data; the
	// majority elects a new leader and accepts a write.
	c.net.Isolate(lead)
	ch := make(chan result, 1)
	h.ReadAsync(1, []byte("len"), func(r []byte, err error) { ch <- result{r, err} })
	rest := slices.DeleteFunc(slices.Clone(c.ids), func(id uint64) bool { return id == lead })
	nl := c.leader(1, rest)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if _, err := c.host(nl).Propose(ctx, 1, []byte("new")); err != nil {
		t.Fatalf("write at new leader %d: %v", nl, err)
	}
	cancel()
	select {
	case r := <-ch:
		if r.err == nil {
			t.Fatalf("partitioned old leader answered a read: %q", r.val)
		}
		if !errors.Is(r.err, ErrNotLeader) {
			t.Fatalf("partitioned old leader read: %v; want ErrNotLeader", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("read on partitioned old leader neither failed nor answered")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if got, err := h.Read(ctx, 1, []byte("new")); err == nil {
		t.Fatalf("partitioned old leader answered %q", got)
	}
	c.net.Heal()
	got, err := c.host(nl).Read(context.Background(), 1, []byte("new"))
	if err != nil || string(got) != "1" {
		t.Fatalf("read at new leader: %q, %v", got, err)
	}
}

// Under drops, a partition and a leader restart, every acknowledged
// proposal appears exactly once, in the same order, on every replica, also
// after restarting all hosts from disk.
func TestNoAcknowledgedEntryLost(t *testing.T) {
	groups := []uint64{1, 2}
	c := newCluster(t, 3, groups, func(cfg *Config) { cfg.SnapshotEntries = 50 })
	var mu sync.Mutex
	acked := make(map[uint64]map[string]bool)
	for _, g := range groups {
		acked[g] = make(map[string]bool)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Int64
	for _, g := range groups {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(g*10 + uint64(w))))
				for {
					select {
					case <-stop:
						return
					default:
					}
					id := c.ids[rng.Intn(len(c.ids))]
					if l := c.anyLeaderHint(g); l != 0 {
						id = l
					}
					h := c.host(id)
					if h == nil {
						time.Sleep(5 * time.Millisecond)
						continue
					}
					cmd := fmt.Sprintf("g%d-w%d-%d", g, w, seq.Add(1))
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					_, err := h.Propose(ctx, g, []byte(cmd))
					cancel()
					if err == nil {
						mu.Lock()
						acked[g][cmd] = true
						mu.Unlock()
					} else {
						time.Sleep(2 * time.Millisecond)
					}
				}
			}()
		}
	}
	phase := func(d time.Duration) { time.Sleep(d) } // load runs meanwhile
	phase(300 * time.Millisecond)
	c.net.SetDropRate(0.1)
	phase(500 * time.Millisecond)
	c.net.Heal()
	c.net.SetDelay(0, 5*time.Millisecond) // reorders messages
	phase(400 * time.Millisecond)
	c.net.Heal()
	lead := c.leader(1, nil)
	c.net.Isolate(lead)
	phase(700 * time.Millisecond)
	c.net.Heal()
	lead = c.leader(2, nil)
	c.stop(lead)
	phase(400 * time.Millisecond)
	c.start(lead, nil)
	phase(400 * time.Millisecond)
	close(stop)
	wg.Wait()

	check := func(stage string) {
		t.Helper()
		for _, g := range groups {
			mu.Lock()
			want := len(acked[g])
			mu.Unlock()
			if want == 0 {
				t.Fatalf("group %d: nothing acknowledged", g)
			}
			// Wait for convergence, then check.
			var ref []string
			waitFor(t, 20*time.Second, fmt.Sprintf("%s: replicas of group %d to converge", stage, g), func() bool {
				var logs [][]string
				for _, id := range c.ids {
					logs = append(logs, c.sm(id, g).entries())
				}
				for _, l := range logs[1:] {
					if !slices.Equal(l, logs[0]) {
						return false
					}
				}
				ref = logs[0]
				return true
			})
			count := make(map[string]int)
			for _, e := range ref {
				count[e]++
			}
			mu.Lock()
			for cmd := range acked[g] {
				if count[cmd] != 1 {
					mu.Unlock()
					t.Fatalf("%s: group %d: acknowledged %q appears %d times", stage, g, cmd, count[cmd])
				}
			}
			mu.Unlock()
			for cmd, n := range count {
				if n != 1 {
					t.Fatalf("%s: group %d: %q applied %d times", stage, g, cmd, n)
				}
			}
			t.Logf("%s: group %d: %d acknowledged, %d applied", stage, g, want, len(ref))
		}
	}
	// Make sure every group commits a final entry so all replicas converge.
	for _, g := range groups {
		c.propose(g, fmt.Sprintf("final-%d", g))
	}
	check("after faults")
	for _, id := range c.ids {
		c.stop(id)
	}
	for _, id := range c.ids {
		c.start(id, nil)
	}
	for _, g := range groups {
		c.propose(g, fmt.Sprintf("final2-%d", g))
	}
	check("after restarting all hosts")
}

// anyLeaderHint returns some running host's view of the leader.
func (c *cluster) anyLeaderHint(g uint64) uint64 {
	for _, id := range c.ids {
		if h := c.host(id); h != nil {
			if l := h.Leader(g); l != 0 {
				return l
			}
		}
	}
	return 0
}

func TestCloseFailsPending(t *testing.T) {
	c := newCluster(t, 3, []uint64{1}, nil)
	c.propose(1, "x")
	lead := c.leader(1, nil)
	h := c.host(lead)
	// Cut the leader off so proposals cannot commit, then close it.
	c.net.Isolate(lead)
	const n = 50
	var wg sync.WaitGroup
	var calls atomic.Int64
	var badErr atomic.Value
	wg.Add(n)
	for i := range n {
		h.ProposeAsync(1, []byte(fmt.Sprintf("p%d", i)), func(_ []byte, err error) {
			if calls.Add(1) > n {
				badErr.Store(errors.New("callback called too often"))
			}
			if !errors.Is(err, ErrUnknownOutcome) && !errors.Is(err, ErrStopped) && !errors.Is(err, ErrNotLeader) {
				badErr.Store(fmt.Errorf("unexpected error %v", err))
			}
			wg.Done()
		})
	}
	rch := make(chan error, 1)
	h.ReadAsync(1, []byte("len"), func(_ []byte, err error) { rch <- err })
	c.stop(lead)
	wg.Wait()
	if err := <-rch; err == nil {
		t.Fatalf("read on closed host succeeded")
	}
	if v := badErr.Load(); v != nil {
		t.Fatal(v)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := h.Propose(context.Background(), 1, []byte("late")); !errors.Is(err, ErrStopped) {
		t.Fatalf("propose after close: %v", err)
	}
	done := make(chan error, 1)
	h.ProposeAsync(1, []byte("late"), func(_ []byte, err error) { done <- err })
	if err := <-done; !errors.Is(err, ErrStopped) {
		t.Fatalf("async propose after close: %v", err)
	}
	c.net.Heal()
}

func TestChangeReplicas(t *testing.T) {
	c := newCluster(t, 3, []uint64{1}, func(cfg *Config) { cfg.SnapshotEntries = 10 })
	for i := range 40 {
		c.propose(1, fmt.Sprintf("p%d", i))
	}
	// Host 4 joins: it starts the group empty and catches up by snapshot.
	c.ids = append(c.ids, 4)
	c.dirs[4] = t.TempDir()
	h4 := c.start(4, nil)
	change := func(changes ...*pb.ConfChangeSingle) {
		t.Helper()
		waitFor(t, 20*time.Second, "configuration change", func() bool {
			lead := c.leader(1, []uint64{1, 2, 3})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := c.host(lead).ChangeReplicas(ctx, 1, changes)
			if err != nil {
				t.Logf("ChangeReplicas: %v", err)
			}
			return err == nil
		})
	}
	change(&pb.ConfChangeSingle{Type: pb.ConfChangeAddNode.Enum(), NodeId: new(uint64(4))})
	c.waitApplied(1, 40)
	c.checkSame(1)
	if h4.Stats().Restores == 0 {
		t.Fatalf("host 4 caught up without a snapshot")
	}
	c.propose(1, "with4")
	c.waitApplied(1, 41)
	// Remove a follower (not the leader) and host 4 stays in; then a joint change.
	lead := c.leader(1, []uint64{1, 2, 3})
	victim := uint64(1)
	if victim == lead {
		victim = 2
	}
	change(&pb.ConfChangeSingle{Type: pb.ConfChangeRemoveNode.Enum(), NodeId: new(victim)})
	c.stop(victim)
	c.ids = slices.DeleteFunc(c.ids, func(id uint64) bool { return id == victim })
	c.propose(1, "without-victim")
	c.waitApplied(1, 42)
	c.checkSame(1)
	st, _ := c.host(lead).Status(1)
	if st.Applied == 0 {
		t.Fatalf("status %+v", st)
	}
	// Partition one of the remaining three: two of three still commit.
	others := slices.DeleteFunc(slices.Clone(c.ids), func(id uint64) bool { return id == lead })
	c.net.Isolate(others[0])
	c.propose(1, "quorum-of-3")
	c.net.Heal()
	c.waitApplied(1, 43)
	c.checkSame(1)
}

// Power failure of every host at once, twice, while proposals run: each
// host restarts from exactly what it had fsynced, and every proposal
// acknowledged before the crash is there exactly once, in the same order on
// every replica.
func TestCrashAllHostsKeepsAcknowledged(t *testing.T) {
	// Entries in the log engine (small ones, as here, by default), and
	// every entry's data in segments of a few kilobytes, so the crashes
	// meet records not yet applied to the engine and segments removed
	// and reused (segment.go).
	t.Run("engine", func(t *testing.T) { testCrashAllHostsKeepsAcknowledged(t, false) })
	t.Run("segments", func(t *testing.T) { testCrashAllHostsKeepsAcknowledged(t, true) })
}

func testCrashAllHostsKeepsAcknowledged(t *testing.T, segments bool) {
	groups := []uint64{1, 2}
	c := newCrashableCluster(t, 3, groups, func(cfg *Config) {
		cfg.SnapshotEntries = 40
		cfg.exciseMaxDefer = 20 * time.Millisecond // memtables never fill here
		if segments {
			cfg.segmentInlineMax = -1
			cfg.segmentTarget = 4 << 10
			cfg.segmentGCInterval = 20 * time.Millisecond
		}
	})
	var mu sync.Mutex
	acked := make(map[uint64]map[string]bool)
	for _, g := range groups {
		acked[g] = make(map[string]bool)
	}
	var seq atomic.Int64
	recording := false
	load := func(d time.Duration) {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		mu.Lock()
		recording = true
		mu.Unlock()
		for _, g := range groups {
			for w := range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						h := c.host(c.anyLeaderHint(g))
						if h == nil {
							time.Sleep(5 * time.Millisecond)
							continue
						}
						cmd := fmt.Sprintf("g%d-w%d-%d", g, w, seq.Add(1))
						ctx, cancel := context.WithTimeout(context.Background(), time.Second)
						_, err := h.Propose(ctx, g, []byte(cmd))
						cancel()
						if err == nil {
							// Acknowledgements that arrive once the crash
							// has begun are not guaranteed: the crash of
							// the three hosts is not one instant.
							mu.Lock()
							if recording {
								acked[g][cmd] = true
							}
							mu.Unlock()
						} else {
							time.Sleep(2 * time.Millisecond)
						}
					}
				}()
			}
		}
		time.Sleep(d)
		// The crash must meet excised log prefixes too (reclaim.go), and
		// segments removed and in use (segment.go): on a slow machine
		// they may take longer than d.
		for _, id := range c.ids {
			waitFor(t, 10*time.Second, fmt.Sprintf("host %d to excise a truncated prefix and remove a segment", id), func() bool {
				st := c.host(id).Stats()
				return st.LogExcises > 0 && (!segments || st.LogSegmentsRemoved > 0 && st.LogSegments > 0)
			})
		}
		// Freeze the set of acknowledged proposals, then crash everyone
		// while the load is still running.
		mu.Lock()
		recording = false
		must := make(map[uint64][]string)
		for g, m := range acked {
			for cmd := range m {
				must[g] = append(must[g], cmd)
			}
		}
		mu.Unlock()
		for _, id := range c.ids {
			c.crash(id)
		}
		close(stop)
		wg.Wait()
		c.net.Heal()
		for _, id := range c.ids {
			c.start(id, nil)
		}
		for _, g := range groups {
			c.propose(g, fmt.Sprintf("after-crash-%d", seq.Add(1)))
			var ref []string
			t.Cleanup(func() {
				if t.Failed() {
					for _, id := range c.ids {
						if h := c.host(id); h != nil {
							st, _ := h.Status(g)
							t.Logf("host %d: %+v sm len %d stats %+v", id, st, c.sm(id, g).len(), h.Stats())
						}
					}
					logs := map[uint64][]string{}
					for _, id := range c.ids {
						logs[id] = c.sm(id, g).entries()
					}
					ref := logs[c.ids[0]]
					for _, id := range c.ids[1:] {
						l := logs[id]
						i := 0
						for i < len(l) && i < len(ref) && l[i] == ref[i] {
							i++
						}
						if i < len(l) || i < len(ref) {
							lo := max(0, i-3)
							t.Logf("host %d diverges from host %d at %d: %v vs %v", id, c.ids[0], i, l[lo:min(len(l), i+6)], ref[lo:min(len(ref), i+6)])
						}
					}
				}
			})
			waitFor(t, 20*time.Second, fmt.Sprintf("group %d to converge", g), func() bool {
				ref = c.sm(c.ids[0], g).entries()
				for _, id := range c.ids[1:] {
					if !slices.Equal(c.sm(id, g).entries(), ref) {
						return false
					}
				}
				return true
			})
			count := make(map[string]int)
			for _, e := range ref {
				count[e]++
				if count[e] > 1 {
					t.Fatalf("group %d: %q applied twice", g, e)
				}
			}
			if len(must[g]) == 0 {
				t.Fatalf("group %d: nothing acknowledged before the crash", g)
			}
			for _, cmd := range must[g] {
				if count[cmd] != 1 {
					t.Fatalf("group %d: acknowledged %q lost in the crash", g, cmd)
				}
			}
			t.Logf("group %d: %d acknowledged before the crash, %d applied after", g, len(must[g]), len(ref))
		}
	}
	load(400 * time.Millisecond)
	load(400 * time.Millisecond)
}

// Once a proposal's done is called the host no longer uses its command: the
// memnode server puts it back into a buffer pool there, and the next
// request's encoding overwrites it. Commands scribbled over in done still
// apply as proposed on every replica, including a follower that was cut
// off meanwhile and catches up from the leader's log later.
func TestProposalCommandReusableAfterDone(t *testing.T) {
	c := newCluster(t, 3, []uint64{1}, nil)
	c.propose(1, "warm-up") // a leader
	lead := c.host(c.leader(1, nil))
	behind := c.follower(1)
	c.net.Isolate(behind)
	const n = 200
	errs := make(chan error, n)
	for i := range n {
		cmd := []byte(fmt.Sprintf("cmd-%03d", i))
		lead.ProposeAsync(1, cmd, func(_ []byte, err error) {
			for j := range cmd {
				cmd[j] = 'X'
			}
			errs <- err
		})
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.net.Heal()
	c.waitApplied(1, n+1)
	log := c.checkSame(1)
	if len(log) != n+1 {
		t.Fatalf("%d commands applied, want %d", len(log), n+1)
	}
	for i, cmd := range log[1:] {
		if want := fmt.Sprintf("cmd-%03d", i); cmd != want {
			t.Fatalf("command %d applied as %q, want %q", i, cmd, want)
		}
	}
}
