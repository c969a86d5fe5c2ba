package replication

import (
	"sync"
	"testing"
	"time"
)

// syncGate holds workers in their fsync while closed (see Config.beforeSync).
type syncGate struct {
	mu      sync.Mutex
	closed  bool
	held    chan struct{} // a worker entered a held fsync
	release chan struct{}
}

func newSyncGate() *syncGate {
	return &syncGate{held: make(chan struct{}, 16), release: make(chan struct{})}
}

func (g *syncGate) beforeSync() {
	g.mu.Lock()
	closed, release := g.closed, g.release
	g.mu.Unlock()
	if !closed {
		return
	}
	g.held <- struct{}{}
	<-release
}

func (g *syncGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// letOneThrough lets the fsync held now finish; the gate stays closed.
func (g *syncGate) letOneThrough() {
	g.mu.Lock()
	old := g.release
	g.release = make(chan struct{})
	g.mu.Unlock()
	close(old)
}

func (g *syncGate) open() {
	g.mu.Lock()
	g.closed = false
	close(g.release)
	g.mu.Unlock()
}

// TestCommittedEntryAnsweredBeforeNextFsync: a leader's committed entry is
// applied, and its proposer answered, while the same cycle's fsync of
// newer proposals is still under way. Before, the answer waited for that
// fsync: every proposal committed while others arrived paid one fsync
// more than its own.
func TestCommittedEntryAnsweredBeforeNextFsync(t *testing.T) {
	gate := newSyncGate()
	c := newCluster(t, 1, []uint64{1}, func(cfg *Config) {
		cfg.Workers = 1
		cfg.beforeSync = gate.beforeSync
	})
	c.propose(1, "warm")
	h := c.host(c.leader(1, nil))

	gate.close()
	type answer struct {
		res []byte
		err error
	}
	propose := func(cmd string) chan answer {
		// Queued in the group's inbox when enqueueProposal returns.
		ch := make(chan answer, 1)
		if err := h.enqueueProposal(1, []byte(cmd), func(res []byte, err error) { ch <- answer{res, err} }); err != nil {
			t.Fatal(err)
		}
		return ch
	}
	a := propose("a")
	waitHeld := func(what string) {
		t.Helper()
		select {
		case <-gate.held:
		case <-time.After(10 * time.Second):
			t.Fatalf("no fsync held for %s", what)
		}
	}
	waitHeld("a")
	// b reaches the worker while a's entry is being persisted: the next
	// cycle commits a and persists b.
	b := propose("b")
	gate.letOneThrough()
	waitHeld("b")
	select {
	case r := <-a:
		if r.err != nil {
			t.Fatalf("a: %v", r.err)
		}
	case <-time.After(5 * time.Second):
		gate.open()
		t.Fatal("a was not answered while b's fsync was held: its answer waits for the next entries' fsync")
	}
	select {
	case r := <-b:
		t.Fatalf("b answered before its fsync: %+v", r)
	default:
	}
	gate.open()
	select {
	case r := <-b:
		if r.err != nil {
			t.Fatalf("b: %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b not answered")
	}
	if got := c.sm(c.leader(1, nil), 1).entries(); len(got) != 3 || got[1] != "a" || got[2] != "b" {
		t.Fatalf("applied %v, want [warm a b]", got)
	}
}
