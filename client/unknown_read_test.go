package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// After an Enqueue whose outcome is unknown, Enqueued false must mean the
// item will never land at pos (the type's documentation: it "may be
// retried"). A read served by ReadIndex does not wait for a proposal the
// leader has appended but not yet committed, so it can answer false for
// an enqueue that applies a moment later.
func TestEnqueuedFalseMeansNeverApplied(t *testing.T) {
	const mn = 1
	f := cluster.NewFaults()
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2, WrapTransport: f.Wrap})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	q, err := client.OpenQueue(ctx, cl, client.QueueConfig{Memnode: mn, Base: 0x1000, Capacity: 8, SlotSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, item("warm")); err != nil {
		t.Fatal(err)
	}
	f.HoldAppends(mn)
	defer f.ReleaseAppends()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	pos, err := q.Enqueue(short, item("once"))
	cancel()
	if !errors.Is(err, client.ErrUnknownOutcome) {
		t.Fatalf("enqueue with appends held: pos %d, err %v; want an unknown outcome", pos, err)
	}
	attempt := err
	// A logged Enqueued waits for the appends: release them meanwhile.
	go func() {
		time.Sleep(300 * time.Millisecond)
		f.ReleaseAppends()
	}()
	landed, err := q.Enqueued(ctx, pos, item("once"), attempt)
	if err != nil {
		t.Fatal(err)
	}
	if landed {
		return // ordered after the attempt, it saw it
	}
	// "Not enqueued": the producer may retry. The first attempt must not
	// land now that the appends go through.
	f.ReleaseAppends()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if now, err := q.Enqueued(ctx, pos, item("once")); err != nil || now {
			t.Fatalf("Enqueued(%d) said false, then the attempt applied (now %v, %v): a retry would enqueue the item twice", pos, now, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, bounded by deadline
	}
}

// An Alloc whose ctx ends while its minitransaction is appended and not yet
// committed does not know whether it allocated. Settling that with the
// ended ctx could only fail: Alloc returned an unknown outcome and the
// block, allocated a moment later, leaked. It now reads back on a context of
// its own, logged after the attempt, and returns the region it got.
func TestAllocSettlesAfterItsContextEnded(t *testing.T) {
	const mn = 1
	f := cluster.NewFaults()
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2, WrapTransport: f.Wrap})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	a, err := client.NewAllocator(cl, client.AllocatorConfig{Memnode: mn, Base: 0x1000, Limit: 0x10000, Align: 64})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Alloc(ctx, 64); err != nil { // the header is initialised
		t.Fatal(err)
	}
	f.HoldAppends(mn)
	defer f.ReleaseAppends()
	go func() {
		time.Sleep(500 * time.Millisecond) // past the Alloc's ctx
		f.ReleaseAppends()
	}()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	r, err := a.Alloc(short, 64)
	cancel()
	if err != nil {
		t.Fatalf("alloc whose ctx ended with its minitransaction pending: %v", err)
	}
	if err := a.Free(ctx, r); err != nil {
		t.Fatalf("free of the region alloc returned: %v", err)
	}
}
