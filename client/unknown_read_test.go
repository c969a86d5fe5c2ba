package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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
	f, cl := withFaults(t)
	ctx := ctxT(t)
	q := openWarmQueue(t, ctx, cl, mn)
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

// withFaults starts a cluster of two memnodes whose Raft traffic goes
// through the returned Faults, and a client of it.
func withFaults(t *testing.T) (*cluster.Faults, *client.Client) {
	t.Helper()
	f := cluster.NewFaults()
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2, WrapTransport: f.Wrap})
	return f, newClient(t, c.Seeds())
}

// newTestAllocator returns the tests' allocator on memnode mn.
func newTestAllocator(t *testing.T, cl *client.Client, mn uint64) *client.Allocator {
	t.Helper()
	a, err := client.NewAllocator(cl, client.AllocatorConfig{Memnode: mn, Base: 0x1000, Limit: 0x10000, Align: 64})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// openWarmQueue opens the tests' queue on memnode mn and enqueues an item.
func openWarmQueue(t *testing.T, ctx context.Context, cl *client.Client, mn uint64) *client.Queue {
	t.Helper()
	q, err := client.OpenQueue(ctx, cl, client.QueueConfig{Memnode: mn, Base: 0x1000, Capacity: 8, SlotSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, item("warm")); err != nil {
		t.Fatal(err)
	}
	return q
}

// inTransit starts a cluster of two memnodes and a client of it whose
// transport can take one request aside (cluster.Transit).
func inTransit(t *testing.T) (*cluster.Cluster, *client.Client, *cluster.Transit) {
	t.Helper()
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2})
	transit := cluster.NewTransit()
	return c, newClient(t, c.Seeds(), grpc.WithTransportCredentials(insecure.NewCredentials()), transit.DialOption()), transit
}

// An Enqueue whose request is still on its way to the leader when
// Enqueued settles it: a logged read alone is ordered before it and says
// "not enqueued", then the attempt lands and a retry would enqueue the item
// twice. Enqueued with the attempt's error fences it: it never lands.
func TestEnqueuedFalseIsFinalForAnAttemptInTransit(t *testing.T) {
	const mn = 1
	_, cl, transit := inTransit(t)
	ctx := ctxT(t)
	q := openWarmQueue(t, ctx, cl, mn)
	transit.Arm(mn)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	pos, attempt := q.Enqueue(short, item("once"))
	cancel()
	if _, held := transit.Held(); !held || !errors.Is(attempt, client.ErrUnknownOutcome) {
		t.Fatalf("enqueue taken aside in transit: held %v, err %v; want an unknown outcome", held, attempt)
	}
	landed, err := q.Enqueued(ctx, pos, item("once"), attempt)
	if err != nil || landed {
		t.Fatalf("Enqueued before the attempt arrived: %v, %v; want false", landed, err)
	}
	if err := transit.Release(); err != nil {
		t.Fatal(err)
	}
	if landed, err := q.Enqueued(ctx, pos, item("once")); err != nil || landed {
		t.Fatalf("Enqueued(%d) said false, then the attempt in transit landed (%v, %v): a retry would enqueue the item twice", pos, landed, err)
	}
}

// An Alloc whose ctx ends while its minitransaction is appended and not yet
// committed does not know whether it allocated. Settling that with the
// ended ctx could only fail: Alloc returned an unknown outcome and the
// block, allocated a moment later, leaked. It now reads back on a context of
// its own, logged after the attempt, and returns the region it got.
func TestAllocSettlesAfterItsContextEnded(t *testing.T) {
	const mn = 1
	f, cl := withFaults(t)
	ctx := ctxT(t)
	a := newTestAllocator(t, cl, mn)
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

// An Alloc whose request is still on its way to the leader when Alloc
// settles it: the read back says "not allocated", Alloc tries again, and
// the attempt that lands later allocates a block nobody holds (leaked for
// good). The settling read fences it: it never lands.
func TestAllocAttemptInTransitDoesNotLeak(t *testing.T) {
	const mn = 1
	_, cl, transit := inTransit(t)
	ctx := ctxT(t)
	a := newTestAllocator(t, cl, mn)
	first, err := a.Alloc(ctx, 64)
	if err != nil {
		t.Fatal(err)
	}
	second, err := a.Alloc(ctx, 64)
	if err != nil {
		t.Fatal(err)
	}
	transit.Arm(mn)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	r, err := a.Alloc(short, 64)
	cancel()
	if _, held := transit.Held(); !held || err == nil {
		t.Fatalf("alloc taken aside in transit: held %v, region %+v, err %v; want an error", held, r, err)
	}
	if err := transit.Release(); err != nil {
		t.Fatal(err)
	}
	next, err := a.Alloc(ctx, 64)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2*second.Addr - first.Addr; next.Addr != want {
		t.Fatalf("after an alloc that failed: got block %#x, want %#x (the failed attempt's block, leaked if it landed)", next.Addr, want)
	}
}

// An Acquire whose request is still on its way to the leader when its ctx
// ends: reading the record back with the ended ctx failed, so the caller
// could not tell whether it held the lease, and the attempt that landed
// later made it the holder unawares, keeping everyone else out for a TTL.
// The settling read now runs on a context of its own and fences the
// attempt: the lease stays free.
func TestLeaseAcquireInTransitStaysFree(t *testing.T) {
	const mn = 1
	c, slow, transit := inTransit(t)
	ctx := ctxT(t)
	cfg := client.LeaseConfig{Memnode: mn, Addr: 0x3000, ID: 1, TTL: time.Minute}
	a, err := client.NewLease(slow, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ID = 2
	b, err := client.NewLease(newClient(t, c.Seeds()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	transit.Arm(mn)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	g, err := a.Acquire(short)
	cancel()
	if _, held := transit.Held(); !held || err == nil || errors.Is(err, client.ErrUnknownOutcome) {
		t.Fatalf("acquire taken aside in transit: held %v, grant %+v, err %v; want a definite failure", held, g, err)
	}
	if err := transit.Release(); err != nil {
		t.Fatal(err)
	}
	if g, err := b.Acquire(ctx); err != nil {
		t.Fatalf("another contender after the failed acquire: %+v, %v; want the lease (the attempt in transit must not have taken it)", g, err)
	}
}
