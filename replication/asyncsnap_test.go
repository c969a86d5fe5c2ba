package replication

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"
)

// bigSM is a testSM whose snapshot carries a state of a given size after
// the log (a memnode's touched pages, say).
type bigSM struct {
	*testSM
	pad int
}

func (s *bigSM) Snapshot() ([]byte, error) {
	b, err := s.testSM.Snapshot()
	if err != nil {
		return nil, err
	}
	return append(b, make([]byte, s.pad)...), nil
}

func (s *bigSM) Restore(b []byte) error { return s.testSM.Restore(b[:len(b)-s.pad]) }

// A large snapshot used to be written and synced on the worker, which
// served none of its groups meanwhile: with 256 MiB of state in one group,
// a proposal to another group on the same worker waited up to 3.3 s
// (24 ms with 1 MiB). Now only the state machine's copy is made on the
// worker, and the file is written on another goroutine: while that write
// is held, both groups go on committing; once it is let go, the snapshot
// is installed on every host, and a host restarted afterwards restores
// it (the log behind it compacted) and catches up.
func TestLargeSnapshotWrittenOffTheWorker(t *testing.T) {
	defer func(old int) { asyncSnapshotBytes = old }(asyncSnapshotBytes)
	asyncSnapshotBytes = 64 << 10
	held, writing := newGate(), make(chan struct{}, 16)
	c := newClusterSM(t, 3, []uint64{1, 2}, func(cfg *Config) {
		cfg.Workers = 1
		cfg.SnapshotEntries = 50
		cfg.beforeSnapWrite = func() {
			writing <- struct{}{}
			held.wait()
		}
	}, func() StateMachine { return &bigSM{testSM: newTestSM(), pad: 128 << 10} })
	release := held.release   // this and later writes go through
	t.Cleanup(release)        // before the cluster's: Close waits for the writes
	for i := 0; i < 60; i++ { // past SnapshotEntries: the writes start
		c.propose(1, "a"+strconv.Itoa(i))
	}
	select {
	case <-writing:
	case <-time.After(20 * time.Second):
		t.Fatal("no snapshot write started after 60 entries (SnapshotEntries 50)")
	}
	// Held: both groups still commit, on every host.
	for i := 0; i < 20; i++ {
		c.propose(2, "b"+strconv.Itoa(i))
		c.propose(1, "c"+strconv.Itoa(i))
	}
	c.waitApplied(2, 20)
	c.waitApplied(1, 80)
	for _, id := range c.ids {
		if n := c.host(id).stats.snapshots.Load(); n != 0 {
			t.Fatalf("host %d installed %d snapshots while their writes were held", id, n)
		}
	}
	release()
	waitFor(t, 20*time.Second, "the snapshots installed", func() bool {
		for _, id := range c.ids {
			if c.host(id).stats.snapshots.Load() == 0 {
				return false
			}
		}
		return true
	})
	// A restarted host recovers group 1 from the snapshot and the log.
	f := c.follower(1)
	c.stop(f)
	h := c.start(f, nil)
	if n := h.stats.restores.Load(); n == 0 {
		t.Fatalf("host %d restarted without restoring a snapshot", f)
	}
	c.waitApplied(1, 80)
	if want := c.checkSame(1); len(want) != 80 {
		t.Fatalf("group 1 holds %d commands, want 80", len(want))
	}
	c.propose(1, "after")
	c.waitApplied(1, 81)
	c.checkSame(1)
}

// RemoveGroup waits for a snapshot file still being written and removes it
// with the group's other files: none is left behind in snap/.
func TestRemoveGroupWaitsForASnapshotWrite(t *testing.T) {
	defer func(old int) { asyncSnapshotBytes = old }(asyncSnapshotBytes)
	asyncSnapshotBytes = 64 << 10
	held, writing := newGate(), make(chan struct{}, 16)
	release := held.release
	c := newClusterSM(t, 1, []uint64{1}, func(cfg *Config) {
		cfg.SnapshotEntries = 20
		cfg.beforeSnapWrite = func() {
			writing <- struct{}{}
			held.wait()
		}
	}, func() StateMachine { return &bigSM{testSM: newTestSM(), pad: 128 << 10} })
	t.Cleanup(release)
	for i := 0; i < 25; i++ {
		c.propose(1, strconv.Itoa(i))
	}
	select {
	case <-writing:
	case <-time.After(20 * time.Second):
		t.Fatal("no snapshot write started")
	}
	h := c.host(1)
	removed := make(chan error, 1)
	go func() { removed <- h.RemoveGroup(context.Background(), 1) }()
	select {
	case err := <-removed:
		t.Fatalf("RemoveGroup returned (%v) while the group's snapshot file was being written", err)
	case <-time.After(200 * time.Millisecond): // it must still be waiting
	}
	release()
	select {
	case err := <-removed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("RemoveGroup did not return after the write ended")
	}
	names, err := h.eng.fs.List(h.eng.snapDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 {
		t.Fatalf("snapshot files left after RemoveGroup: %v", names)
	}
}

// A snapshot raft sends to a follower used to be read back from its file
// on the worker, inside raft's call: every group on the worker waited for
// the read (a 256 MiB memnode: the whole file), and it was read again for
// every follower that needed it and every failed send. Now it is read on
// a goroutine of its own, raft is told to try later meanwhile, and the
// data is kept for the next sends: with the read held, the group still
// commits; two followers that fell behind get the snapshot from one read.
func TestSnapshotReadBackOffTheWorker(t *testing.T) {
	held, loading := newGate(), make(chan struct{}, 16)
	c := newClusterSM(t, 5, []uint64{1}, func(cfg *Config) {
		cfg.Workers = 1
		cfg.SnapshotEntries = 50
		cfg.beforeSnapLoad = func() {
			loading <- struct{}{}
			held.wait()
		}
	}, func() StateMachine { return &bigSM{testSM: newTestSM(), pad: 256 << 10} })
	release := held.release
	t.Cleanup(release) // before the cluster's: Close waits for the reads
	lead := c.leader(1, nil)
	var behind []uint64
	for _, id := range c.ids {
		if id != lead && len(behind) < 2 {
			behind = append(behind, id)
			c.net.Isolate(id)
		}
	}
	// Past SnapshotEntries: the leader's log is compacted past them.
	for i := range 60 {
		c.propose(1, "a"+strconv.Itoa(i))
	}
	waitFor(t, 20*time.Second, "a snapshot on the leader", func() bool { return c.host(lead).stats.snapshots.Load() > 0 })
	c.net.Heal()
	select {
	case <-loading:
	case <-time.After(20 * time.Second):
		t.Fatal("the leader never read its snapshot back for the followers behind")
	}
	// Held: the group still commits (its worker is free).
	for i := range 5 {
		c.propose(1, "b"+strconv.Itoa(i))
	}
	release()
	c.waitApplied(1, 65)
	c.checkSame(1)
	lh := c.host(lead)
	lh.mu.Lock()
	g := lh.mu.groups[1]
	lh.mu.Unlock()
	if n := g.st.loads.Load(); n != 1 {
		t.Fatalf("the leader read its snapshot back %d times for %d followers, want once", n, len(behind))
	}
	for _, id := range behind {
		if c.host(id).stats.restores.Load() == 0 {
			t.Fatalf("host %d caught up without restoring a snapshot", id)
		}
	}
}

// gate holds whoever waits on it until released (once; later waits pass).
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) wait()    { <-g.ch }
func (g *gate) release() { g.once.Do(func() { close(g.ch) }) }
