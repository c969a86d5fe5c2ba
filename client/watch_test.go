package client_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/memnode/service"
)

func mustWatch(t *testing.T, cl *client.Client, mn uint64, rs ...client.Range) *client.Watch {
	t.Helper()
	w, err := cl.Watch(ctxT(t), mn, rs...)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	t.Cleanup(w.Close)
	return w
}

// next waits for the watch's next event.
func next(t *testing.T, w *client.Watch, within time.Duration) client.WatchEvent {
	t.Helper()
	select {
	case ev, ok := <-w.C():
		if !ok {
			t.Fatalf("watch channel closed: %v", w.Err())
		}
		return ev
	case <-time.After(within):
		t.Fatalf("no watch event within %v", within)
	}
	panic("unreachable")
}

func TestWatchReportsWritesInWatchedRanges(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true})
	cl := newClient(t, c.Seeds()[:1])
	w := mustWatch(t, cl, 1, client.Range{Addr: 0x1000, Len: 64}, client.Range{Addr: 0x3000, Len: 16})

	// Outside every watched range, then inside: events come in apply
	// order, so had the first write produced one, it would come first.
	mustExec(t, cl, client.NewTx().Write(1, 0x2000, []byte("outside")))
	mustExec(t, cl, client.NewTx().Write(2, 0x1000, []byte("other memnode")))
	mustExec(t, cl, client.NewTx().Write(1, 0x1010, []byte("inside!!")))
	ev := next(t, w, 10*time.Second)
	if ev.Reset || ev.Memnode != 1 || ev.Index == 0 || !slices.Equal(ev.Ranges, []client.Range{{Addr: 0x1010, Len: 8}}) {
		t.Fatalf("event %+v, want memnode 1, ranges [0x1010,+8)", ev)
	}
	// A write straddling a watched range's edge reports the intersection;
	// one write touching two watched ranges reports both parts.
	mustExec(t, cl, client.NewTx().Write(1, 0x0ff8, make([]byte, 16)))
	ev = next(t, w, 10*time.Second)
	if !slices.Equal(ev.Ranges, []client.Range{{Addr: 0x1000, Len: 8}}) {
		t.Fatalf("event %+v, want [0x1000,+8)", ev)
	}
	prev := ev.Index
	mustExec(t, cl, client.NewTx().Write(1, 0x1020, make([]byte, 0x3008-0x1020)))
	ev = next(t, w, 10*time.Second)
	if !slices.Equal(ev.Ranges, []client.Range{{Addr: 0x1020, Len: 0x20}, {Addr: 0x3000, Len: 8}}) || ev.Index <= prev {
		t.Fatalf("event %+v, want [0x1020,+0x20) [0x3000,+8) after index %d", ev, prev)
	}
	// A failed compare writes nothing and reports nothing.
	r := mustExec(t, cl, client.NewTx().Compare(1, 0x1000, []byte("nope")).Write(1, 0x1000, []byte("x")))
	if r.Committed {
		t.Fatal("compare should have failed")
	}
	mustExec(t, cl, client.NewTx().Write(1, 0x3000, []byte("z")))
	ev = next(t, w, 10*time.Second)
	if !slices.Equal(ev.Ranges, []client.Range{{Addr: 0x3000, Len: 1}}) {
		t.Fatalf("event %+v, want only [0x3000,+1)", ev)
	}
	// Read-your-notification: a read after the event sees the write.
	if got := read(t, cl, 1, 0x3000, 1); string(got) != "z" {
		t.Fatalf("read %q after the event", got)
	}
}

func TestWatchTwoPhaseNotifiesOnlyAfterCommit(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Recovery: service.RecoveryConfig{Disabled: true}})
	var tid client.TID
	crashing, err := client.New(ctxT(t), client.Config{Seeds: c.Seeds(), Crash: func(p client.CrashPoint, t client.TID) bool {
		if p == client.CrashAfterVotes {
			tid = t
			return true
		}
		return false
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer crashing.Close()
	cl := newClient(t, c.Seeds())
	w := mustWatch(t, cl, 1, client.Range{Addr: 0x100, Len: 8}, client.Range{Addr: 0x200, Len: 8})

	// Prepared everywhere, never decided: in doubt, holding its locks.
	_, err = crashing.Exec(ctxT(t), client.NewTx().Write(1, 0x100, []byte("2pc-1")).Write(2, 0x100, []byte("2pc-2")))
	if !errors.Is(err, client.ErrCoordinatorCrashed) {
		t.Fatalf("exec: %v, want a crashed coordinator", err)
	}
	mustExec(t, cl, client.NewTx().Write(1, 0x200, []byte("1pc")))
	if ev := next(t, w, 10*time.Second); !slices.Equal(ev.Ranges, []client.Range{{Addr: 0x200, Len: 3}}) {
		t.Fatalf("event %+v: the Prepare alone must not be reported", ev)
	}
	committed, err := cl.Recover(ctxT(t), tid, []uint64{1, 2})
	if err != nil || !committed {
		t.Fatalf("recover: committed %v, %v", committed, err)
	}
	if ev := next(t, w, 10*time.Second); !slices.Equal(ev.Ranges, []client.Range{{Addr: 0x100, Len: 5}}) {
		t.Fatalf("event %+v, want the committed [0x100,+5)", ev)
	}
	if got := read(t, cl, 1, 0x100, 5); string(got) != "2pc-1" {
		t.Fatalf("read %q after the commit event", got)
	}
}

func TestWatchFollowsLeaderAfterCrash(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true})
	cl := newClient(t, c.Seeds())
	rng := client.Range{Addr: 0x40, Len: 8}
	w := mustWatch(t, cl, 1, rng)
	mustExec(t, cl, client.NewTx().Write(1, 0x40, []byte("before")))
	if ev := next(t, w, 10*time.Second); ev.Reset || len(ev.Ranges) != 1 {
		t.Fatalf("event %+v before the crash", ev)
	}

	ctx := ctxT(t)
	old, err := c.CrashLeader(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	ev := next(t, w, 15*time.Second)
	if !ev.Reset || ev.Memnode != 1 {
		t.Fatalf("event %+v after the leader crashed, want a reset", ev)
	}
	nl, err := c.WaitLeader(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if nl == old {
		t.Fatalf("leader %d did not change", nl)
	}
	mustExec(t, cl, client.NewTx().Write(1, 0x44, []byte("after")))
	// Further resets may come while the cluster settles; the write must.
	for {
		ev := next(t, w, 10*time.Second)
		if !ev.Reset {
			if !slices.Equal(ev.Ranges, []client.Range{{Addr: 0x44, Len: 4}}) {
				t.Fatalf("event %+v, want [0x44,+4)", ev)
			}
			break
		}
	}
}

func TestWatchSlowConsumerCoalesces(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Hosts: 1, Memnodes: 2})
	cl := newClient(t, c.Seeds())
	const n = 200
	w := mustWatch(t, cl, 1, client.Range{Addr: 0, Len: 16 * n})
	// Nobody reads C while the writes run: neither the server nor the
	// client's receiver may wait for the consumer.
	for i := range n {
		mustExec(t, cl, client.NewTx().Write(1, uint64(16*i), []byte{1}))
	}
	seen := map[uint64]bool{}
	events := 0
	for len(seen) < n {
		ev := next(t, w, 10*time.Second)
		events++
		if ev.Reset {
			t.Fatalf("unexpected reset %+v", ev)
		}
		for _, r := range ev.Ranges {
			if r.Len != 1 || r.Addr%16 != 0 {
				t.Fatalf("event %+v: unexpected range %+v", ev, r)
			}
			seen[r.Addr/16] = true
		}
	}
	t.Logf("%d writes arrived in %d events", n, events)
	if events > n/10 {
		t.Fatalf("%d writes arrived in %d events: not coalesced", n, events)
	}
}

func TestWatchBadInput(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Hosts: 1, Memnodes: 2})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	size := memnode.DefaultConfig().Size
	for _, tc := range []struct {
		name string
		mn   uint64
		rs   []client.Range
		want error
	}{
		{"unknown memnode", 99, []client.Range{{Addr: 0, Len: 8}}, client.ErrUnknownMemnode},
		{"no range", 1, nil, client.ErrInvalid},
		{"empty range", 1, []client.Range{{Addr: 0, Len: 8}, {Addr: 16, Len: 0}}, client.ErrInvalid},
		{"wrapping range", 1, []client.Range{{Addr: ^uint64(0) - 2, Len: 8}}, client.ErrInvalid},
		{"beyond the address space", 1, []client.Range{{Addr: size - 4, Len: 8}}, client.ErrInvalid},
		{"starting at the end", 1, []client.Range{{Addr: size, Len: 1}}, client.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := cl.Watch(ctx, tc.mn, tc.rs...)
			if err == nil {
				w.Close()
				t.Fatal("watch succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
	// The last byte is fine.
	w := mustWatch(t, cl, 1, client.Range{Addr: size - 1, Len: 1})
	w.Close()
	if _, ok := <-w.C(); ok {
		t.Fatal("C still open after Close")
	}
}

func TestWatchClosedWithClient(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Hosts: 1, Memnodes: 2})
	ctx := ctxT(t)
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	w, err := cl.Watch(ctx, 1, client.Range{Addr: 0, Len: 8})
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if _, ok := <-w.C(); ok {
		t.Fatal("C still open after the client closed")
	}
	w.Close() // idempotent after the client closed it
	if _, err := cl.Watch(ctx, 1, client.Range{Addr: 0, Len: 8}); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("watch on a closed client: %v", err)
	}
}

// BenchmarkWatchLatency measures the time from the start of an Exec to the
// receipt of its watch event, and from Exec's return to the event, on a
// local three-host cluster (no fsync). The event is published when the
// entry applies, before the response leaves, so it often wins the race
// (negative return-to-event samples).
//
//	go test -run XXX -bench WatchLatency ./client
func BenchmarkWatchLatency(b *testing.B) {
	c, err := cluster.Start(cluster.Config{NoSync: true, DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	w, err := cl.Watch(ctx, 1, client.Range{Addr: 0, Len: 8})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	fromStart := make([]time.Duration, 0, b.N)
	fromReturn := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		got := make(chan time.Time, 1)
		go func() {
			<-w.C()
			got <- time.Now()
		}()
		if _, err := cl.Exec(ctx, client.NewTx().Write(1, 0, []byte{byte(i), byte(i >> 8)})); err != nil {
			b.Fatal(err)
		}
		returned := time.Now()
		var at time.Time
		select {
		case at = <-got:
		case <-ctx.Done():
			b.Fatal("no event")
		}
		fromStart = append(fromStart, at.Sub(start))
		fromReturn = append(fromReturn, at.Sub(returned))
	}
	b.StopTimer()
	p := func(ds []time.Duration, q float64) float64 {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return float64(ds[int(q*float64(len(ds)-1))].Microseconds())
	}
	b.ReportMetric(p(fromStart, 0.5), "p50-exec-to-event-µs")
	b.ReportMetric(p(fromStart, 0.99), "p99-exec-to-event-µs")
	b.ReportMetric(p(fromReturn, 0.5), "p50-return-to-event-µs")
}

// With WatchOptions.Data the events carry the written bytes: applying the
// data of the events in order (from a read after the watch started) tracks
// the watched memory exactly, though a slow consumer gets the writes
// coalesced — overlapping writes, writes straddling a range's edge, a
// two-memnode minitransaction.
func TestWatchDataTracksMemory(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Hosts: 1, Memnodes: 3})
	cl := newClient(t, c.Seeds())
	const base, size = 0x1000, 256
	w, err := cl.WatchWith(ctxT(t), 1, client.WatchOptions{Data: true}, client.Range{Addr: base, Len: size}, client.Range{Addr: 0x3000, Len: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	model := read(t, cl, 1, base, size) // zeros; no write ran yet
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range 100 {
		a := base - 8 + uint64(rnd.IntN(size))
		b := make([]byte, 1+rnd.IntN(24))
		for j := range b {
			b[j] = byte(i + 1)
		}
		tx := client.NewTx().Write(1, a, b)
		if i%10 == 0 {
			tx.Write(2, a, b)
		}
		mustExec(t, cl, tx)
	}
	want := read(t, cl, 1, base, size)
	events := 0
	for string(model) != string(want) {
		ev := next(t, w, 10*time.Second)
		events++
		if ev.Reset || ev.Data == nil {
			t.Fatalf("event %+v without data", ev)
		}
		for i, r := range ev.Ranges {
			if r.Addr < base || r.Addr+r.Len > base+size {
				t.Fatalf("range %+v outside the watch", r)
			}
			copy(model[r.Addr-base:], ev.Data[i])
			if b, ok := ev.Bytes(r.Addr, r.Len); !ok || string(b) != string(ev.Data[i]) {
				t.Fatalf("Bytes(%+v) = %x, %v", r, b, ok)
			}
		}
	}
	t.Logf("100 writes arrived in %d events", events)
	// A plain watch of the same range gets hints only.
	plain := mustWatch(t, cl, 1, client.Range{Addr: base, Len: size})
	mustExec(t, cl, client.NewTx().Write(1, base, []byte("hint")))
	if ev := next(t, plain, 10*time.Second); ev.Data != nil {
		t.Fatalf("event %+v of a watch without data", ev)
	}
	for {
		// Earlier events may still be on their way.
		ev := next(t, w, 10*time.Second)
		b, ok := ev.Bytes(base+1, 3)
		if !ok || string(b) != "int" {
			continue
		}
		if _, ok := ev.Bytes(base+2, 3); ok && slices.Equal(ev.Ranges, []client.Range{{Addr: base, Len: 4}}) {
			t.Fatalf("event %+v: Bytes beyond the written range", ev)
		}
		break
	}
}
