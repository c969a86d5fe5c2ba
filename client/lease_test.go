package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func ExampleLease() {
	cl, stop := exampleClient()
	defer stop()
	ctx := context.Background()

	cfg := client.LeaseConfig{Memnode: 0, Addr: 0x100, TTL: 10 * time.Second, MaxSkew: time.Second}
	cfg.ID = 1
	a, _ := client.NewLease(cl, cfg)
	cfg.ID = 2
	b, _ := client.NewLease(cl, cfg)

	g, err := a.Acquire(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("holder", g.Holder, "epoch", g.Epoch)
	_, err = b.Acquire(ctx)
	fmt.Println("b while a holds:", errors.Is(err, client.ErrLeaseHeld))
	if g, err = a.Renew(ctx, g); err != nil { // before g.Expiry
		panic(err)
	}
	if err := a.Release(ctx, g); err != nil {
		panic(err)
	}
	g, _ = b.Acquire(ctx)
	fmt.Println("holder", g.Holder, "epoch", g.Epoch) // the fencing token grew
	// Output:
	// holder 1 epoch 1
	// b while a holds: true
	// holder 2 epoch 2
}

func TestLeaseAcquireRenewExpireRelease(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	ctx := ctxT(t)
	clk := newFakeClock()
	const addr = 0x2000
	newLease := func(id uint64, now func() time.Time) *client.Lease {
		l, err := client.NewLease(newClient(t, c.Seeds()), client.LeaseConfig{Addr: addr, ID: id, TTL: 10 * time.Second, MaxSkew: time.Second, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := newLease(1, clk.Now), newLease(2, clk.Now)
	holder := func() client.LeaseRecord {
		t.Helper()
		r, err := a.Holder(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	if r := holder(); r != (client.LeaseRecord{}) {
		t.Fatalf("fresh lease record %+v, want zero", r)
	}
	t0 := clk.Now()
	ga, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (client.LeaseRecord{Holder: 1, Expiry: t0.Add(10 * time.Second), Epoch: 1}); !ga.Expiry.Equal(want.Expiry) || ga.Holder != 1 || ga.Epoch != 1 {
		t.Fatalf("grant %+v, want %+v", ga, want)
	}
	if r := holder(); r.Holder != 1 || r.Epoch != 1 || !r.Expiry.Equal(ga.Expiry) || !r.HeldAt(clk.Now()) {
		t.Fatalf("record %+v after acquire, want %+v", r, ga)
	}
	if _, err := b.Acquire(ctx); !errors.Is(err, client.ErrLeaseHeld) {
		t.Fatalf("second contender: err = %v, want ErrLeaseHeld", err)
	}

	// Renew extends the expiry; the superseded grant is stale.
	clk.Advance(5 * time.Second)
	ga2, err := a.Renew(ctx, ga)
	if err != nil {
		t.Fatal(err)
	}
	if ga2.Epoch != 1 || !ga2.Expiry.Equal(clk.Now().Add(10*time.Second)) {
		t.Fatalf("renewed grant %+v", ga2)
	}
	if _, err := a.Renew(ctx, ga); !errors.Is(err, client.ErrNotHolder) {
		t.Fatalf("renew of a superseded grant: err = %v, want ErrNotHolder", err)
	}

	// At expiry, others still wait MaxSkew; then one takes over.
	clk.Advance(10 * time.Second) // = ga2.Expiry
	if _, err := b.Acquire(ctx); !errors.Is(err, client.ErrLeaseHeld) {
		t.Fatalf("takeover inside MaxSkew: err = %v, want ErrLeaseHeld", err)
	}
	clk.Advance(time.Second)
	gb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("takeover after expiry+MaxSkew: %v", err)
	}
	if gb.Holder != 2 || gb.Epoch != 2 {
		t.Fatalf("takeover grant %+v, want holder 2 epoch 2", gb)
	}

	// The old holder can neither renew (expired on its clock) nor, with a
	// lagging clock that still believes in its grant, overwrite the record.
	if _, err := a.Renew(ctx, ga2); !errors.Is(err, client.ErrNotHolder) {
		t.Fatalf("renew after expiry: err = %v, want ErrNotHolder", err)
	}
	lagging := newLease(1, func() time.Time { return clk.Now().Add(-10 * time.Second) })
	if _, err := lagging.Renew(ctx, ga2); !errors.Is(err, client.ErrNotHolder) {
		t.Fatalf("stale holder's renew: err = %v, want ErrNotHolder", err)
	}
	if err := a.Release(ctx, ga2); !errors.Is(err, client.ErrNotHolder) {
		t.Fatalf("stale holder's release: err = %v, want ErrNotHolder", err)
	}
	if r := holder(); r.Holder != 2 || r.Epoch != 2 || !r.Expiry.Equal(gb.Expiry) {
		t.Fatalf("record %+v after a stale holder's attempts, want %+v", r, gb)
	}

	// Release frees the lease but keeps the epoch; the next token is larger.
	if err := b.Release(ctx, gb); err != nil {
		t.Fatal(err)
	}
	if r := holder(); r.Holder != 0 || r.Epoch != 2 || r.HeldAt(clk.Now()) {
		t.Fatalf("record %+v after release, want free at epoch 2", r)
	}
	ga3, err := a.Acquire(ctx)
	if err != nil || ga3.Epoch != 3 {
		t.Fatalf("acquire after release = %+v, %v; want epoch 3", ga3, err)
	}
	// A contender that acquires again under its own ID (a restart) gets a
	// new epoch, fencing its previous incarnation.
	ga4, err := a.Acquire(ctx)
	if err != nil || ga4.Epoch != 4 {
		t.Fatalf("re-acquire by the holder = %+v, %v; want epoch 4", ga4, err)
	}
	if _, err := a.Renew(ctx, ga3); !errors.Is(err, client.ErrNotHolder) {
		t.Fatalf("renew by the fenced incarnation: err = %v, want ErrNotHolder", err)
	}
}

func TestLeaseBadInputChangesNothing(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	good := client.LeaseConfig{Addr: 0x3000, ID: 7, TTL: time.Second}
	for _, tc := range []struct {
		name string
		cl   *client.Client
		mod  func(*client.LeaseConfig)
	}{
		{"nil client", nil, func(*client.LeaseConfig) {}},
		{"zero id", cl, func(c *client.LeaseConfig) { c.ID = 0 }},
		{"zero ttl", cl, func(c *client.LeaseConfig) { c.TTL = 0 }},
		{"negative skew", cl, func(c *client.LeaseConfig) { c.MaxSkew = -1 }},
		{"misaligned addr", cl, func(c *client.LeaseConfig) { c.Addr = 0x3003 }},
	} {
		cfg := good
		tc.mod(&cfg)
		if _, err := client.NewLease(tc.cl, cfg); !errors.Is(err, client.ErrInvalid) {
			t.Errorf("NewLease %s: err = %v, want ErrInvalid", tc.name, err)
		}
	}
	l, err := client.NewLease(cl, good)
	if err != nil {
		t.Fatal(err)
	}
	g, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := read(t, cl, 0, 0x3000, 24)
	foreign := g
	foreign.Holder = 8
	if _, err := l.Renew(ctx, foreign); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("renew of another contender's grant: err = %v, want ErrInvalid", err)
	}
	if err := l.Release(ctx, client.LeaseRecord{}); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("release of a zero grant: err = %v, want ErrInvalid", err)
	}
	if after := read(t, cl, 0, 0x3000, 24); string(after) != string(before) {
		t.Fatalf("refused calls changed the record: %x → %x", before, after)
	}
}

// Contenders on several clients race for one lease under a shared fake
// clock. A winner either releases or abandons the lease and moves the clock
// past its expiry. At every acquisition no other grant may still be valid,
// and epochs must go up by exactly one.
func TestLeaseContendersNeverHoldAtOnce(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	ctx := ctxT(t)
	clk := newFakeClock()
	const contenders, rounds, ttl = 4, 30, 10 * time.Second
	var (
		mu        sync.Mutex
		cur       *client.LeaseRecord
		lastEpoch uint64
		acquired  atomic.Int64
	)
	clients := []*client.Client{newClient(t, c.Seeds()), newClient(t, c.Seeds())}
	errc := make(chan error, contenders)
	var wg sync.WaitGroup
	for i := 0; i < contenders; i++ {
		l, err := client.NewLease(clients[i%2], client.LeaseConfig{Addr: 0x5000, ID: uint64(i + 1), TTL: ttl, Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- func() error {
				for n := 0; acquired.Load() < rounds; n++ {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					g, err := l.Acquire(ctx)
					if errors.Is(err, client.ErrLeaseHeld) {
						continue
					}
					if err != nil {
						return err
					}
					mu.Lock()
					if cur != nil && cur.HeldAt(clk.Now()) {
						mu.Unlock()
						return fmt.Errorf("%+v acquired while %+v is valid", g, *cur)
					}
					if g.Epoch != lastEpoch+1 {
						mu.Unlock()
						return fmt.Errorf("epoch %d after %d", g.Epoch, lastEpoch)
					}
					lastEpoch, cur = g.Epoch, &g
					mu.Unlock()
					acquired.Add(1)
					if n%3 == 0 { // abandon: let it expire
						clk.Advance(ttl)
						continue
					}
					mu.Lock()
					cur = nil
					mu.Unlock()
					if err := l.Release(ctx, g); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	if lastEpoch < rounds {
		t.Fatalf("%d acquisitions, want at least %d", lastEpoch, rounds)
	}
}
