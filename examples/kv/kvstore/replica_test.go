package kvstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// startCluster starts an in-process cluster and a client of it.
func startCluster(t *testing.T, ctx context.Context) *client.Client {
	t.Helper()
	c, err := cluster.Start(cluster.Config{NoSync: true, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func openNode(t *testing.T, ctx context.Context, cl *client.Client, id string) *gcs.Node {
	t.Helper()
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// TestReplicasAgree runs three replicas with concurrent writers, joins a
// fourth mid-stream (state transfer), keeps writing through all four, and
// checks that every replica ends with the same digest at the same position,
// that no increment was lost, and that commands were applied in parallel.
func TestReplicasAgree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	cl := startCluster(t, ctx)
	// A short sleep in apply makes overlapping applies of disjoint keys
	// observable on a small machine; it changes no result.
	cfg := Config{Workers: 4, applyHook: func() { time.Sleep(200 * time.Microsecond) }}

	var (
		mu       sync.Mutex
		replicas []*Replica
	)
	join := func(i int) *Replica {
		r, err := Join(ctx, openNode(t, ctx, cl, fmt.Sprintf("r%d", i)), "kv", cfg)
		if err != nil {
			t.Fatalf("join r%d: %v", i, err)
		}
		mu.Lock()
		replicas = append(replicas, r)
		mu.Unlock()
		return r
	}
	for i := 1; i <= 3; i++ {
		join(i)
	}

	const (
		writers = 4
		perW    = 36
	)
	var (
		done     atomic.Int64 // commands completed
		wg       sync.WaitGroup
		resMu    sync.Mutex
		errs     []error
		incrPos  []uint64 // positions of the INCRs of "counter"
		clearPos uint64
	)
	pick := func(w, i int) *Replica {
		mu.Lock()
		defer mu.Unlock()
		return replicas[(w+i)%len(replicas)]
	}
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perW; i++ {
				k := fmt.Sprintf("k%d", (w*7+i)%10)
				var c Command
				switch i % 6 {
				case 0, 1:
					c = Set(k, []byte(fmt.Sprintf("w%d-%d", w, i)))
				case 2:
					c = Incr("counter", 1)
				case 3:
					c = MSet([]string{k, "m" + strconv.Itoa(w)}, [][]byte{[]byte("ms"), []byte(strconv.Itoa(i))})
				case 4:
					c = Del(k)
				case 5:
					c = Incr(fmt.Sprintf("c%d", w), 2)
				}
				if w == 0 && i == perW/2 {
					c = Clear() // a barrier in the middle of the stream
				}
				res, err := pick(w, i).Do(ctx, c)
				if err == nil && res.Err != nil && c.Op == OpIncr && c.Keys[0] == "counter" {
					err = fmt.Errorf("INCR counter: %w", res.Err)
				}
				resMu.Lock()
				switch {
				case err != nil:
					errs = append(errs, fmt.Errorf("writer %d op %d: %w", w, i, err))
				case c.Op == OpIncr && c.Keys[0] == "counter":
					incrPos = append(incrPos, res.Pos)
				case c.Op == OpClear:
					clearPos = res.Pos
				}
				resMu.Unlock()
				if err != nil {
					return
				}
				done.Add(1)
			}
		}()
	}

	// Join a fourth replica mid-stream; it restores the state at its join
	// view and then serves writers too.
	waitUntil(t, ctx, "a third of the writes", func() bool { return done.Load() >= writers*perW/3 })
	r4 := join(4)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}

	// One final command; every replica must reach its position with the
	// same digest.
	final, err := replicas[0].Do(ctx, Set("final", []byte("1")))
	if err != nil {
		t.Fatal(err)
	}
	states := make([]State, len(replicas))
	for i, r := range replicas {
		waitUntil(t, ctx, r.Name()+" at the final position", func() bool {
			s, err := r.State(ctx)
			if err != nil {
				t.Fatal(err)
			}
			states[i] = s
			return s.Pos >= final.Pos
		})
	}
	var maxPar int64
	for i, s := range states {
		t.Logf("%s: view %d pos %d keys %d digest %.12s restored at %d max parallel %d",
			s.Member, s.View, s.Pos, s.Keys, s.Digest, s.RestoredAt, s.MaxParallel)
		if s.Pos != final.Pos || s.Digest != states[0].Digest || s.Keys != states[0].Keys {
			t.Errorf("replica %d (%s) at pos %d digest %s; replica 0 at %d digest %s",
				i, s.Member, s.Pos, s.Digest, states[0].Pos, states[0].Digest)
		}
		maxPar = max(maxPar, s.MaxParallel)
	}
	if s4 := states[3]; s4.Member != r4.Name() || s4.RestoredAt == 0 {
		t.Errorf("the fourth replica did not start from a snapshot: %+v", s4)
	}
	// The INCRs of "counter" ordered after the CLEAR must all be there.
	after := 0
	for _, p := range incrPos {
		if p > clearPos {
			after++
		}
	}
	for _, r := range replicas {
		v, _ := r.Get("counter")
		if got, want := string(v), strconv.Itoa(after); got != want && !(got == "" && after == 0) {
			t.Errorf("%s: counter %q, want %s increments after the CLEAR", r.Name(), got, want)
		}
	}
	if maxPar < 2 {
		t.Errorf("no replica applied two commands at once (max %d): the parallel path was not exercised", maxPar)
	}

	for _, r := range replicas {
		if err := r.Leave(ctx); err != nil {
			t.Errorf("leave %s: %v", r.Name(), err)
		}
	}
}

// TestJoinWithoutState: a replica that joins a group whose oldest member
// offers no snapshot refuses to start with an empty state.
func TestJoinWithoutState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := startCluster(t, ctx)
	g, err := openNode(t, ctx, cl, "plain").Join(ctx, "kv", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range g.Events() {
		}
	}()
	if _, err := Join(ctx, openNode(t, ctx, cl, "r1"), "kv", Config{}); !errors.Is(err, ErrNoState) {
		t.Fatalf("Join = %v, want ErrNoState", err)
	}
	if err := g.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	<-drained
}
