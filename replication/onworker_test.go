package replication

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// oneGroupHost starts a host with group 1 of one voter and waits for its
// leadership.
func oneGroupHost(t *testing.T) (*Host, *group) {
	t.Helper()
	cfg := testConfig()
	cfg.ID = 1
	cfg.DataDir = "/data"
	cfg.Transport = NewFaultNetwork(1).Transport(1)
	h, err := newHost(cfg, vfs.NewMem())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.StartGroup(1, []uint64{1}, newTestSM()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "leadership", func() bool { return h.Leader(1) == 1 })
	g, err := h.lookup(1)
	if err != nil {
		t.Fatal(err)
	}
	return h, g
}

// blockWorker queues a function that holds g's worker until the returned
// release is called, and waits until it runs.
func blockWorker(t *testing.T, g *group) (release func()) {
	t.Helper()
	running, hold := make(chan struct{}), make(chan struct{})
	if err := g.enqueue(func(in *inbox) {
		in.fns = append(in.fns, workerFn{run: func() { close(running); <-hold }})
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-running:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking function did not run")
	}
	return func() { close(hold) }
}

// queued waits until g's inbox holds n functions.
func queued(t *testing.T, g *group, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, "functions queued", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.mu.in.fns) == n
	})
}

// A function for a group's worker that RemoveGroup overtook (the caller
// found the group before RemoveGroup took it off the host) is not run,
// and its caller hears ErrStopped. It used to hear nil: Membership then
// returned an empty configuration and TransferLeader success.
func TestWorkerFunctionAfterRemoveGroupIsRefused(t *testing.T) {
	h, g := oneGroupHost(t)
	release := blockWorker(t, g)
	removed := make(chan error, 1)
	go func() { removed <- h.RemoveGroup(context.Background(), 1) }()
	queued(t, g, 1) // the removal
	ran := false
	answer := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		answer <- g.onWorker(ctx, func(*group) { ran = true })
	}()
	queued(t, g, 2) // behind the removal, in the same batch
	release()
	if err := <-answer; !errors.Is(err, ErrStopped) || ran {
		t.Fatalf("function after the removal: ran %v, answer %v; want not run, ErrStopped", ran, err)
	}
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
}

// A function queued while the worker runs the batch that removes the
// group is dropped with the group's inbox: its caller hears ErrStopped at
// once. It used to wait until its ctx ended.
func TestWorkerFunctionDroppedByRemoveGroupIsAnswered(t *testing.T) {
	h, g := oneGroupHost(t)
	release1 := blockWorker(t, g)
	// One batch: a second blocker, then the removal.
	hold2, running2 := make(chan struct{}), make(chan struct{})
	if err := g.enqueue(func(in *inbox) {
		in.fns = append(in.fns, workerFn{run: func() { close(running2); <-hold2 }})
	}); err != nil {
		t.Fatal(err)
	}
	removed := make(chan error, 1)
	go func() { removed <- h.RemoveGroup(context.Background(), 1) }()
	queued(t, g, 2)
	release1()
	<-running2 // the batch with the removal is running; the inbox is empty
	answer := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		answer <- g.onWorker(ctx, func(*group) {})
	}()
	queued(t, g, 1)
	close(hold2)
	if err := <-answer; !errors.Is(err, ErrStopped) {
		t.Fatalf("function dropped with the removed group's inbox: %v, want ErrStopped", err)
	}
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
}
