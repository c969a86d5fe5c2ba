package client_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// exampleClient starts a one-host local cluster for the runnable examples
// and returns a client and a function that stops both.
func exampleClient() (*client.Client, func()) {
	c, err := cluster.Start(cluster.Config{Hosts: 1, Memnodes: 1, NoSync: true})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		c.Close()
		panic(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		c.Close()
		panic(err)
	}
	return cl, func() { cl.Close(); c.Close() }
}

func ExampleAllocator() {
	cl, stop := exampleClient()
	defer stop()
	ctx := context.Background()

	// One allocator over [0x1000, 0x10000) of memnode 0. Any number of
	// processes may use the same config at once.
	a, err := client.NewAllocator(cl, client.AllocatorConfig{Memnode: 0, Base: 0x1000, Limit: 0x10000, Align: 64})
	if err != nil {
		panic(err)
	}
	r, err := a.Alloc(ctx, 100)
	if err != nil {
		panic(err)
	}
	fmt.Printf("region of %d bytes, 64-aligned: %v\n", r.Len, r.Addr%64 == 0)
	if err := a.Free(ctx, r); err != nil {
		panic(err)
	}
	again, _ := a.Alloc(ctx, 100)
	fmt.Println("freed region reused:", again == r)
	_, err = a.Alloc(ctx, 1<<20)
	fmt.Println("too big:", errors.Is(err, client.ErrExhausted))
	// Output:
	// region of 128 bytes, 64-aligned: true
	// freed region reused: true
	// too big: true
}

func overlaps(a, b client.Region) bool {
	return a.Memnode == b.Memnode && a.Addr < b.Addr+b.Len && b.Addr < a.Addr+a.Len
}

func TestAllocAlignsRoundsAndReuses(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)

	t.Run("align", func(t *testing.T) {
		a, err := client.NewAllocator(cl, client.AllocatorConfig{Base: 0x1000, Limit: 0x100000, Align: 64})
		if err != nil {
			t.Fatal(err)
		}
		var got []client.Region
		for _, size := range []uint64{1, 64, 65, 100, 1000} {
			r, err := a.Alloc(ctx, size)
			if err != nil {
				t.Fatal(err)
			}
			want := (size + 63) &^ 63
			if r.Memnode != 0 || r.Addr%64 != 0 || r.Len != want || r.Addr < 0x1000+32 || r.Addr+r.Len > 0x100000 {
				t.Fatalf("Alloc(%d) = %+v: want 64-aligned, Len %d, inside the range", size, r, want)
			}
			for _, o := range got {
				if overlaps(o, r) {
					t.Fatalf("%+v overlaps %+v", r, o)
				}
			}
			got = append(got, r)
		}
		// The caller owns every byte of a region: filling it with ones
		// must not disturb the allocator's own bookkeeping.
		for _, r := range got {
			mustExec(t, cl, client.NewTx().Write(0, r.Addr, bytes.Repeat([]byte{0xff}, int(r.Len))))
		}
		for _, r := range got {
			if err := a.Free(ctx, r); err != nil {
				t.Fatalf("free %+v: %v", r, err)
			}
		}
	})

	t.Run("split and reuse", func(t *testing.T) {
		a, err := client.NewAllocator(cl, client.AllocatorConfig{Base: 0x200000, Limit: 0x300000})
		if err != nil {
			t.Fatal(err)
		}
		big, err := a.Alloc(ctx, 256)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Free(ctx, big); err != nil {
			t.Fatal(err)
		}
		// First fit splits the 256-byte block: 64 bytes, a 16-byte block
		// header, then the 176-byte rest as a free block.
		small, err := a.Alloc(ctx, 64)
		if err != nil {
			t.Fatal(err)
		}
		if small.Addr != big.Addr || small.Len != 64 {
			t.Fatalf("after free, Alloc(64) = %+v, want the start of %+v", small, big)
		}
		rest, err := a.Alloc(ctx, 176)
		if err != nil {
			t.Fatal(err)
		}
		if rest.Addr != big.Addr+64+16 || rest.Len != 176 {
			t.Fatalf("Alloc(176) = %+v, want the rest of %+v at %#x", rest, big, big.Addr+80)
		}
		// The free list is empty again: the next region is fresh.
		fresh, err := a.Alloc(ctx, 8)
		if err != nil {
			t.Fatal(err)
		}
		if fresh.Addr < big.Addr+big.Len {
			t.Fatalf("Alloc(8) = %+v, want beyond %+v", fresh, big)
		}
	})
}

func TestAllocExhaustedAndBadInputChangeNothing(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)

	const base = 0x4000
	// Header (32) + three blocks of 16-byte header and 16-byte region.
	cfg := client.AllocatorConfig{Base: base, Limit: base + 32 + 3*32}
	a, err := client.NewAllocator(cl, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var rs []client.Region
	for i := 0; i < 3; i++ {
		r, err := a.Alloc(ctx, 16)
		if err != nil {
			t.Fatalf("alloc %d: %v", i, err)
		}
		rs = append(rs, r)
	}
	snapshot := func() []byte { return read(t, cl, 0, base, 32+3*32) }
	before := snapshot()

	if _, err := a.Alloc(ctx, 1); !errors.Is(err, client.ErrExhausted) {
		t.Fatalf("alloc in a full range: err = %v, want ErrExhausted", err)
	}
	if _, err := a.Alloc(ctx, 1<<30); !errors.Is(err, client.ErrExhausted) {
		t.Fatalf("alloc larger than the range: err = %v, want ErrExhausted", err)
	}
	type refused struct {
		name string
		err  error
	}
	var bad []refused
	add := func(name string, err error) { bad = append(bad, refused{name, err}) }
	_, err = a.Alloc(ctx, 0)
	add("zero size", err)
	add("free on another memnode", a.Free(ctx, client.Region{Memnode: 1, Addr: rs[0].Addr, Len: 16}))
	add("free misaligned", a.Free(ctx, client.Region{Addr: rs[0].Addr + 4, Len: 16}))
	add("free wrong length", a.Free(ctx, client.Region{Addr: rs[0].Addr, Len: 32}))
	add("free zero length", a.Free(ctx, client.Region{Addr: rs[0].Addr}))
	add("free outside", a.Free(ctx, client.Region{Addr: base + 0x1000, Len: 16}))
	add("free inside a block header", a.Free(ctx, client.Region{Addr: rs[1].Addr - 16, Len: 16}))
	other, err := client.NewAllocator(cl, client.AllocatorConfig{Base: base, Limit: base + 0x1000})
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.Alloc(ctx, 8)
	add("alloc with another config", err)
	add("free with another config", other.Free(ctx, rs[0]))
	for _, b := range bad {
		if !errors.Is(b.err, client.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", b.name, b.err)
		}
	}
	if after := snapshot(); !bytes.Equal(before, after) {
		t.Fatalf("refused calls changed the allocator:\nbefore %x\nafter  %x", before, after)
	}

	// Space comes back through Free; a second Free of the same region is
	// refused.
	if err := a.Free(ctx, rs[1]); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(ctx, rs[1]); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("double free: err = %v, want ErrInvalid", err)
	}
	r, err := a.Alloc(ctx, 10)
	if err != nil || r != rs[1] {
		t.Fatalf("alloc after free = %+v, %v; want %+v", r, err, rs[1])
	}

	for _, tc := range []struct {
		name string
		cl   *client.Client
		cfg  client.AllocatorConfig
	}{
		{"nil client", nil, cfg},
		{"align 3", cl, client.AllocatorConfig{Limit: 1 << 20, Align: 3}},
		{"align 4", cl, client.AllocatorConfig{Limit: 1 << 20, Align: 4}},
		{"align too large", cl, client.AllocatorConfig{Limit: 1 << 30, Align: 1 << 13}},
		{"misaligned base", cl, client.AllocatorConfig{Base: 4, Limit: 1 << 20}},
		{"limit below base", cl, client.AllocatorConfig{Base: 1 << 20, Limit: 1 << 10}},
		{"no room for a block", cl, client.AllocatorConfig{Base: 0, Limit: 32 + 16}},
	} {
		if _, err := client.NewAllocator(tc.cl, tc.cfg); !errors.Is(err, client.ErrInvalid) {
			t.Errorf("NewAllocator %s: err = %v, want ErrInvalid", tc.name, err)
		}
	}
}

// Several clients allocate and free at once. Every region handed out is
// checked against the regions currently held by anyone, and each holder
// stamps its region at both ends and checks the stamps before freeing, so
// an overlap in either direction is caught.
func TestAllocConcurrentClientsNeverOverlap(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	const clients, perClient, ops = 3, 2, 25
	cfg := client.AllocatorConfig{Base: 0x8000, Limit: 0x8000 + 64<<10}

	var mu sync.Mutex
	live := map[client.Region]uint64{} // region → holder's stamp
	errc := make(chan error, clients*perClient)
	var wg sync.WaitGroup
	for ci := 0; ci < clients; ci++ {
		cl := newClient(t, c.Seeds())
		a, err := client.NewAllocator(cl, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for w := 0; w < perClient; w++ {
			wg.Add(1)
			worker := uint64(ci*perClient + w + 1)
			go func() {
				defer wg.Done()
				errc <- allocWorker(ctxT(t), cl, a, worker, ops, &mu, live)
			}()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func allocWorker(ctx context.Context, cl *client.Client, a *client.Allocator, worker uint64, ops int, mu *sync.Mutex, live map[client.Region]uint64) error {
	rng := rand.New(rand.NewPCG(worker, 42))
	var held []client.Region
	stamps := map[client.Region]uint64{}
	check := func(r client.Region) error {
		res, err := cl.Exec(ctx, client.NewTx().Read(r.Memnode, r.Addr, 8).Read(r.Memnode, r.Addr+r.Len-8, 8))
		if err != nil {
			return err
		}
		want := stamps[r]
		if a, b := binary.LittleEndian.Uint64(res.Reads[0]), binary.LittleEndian.Uint64(res.Reads[1]); a != want || b != want {
			return fmt.Errorf("worker %d: region %+v stamps %x/%x, want %x: someone else wrote into it", worker, r, a, b, want)
		}
		return nil
	}
	free := func(i int) error {
		r := held[i]
		if err := check(r); err != nil {
			return err
		}
		mu.Lock()
		delete(live, r)
		mu.Unlock()
		held = append(held[:i], held[i+1:]...)
		return a.Free(ctx, r)
	}
	for i := 0; i < ops; i++ {
		if len(held) > 0 && rng.IntN(3) == 0 {
			if err := free(rng.IntN(len(held))); err != nil {
				return err
			}
			continue
		}
		r, err := a.Alloc(ctx, uint64(8+rng.IntN(200)))
		if err != nil {
			return fmt.Errorf("worker %d: alloc: %w", worker, err)
		}
		mu.Lock()
		for o, owner := range live {
			if overlaps(o, r) {
				mu.Unlock()
				return fmt.Errorf("worker %d got %+v, overlapping %+v held by %x", worker, r, o, owner)
			}
		}
		stamps[r] = worker<<32 | uint64(i)
		live[r] = stamps[r]
		mu.Unlock()
		s := binary.LittleEndian.AppendUint64(nil, stamps[r])
		if _, err := cl.Exec(ctx, client.NewTx().Write(r.Memnode, r.Addr, s).Write(r.Memnode, r.Addr+r.Len-8, s)); err != nil {
			return err
		}
		held = append(held, r)
	}
	for len(held) > 0 {
		if err := free(len(held) - 1); err != nil {
			return err
		}
	}
	return nil
}

// FreeWith frees a region in one minitransaction with a guard: here the
// owner's record on another memnode, which the free clears. A failed guard
// compare frees and writes nothing; a matching one frees the region and
// applies the guard's writes together, so the region is freed exactly once
// however often the owner's cleanup is retried.
func TestFreeWithGuard(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	a, err := client.NewAllocator(cl, client.AllocatorConfig{Memnode: 0, Base: 0x1000, Limit: 0x100000})
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.Alloc(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	const owner = 0x2000 // on memnode 1: the guard makes it two-phase
	if _, err := cl.Exec(ctx, client.NewTx().Write(1, owner, []byte("owner-01"))); err != nil {
		t.Fatal(err)
	}
	record := func() string {
		res, err := cl.Exec(ctx, client.NewTx().Read(1, owner, 8))
		if err != nil {
			t.Fatal(err)
		}
		return string(res.Reads[0])
	}

	err = a.FreeWith(ctx, r, client.NewTx().Compare(1, owner, []byte("owner-02")).Write(1, owner, make([]byte, 8)))
	if !errors.Is(err, client.ErrGuardFailed) || record() != "owner-01" {
		t.Fatalf("FreeWith with a failing guard: %v, record %q", err, record())
	}
	if err := a.FreeWith(ctx, r, client.NewTx().Read(1, owner, 8)); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("FreeWith with a read in the guard: %v, want ErrInvalid", err)
	}
	// Still allocated: nothing above freed it. Now the guard matches.
	if err := a.FreeWith(ctx, r, client.NewTx().Compare(1, owner, []byte("owner-01")).Write(1, owner, make([]byte, 8))); err != nil {
		t.Fatalf("FreeWith: %v", err)
	}
	if got := record(); got != string(make([]byte, 8)) {
		t.Fatalf("record after FreeWith: %q, want zeros", got)
	}
	if err := a.Free(ctx, r); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("second free: %v, want ErrInvalid (freed once, by FreeWith)", err)
	}
	if again, err := a.Alloc(ctx, 100); err != nil || again != r {
		t.Fatalf("Alloc after FreeWith: %+v %v, want the freed region %+v", again, err, r)
	}
}

// TestAllocRefusesAFreeListThatLinksAnAllocatedBlock: a free list that
// links a block marked allocated (corrupt: an Alloc takes a block off the
// list in the same minitransaction that marks it) is refused with
// ErrInvalid, as a free list that links a block outside the allocator is.
// Alloc used to take it for a block taken meanwhile and read again at
// once, without a pause, until its ctx ended (forever without one).
func TestAllocRefusesAFreeListThatLinksAnAllocatedBlock(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Hosts: 1, Memnodes: 1})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	a, err := client.NewAllocator(cl, client.AllocatorConfig{Base: 0x4000, Limit: 0x8000})
	if err != nil {
		t.Fatal(err)
	}
	r1, err := a.Alloc(ctx, 16)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Alloc(ctx, 16); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(ctx, r1); err != nil {
		t.Fatal(err)
	}
	// r1's block heads the free list; mark it allocated (length word,
	// state 1) and leave the list as it is.
	w := binary.LittleEndian.AppendUint64(nil, r1.Len|1)
	if _, err := cl.Exec(ctx, client.NewTx().Write(0, r1.Addr-16, w)); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := a.Alloc(actx, 16); !errors.Is(err, client.ErrInvalid) || actx.Err() != nil {
		t.Fatalf("alloc over a free list that links an allocated block: %v, want ErrInvalid at once", err)
	}
}
