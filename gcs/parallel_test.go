package gcs_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tutti-gcs/tutti/gcs"
)

// testDeadline bounds every wait in these tests; reaching it is a failure,
// never the expected path.
const testDeadline = 10 * time.Second

// op is a test message: an index in submit order and key ids (none: a
// barrier).
type op struct {
	i    int
	keys []int
	strs []string
}

func newOp(i int, keys ...int) *op {
	o := &op{i: i, keys: keys}
	for _, k := range keys {
		o.strs = append(o.strs, "k"+strconv.Itoa(k))
	}
	return o
}

func opKeys(o *op) []string { return o.strs }

func mustParallel[M any](t testing.TB, cfg gcs.ParallelConfig, keys func(M) []string, apply func(M) error) *gcs.Parallel[M] {
	t.Helper()
	p, err := gcs.NewParallelOf(cfg, keys, apply)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// noLeaks checks, at the end of the test, that the test left no goroutine
// behind (goroutines that existed when it started are ignored, so this works
// beside any TestMain and other tests' goroutines).
func noLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// waitFor polls cond until it holds or the test deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// TestParallelPerKeyOrder applies random workloads under several
// configurations and requires every key's apply sequence to equal the
// sequential one. The per-key logs are written without locks, so under -race
// the test also proves that conflicting applies are ordered by
// happens-before, not only by luck.
func TestParallelPerKeyOrder(t *testing.T) {
	noLeaks(t)
	const (
		nkeys = 40
		nmsgs = 20000
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	ops := make([]*op, nmsgs)
	for i := range ops {
		var keys []int
		if rng.IntN(500) != 0 { // 1 in 500 is a barrier
			n := 1 + rng.IntN(3)
			for range n {
				keys = append(keys, rng.IntN(nkeys)) // duplicates allowed
			}
		}
		ops[i] = newOp(i, keys...)
	}
	// The sequential order restricted to each key; a barrier is in every key.
	want := make([][]int, nkeys)
	for _, o := range ops {
		for k := range want {
			if len(o.keys) == 0 || slices.Contains(o.keys, k) {
				want[k] = append(want[k], o.i)
			}
		}
	}

	for _, cfg := range []gcs.ParallelConfig{
		{Workers: 1, MaxInFlight: 1},
		{Workers: 2, MaxInFlight: 3},
		{Workers: 8, MaxInFlight: 64},
		{Workers: 16, MaxInFlight: 4096},
	} {
		t.Run(fmt.Sprintf("workers=%d/inflight=%d", cfg.Workers, cfg.MaxInFlight), func(t *testing.T) {
			got := make([][]int, nkeys) // got[k] written only by applies holding k
			var running [nkeys]atomic.Int32
			var overlap atomic.Int64
			apply := func(o *op) error {
				ks := o.keys
				if len(ks) == 0 {
					ks = make([]int, nkeys)
					for k := range ks {
						ks[k] = k
					}
				}
				ks = slices.Compact(slices.Sorted(slices.Values(ks)))
				for _, k := range ks {
					if running[k].Add(1) != 1 {
						overlap.Add(1)
					}
				}
				if o.i%7 == 0 {
					runtime.Gosched() // vary the interleavings
				}
				for _, k := range ks {
					got[k] = append(got[k], o.i)
					running[k].Add(-1)
				}
				return nil
			}
			p := mustParallel(t, cfg, opKeys, apply)
			for _, o := range ops {
				if err := p.Submit(o); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if n := overlap.Load(); n != 0 {
				t.Errorf("%d applies overlapped another apply with the same key", n)
			}
			for k := range want {
				if !slices.Equal(got[k], want[k]) {
					t.Fatalf("key %d: applied %d messages in an order other than submit order (first %v, want %v)",
						k, len(got[k]), got[k][:min(len(got[k]), 10)], want[k][:min(len(want[k]), 10)])
				}
			}
			if s := p.Stats(); s.Submitted != nmsgs || s.Applied != nmsgs || s.InFlight != 0 {
				t.Errorf("stats %+v, want %d submitted and applied, none in flight", s, nmsgs)
			}
		})
	}
}

// TestParallelDisjointKeysOverlap fails if messages with disjoint keys are
// serialized: each apply waits until the other has started.
func TestParallelDisjointKeysOverlap(t *testing.T) {
	noLeaks(t)
	started := map[int]chan struct{}{0: make(chan struct{}), 1: make(chan struct{})}
	apply := func(o *op) error {
		close(started[o.i])
		select {
		case <-started[1-o.i]:
			return nil
		case <-time.After(testDeadline):
			return fmt.Errorf("message %d: the other message did not start: disjoint keys were serialized", o.i)
		}
	}
	p := mustParallel(t, gcs.ParallelConfig{Workers: 2, MaxInFlight: 2}, opKeys, apply)
	for _, o := range []*op{newOp(0, 1, 2), newOp(1, 3, 4)} {
		if err := p.Submit(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestParallelBarrier: a barrier runs after every earlier message and before
// every later one, even when the later ones have keys nobody holds.
func TestParallelBarrier(t *testing.T) {
	noLeaks(t)
	const before, after = 6, 6
	gate := make(chan struct{})
	var earlierDone, laterStarted atomic.Int32
	var barrierDone atomic.Bool
	var barrierSaw [2]int32
	apply := func(o *op) error {
		switch {
		case o.i < before:
			<-gate
			earlierDone.Add(1)
		case o.i == before:
			barrierSaw = [2]int32{earlierDone.Load(), laterStarted.Load()}
			barrierDone.Store(true)
		default:
			laterStarted.Add(1)
			if !barrierDone.Load() {
				return fmt.Errorf("message %d started before the barrier was applied", o.i)
			}
		}
		return nil
	}
	p := mustParallel(t, gcs.ParallelConfig{Workers: 4, MaxInFlight: 64}, opKeys, apply)
	i := 0
	for ; i < before; i++ {
		if err := p.Submit(newOp(i, i%3)); err != nil { // keys 0..2: some wait on a key
			t.Fatal(err)
		}
	}
	if err := p.Submit(newOp(i)); err != nil { // the barrier
		t.Fatal(err)
	}
	for i++; i <= before+after; i++ {
		if err := p.Submit(newOp(i, 100+i)); err != nil { // fresh keys
			t.Fatal(err)
		}
	}
	// Earlier messages are blocked on the gate; later ones must not start.
	waitFor(t, "workers busy", func() bool { return p.Stats().Running == 3 })
	if n := laterStarted.Load(); n != 0 {
		t.Fatalf("%d later messages started while earlier ones were running", n)
	}
	close(gate)
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if barrierSaw != [2]int32{before, 0} {
		t.Errorf("barrier saw %d earlier applied and %d later started, want %d and 0", barrierSaw[0], barrierSaw[1], before)
	}
	if n := laterStarted.Load(); n != after {
		t.Errorf("%d later messages applied, want %d", n, after)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestParallelBackpressure: Submit blocks at MaxInFlight and resumes as
// messages are applied; in-flight never exceeds the bound.
func TestParallelBackpressure(t *testing.T) {
	noLeaks(t)
	const bound, total = 3, 50
	gate := make(chan struct{})
	var applied atomic.Int64
	apply := func(o *op) error {
		<-gate
		applied.Add(1)
		return nil
	}
	p := mustParallel(t, gcs.ParallelConfig{Workers: 2, MaxInFlight: bound}, opKeys, apply)
	var returned atomic.Int64
	errc := make(chan error, 1)
	go func() {
		for i := range total {
			if err := p.Submit(newOp(i, i%5)); err != nil {
				errc <- err
				return
			}
			returned.Add(1)
			// A slot frees only after an apply has returned, so this holds
			// exactly, without timing.
			if n := returned.Load() - applied.Load(); n > bound {
				errc <- fmt.Errorf("%d submitted messages unapplied, bound %d", n, bound)
				return
			}
		}
		errc <- nil
	}()
	// With the gate closed nothing completes: the submitter must block with
	// exactly bound messages in flight.
	waitFor(t, "Submit to block", func() bool { return p.Stats().Blocked })
	if s := p.Stats(); s.InFlight != bound || s.Submitted != bound || returned.Load() != bound {
		t.Fatalf("blocked with stats %+v and %d Submits returned, want %d in flight", s, returned.Load(), bound)
	}
	close(gate)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testDeadline):
		t.Fatal("submitter stuck")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n := applied.Load(); n != total {
		t.Errorf("applied %d, want %d", n, total)
	}
}

// TestParallelCloseDrains: Close returns after every submitted message is
// applied, stops all goroutines, and refuses later Submits.
func TestParallelCloseDrains(t *testing.T) {
	noLeaks(t)
	var applied atomic.Int64
	apply := func(o *op) error {
		runtime.Gosched()
		applied.Add(1)
		return nil
	}
	p := mustParallel(t, gcs.ParallelConfig{Workers: 4, MaxInFlight: 1000}, opKeys, apply)
	const n = 1000
	for i := range n {
		if err := p.Submit(newOp(i, i%10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := applied.Load(); got != n {
		t.Fatalf("Close returned with %d of %d applied", got, n)
	}
	if err := p.Submit(newOp(n, 1)); !errors.Is(err, gcs.ErrParallelClosed) || !errors.Is(err, gcs.ErrClosed) {
		t.Errorf("Submit after Close: %v, want ErrParallelClosed and ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestParallelWait: Wait returns once everything submitted is applied, and
// the scheduler stays usable.
func TestParallelWait(t *testing.T) {
	noLeaks(t)
	var applied atomic.Int64
	p := mustParallel(t, gcs.ParallelConfig{Workers: 3}, opKeys, func(*op) error {
		applied.Add(1)
		return nil
	})
	for round := 1; round <= 3; round++ {
		for i := range 100 {
			if err := p.Submit(newOp(i, i%7, (i+1)%7)); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Wait(); err != nil {
			t.Fatal(err)
		}
		if got := applied.Load(); got != int64(100*round) {
			t.Fatalf("round %d: Wait returned with %d applied", round, got)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

var errBoom = errors.New("boom")

// TestParallelApplyError: an apply error stops the scheduler; messages that
// depend on the failed one are never applied; every entry point reports it.
func TestParallelApplyError(t *testing.T) {
	noLeaks(t)
	var appliedAfter atomic.Int64
	apply := func(o *op) error {
		if o.i == 10 {
			return errBoom
		}
		if o.i > 10 && o.keys[0] == 0 {
			appliedAfter.Add(1)
		}
		return nil
	}
	p := mustParallel(t, gcs.ParallelConfig{Workers: 2, MaxInFlight: 4}, opKeys, apply)
	var submitErr error
	for i := range 100 {
		if submitErr = p.Submit(newOp(i, 0)); submitErr != nil { // one key: a chain
			break
		}
	}
	waitErr := p.Wait()
	closeErr := p.Close()
	for name, err := range map[string]error{"Submit": submitErr, "Wait": waitErr, "Close": closeErr, "Err": p.Err()} {
		if !errors.Is(err, errBoom) {
			t.Errorf("%s returned %v, want an error wrapping %v", name, err, errBoom)
		}
	}
	if n := appliedAfter.Load(); n != 0 {
		t.Errorf("%d messages after the failed one on its key were applied", n)
	}
	if s := p.Stats(); s.Applied != 10 {
		t.Errorf("applied %d, want the 10 before the failure", s.Applied)
	}
}

// TestParallelApplyPanic: a panic (or runtime.Goexit) in apply becomes the
// scheduler's error; Close does not hang and leaks nothing.
func TestParallelApplyPanic(t *testing.T) {
	for name, fail := range map[string]func(){
		"panic":  func() { panic("kaboom") },
		"goexit": runtime.Goexit,
	} {
		t.Run(name, func(t *testing.T) {
			noLeaks(t)
			p := mustParallel(t, gcs.ParallelConfig{Workers: 2}, opKeys, func(o *op) error {
				if o.i == 3 {
					fail()
				}
				return nil
			})
			for i := range 10 {
				if err := p.Submit(newOp(i, i%2)); err != nil {
					break
				}
			}
			err := p.Close()
			if !errors.Is(err, gcs.ErrApplyPanic) {
				t.Fatalf("Close: %v, want ErrApplyPanic", err)
			}
			if name == "panic" && !errors.Is(p.Err(), gcs.ErrApplyPanic) {
				t.Errorf("Err: %v", p.Err())
			}
		})
	}
}

func TestParallelConfigValidate(t *testing.T) {
	if err := (gcs.ParallelConfig{}).Validate(); err != nil {
		t.Errorf("zero config (defaults): %v", err)
	}
	err := gcs.ParallelConfig{Workers: -1, MaxInFlight: -2}.Validate()
	if err == nil {
		t.Fatal("negative Workers and MaxInFlight accepted")
	}
	for _, field := range []string{"Workers", "MaxInFlight"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("Validate does not report %s: %v", field, err)
		}
	}
	if _, err := gcs.NewParallelOf(gcs.ParallelConfig{Workers: -1}, opKeys, func(*op) error { return nil }); !errors.Is(err, gcs.ErrInvalid) {
		t.Errorf("NewParallelOf with Workers -1: %v, want ErrInvalid", err)
	}
}

// ExampleParallel applies bank transfers on several workers. A transfer's
// keys are its two accounts, so transfers between disjoint pairs run in
// parallel; an audit reads every account, so it has no keys and runs as a
// barrier. The printed balances are the same on every run and every replica.
func ExampleParallel() {
	type transfer struct {
		from, to string
		amount   int
		audit    bool
	}
	balance := map[string]*int{}
	for _, a := range []string{"alice", "bob", "carol", "dave"} {
		balance[a] = new(int) // the map is fixed; each *int is owned by its key
		*balance[a] = 100
	}
	keys := func(t transfer) []string {
		if t.audit {
			return nil // a barrier: conflicts with everything
		}
		return []string{t.from, t.to}
	}
	apply := func(t transfer) error {
		if t.audit {
			sum := 0
			for _, b := range balance {
				sum += *b
			}
			fmt.Println("audit: total", sum)
			return nil
		}
		if *balance[t.from] < t.amount {
			return nil // refused, deterministically: the order on "from" is fixed
		}
		*balance[t.from] -= t.amount
		*balance[t.to] += t.amount
		return nil
	}
	p, err := gcs.NewParallelOf(gcs.ParallelConfig{Workers: 4, MaxInFlight: 64}, keys, apply)
	if err != nil {
		fmt.Println(err)
		return
	}
	// The delivery loop submits in total order.
	for _, t := range []transfer{
		{from: "alice", to: "bob", amount: 30},
		{from: "carol", to: "dave", amount: 50}, // parallel with the first
		{from: "bob", to: "carol", amount: 120}, // after both: shares bob and carol
		{audit: true},
		{from: "dave", to: "alice", amount: 150}, // after the audit
		{from: "bob", to: "alice", amount: 50},   // refused: bob has 10
	} {
		if err := p.Submit(t); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := p.Close(); err != nil {
		fmt.Println(err)
		return
	}
	for _, a := range []string{"alice", "bob", "carol", "dave"} {
		fmt.Println(a, *balance[a])
	}
	// Output:
	// audit: total 400
	// alice 220
	// bob 10
	// carol 170
	// dave 0
}

// ExampleNewParallel is a replicated key-value store that applies a group's
// messages on several cores. Payloads are "key=value". The store is split
// into shards and each shard is owned by one conflict key, so puts to
// different shards run in parallel and no two workers ever write the same
// map. A payload without "=" has no keys and runs as a barrier.
func ExampleNewParallel() {
	const nshards = 64
	var shards [nshards]map[string]string
	for i := range shards {
		shards[i] = map[string]string{}
	}
	shardOf := func(key string) int {
		h := fnv.New32a()
		h.Write([]byte(key))
		return int(h.Sum32() % nshards)
	}
	keys := func(m *gcs.Message) []string {
		k, _, ok := strings.Cut(string(m.Payload), "=")
		if !ok {
			return nil
		}
		return []string{strconv.Itoa(shardOf(k))}
	}
	apply := func(m *gcs.Message) error {
		if k, v, ok := strings.Cut(string(m.Payload), "="); ok {
			shards[shardOf(k)][k] = v
		}
		return nil
	}
	p, err := gcs.NewParallel(gcs.ParallelConfig{}, keys, apply)
	if err != nil {
		log.Fatal(err)
	}

	var node *gcs.Node // from gcs.Open
	g, err := node.Join(context.Background(), "kv", gcs.JoinOptions{
		Snapshot: func() ([]byte, error) {
			// Every message before the admitting view has been submitted;
			// wait until all are applied, then the shards are quiet.
			if err := p.Wait(); err != nil {
				return nil, err
			}
			return json.Marshal(shards)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	for ev := range g.Events() {
		switch ev := ev.(type) {
		case *gcs.Message:
			if err := p.Submit(ev); err != nil {
				log.Fatal(err) // apply failed: this replica must be rebuilt
			}
		case *gcs.View:
			if err := p.Wait(); err != nil { // the view follows every earlier message
				log.Fatal(err)
			}
			fmt.Println("view", ev.ID)
		}
	}
	if err := p.Close(); err != nil { // Events closed: drain, stop the workers
		log.Fatal(err)
	}
}

// BenchmarkParallel measures throughput for a CPU-bound apply (SHA-256 over
// a per-key state and a payload) on messages with one key out of 1,000, for
// sequential apply and for the scheduler with 1, 2 and 4 workers.
func BenchmarkParallel(b *testing.B) {
	const nkeys = 1000
	type msg struct {
		key  int
		strs []string
	}
	for _, size := range []int{64, 1024, 8192} {
		payload := make([]byte, size)
		keys := make([][]string, nkeys)
		for k := range keys {
			keys[k] = []string{"k" + strconv.Itoa(k)}
		}
		var state [nkeys][sha256.Size]byte
		apply := func(m msg) error {
			h := sha256.New()
			h.Write(state[m.key][:])
			h.Write(payload)
			h.Sum(state[m.key][:0])
			return nil
		}
		msgs := func(n int) []msg {
			rng := rand.New(rand.NewPCG(1, 2))
			ms := make([]msg, n)
			for i := range ms {
				k := rng.IntN(nkeys)
				ms[i] = msg{key: k, strs: keys[k]}
			}
			return ms
		}
		b.Run(fmt.Sprintf("payload=%d/sequential", size), func(b *testing.B) {
			ms := msgs(b.N)
			b.ResetTimer()
			for _, m := range ms {
				_ = apply(m)
			}
		})
		for _, w := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("payload=%d/workers=%d", size, w), func(b *testing.B) {
				ms := msgs(b.N)
				p := mustParallel(b, gcs.ParallelConfig{Workers: w, MaxInFlight: 1024},
					func(m msg) []string { return m.strs }, apply)
				b.ResetTimer()
				for _, m := range ms {
					if err := p.Submit(m); err != nil {
						b.Fatal(err)
					}
				}
				if err := p.Close(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
