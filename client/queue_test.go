package client_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

func ExampleQueue() {
	cl, stop := exampleClient()
	defer stop()
	ctx := context.Background()

	q, err := client.OpenQueue(ctx, cl, client.QueueConfig{Memnode: 0, Base: 0x1000, Capacity: 4, SlotSize: 64})
	if err != nil {
		panic(err)
	}
	pos, _ := q.Enqueue(ctx, []byte("hello"))
	first, _ := q.EnqueueBatch(ctx, [][]byte{[]byte("a"), []byte("b"), []byte("c")})
	fmt.Println("positions", pos, first)
	_, err = q.Enqueue(ctx, []byte("no room"))
	fmt.Println("full:", errors.Is(err, client.ErrFull))

	// A reader tracks its own position and reclaims what it has read.
	items, _ := q.Peek(ctx, 1, 10)
	fmt.Printf("%q\n", items)
	_ = q.Trim(ctx, 1+uint64(len(items)))
	_, err = q.Peek(ctx, 0, 1)
	fmt.Println("trimmed:", errors.Is(err, client.ErrTrimmed))
	// Output:
	// positions 0 1
	// full: true
	// ["a" "b" "c"]
	// trimmed: true
}

func item(s string) []byte { return []byte(s) }

func TestQueueEnqueuePeekTrimWraparound(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	cfg := client.QueueConfig{Base: 0x1000, Capacity: 4, SlotSize: 32}
	q, err := client.OpenQueue(ctx, cl, cfg)
	if err != nil {
		t.Fatal(err)
	}
	snapshot := func() []byte { return read(t, cl, 0, cfg.Base, uint32(cfg.Bytes())) }
	peek := func(from uint64, max int) []string {
		t.Helper()
		items, err := q.Peek(ctx, from, max)
		if err != nil {
			t.Fatalf("peek(%d, %d): %v", from, max, err)
		}
		var out []string
		for _, it := range items {
			out = append(out, string(it))
		}
		return out
	}
	enq := func(s string, want uint64) {
		t.Helper()
		pos, err := q.Enqueue(ctx, item(s))
		if err != nil || pos != want {
			t.Fatalf("enqueue %q = %d, %v; want position %d", s, pos, err, want)
		}
	}

	for i := uint64(0); i < 4; i++ {
		enq(fmt.Sprint("item", i), i)
	}
	before := snapshot()
	if _, err := q.Enqueue(ctx, item("x")); !errors.Is(err, client.ErrFull) {
		t.Fatalf("enqueue into a full queue: err = %v, want ErrFull", err)
	}
	if got := snapshot(); !bytes.Equal(before, got) {
		t.Fatal("a refused enqueue changed the queue")
	}
	if got := fmt.Sprint(peek(0, 10)); got != "[item0 item1 item2 item3]" {
		t.Fatalf("peek = %s", got)
	}
	if got := fmt.Sprint(peek(1, 2)); got != "[item1 item2]" {
		t.Fatalf("peek(1, 2) = %s", got)
	}

	// Trim makes room; positions keep growing across the wrap.
	if err := q.Trim(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Peek(ctx, 1, 1); !errors.Is(err, client.ErrTrimmed) {
		t.Fatalf("peek below head: err = %v, want ErrTrimmed", err)
	}
	for i := uint64(4); i < 23; i++ {
		if i >= 6 {
			if err := q.Trim(ctx, i-3); err != nil {
				t.Fatal(err)
			}
		}
		enq(fmt.Sprint("item", i), i)
		if i < 6 {
			continue
		}
		want := fmt.Sprint([]string{fmt.Sprint("item", i-3), fmt.Sprint("item", i-2), fmt.Sprint("item", i-1), fmt.Sprint("item", i)})
		if got := fmt.Sprint(peek(i-3, 10)); got != want {
			t.Fatalf("after enqueue %d: peek = %s, want %s", i, got, want)
		}
	}
	if s, err := q.State(ctx); err != nil || s != (client.QueueState{Head: 19, Tail: 23}) {
		t.Fatalf("state = %+v, %v; want head 19 tail 23", s, err)
	}
	if got := peek(23, 5); len(got) != 0 {
		t.Fatalf("peek at tail = %v, want none", got)
	}
	if _, err := q.Peek(ctx, 24, 1); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("peek beyond tail: err = %v, want ErrInvalid", err)
	}
	if _, err := q.Peek(ctx, 19, 0); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("peek of 0 items: err = %v, want ErrInvalid", err)
	}
	if err := q.Trim(ctx, 24); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("trim beyond tail: err = %v, want ErrInvalid", err)
	}
	if err := q.Trim(ctx, 5); err != nil { // behind the head: no-op
		t.Fatal(err)
	}

	// Dequeue takes from the head.
	from, items, err := q.Dequeue(ctx, 3)
	if err != nil || from != 19 || len(items) != 3 || string(items[0]) != "item19" || string(items[2]) != "item21" {
		t.Fatalf("dequeue = %d, %q, %v", from, items, err)
	}
	from, items, err = q.Dequeue(ctx, 3)
	if err != nil || from != 22 || len(items) != 1 || string(items[0]) != "item22" {
		t.Fatalf("dequeue = %d, %q, %v", from, items, err)
	}
	if from, items, err = q.Dequeue(ctx, 3); err != nil || from != 23 || len(items) != 0 {
		t.Fatalf("dequeue from an empty queue = %d, %q, %v", from, items, err)
	}

	// Another handle on the same queue, e.g. in another process.
	q2, err := client.OpenQueue(ctx, newClient(t, c.Seeds()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pos, err := q2.Enqueue(ctx, nil); err != nil || pos != 23 {
		t.Fatalf("empty item through a second handle = %d, %v; want position 23", pos, err)
	}
	if pos, err := q.Enqueue(ctx, item("after")); err != nil || pos != 24 {
		t.Fatalf("enqueue with a stale hint = %d, %v; want position 24", pos, err)
	}
}

func TestQueueBatchesOversizeAndBadInput(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	cfg := client.QueueConfig{Base: 0x2000, Capacity: 5, SlotSize: 32}
	q, err := client.OpenQueue(ctx, cl, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if q.MaxItemSize() != 20 {
		t.Fatalf("MaxItemSize = %d, want 20", q.MaxItemSize())
	}
	first, err := q.EnqueueBatch(ctx, [][]byte{item("a"), item("b"), bytes.Repeat([]byte{'z'}, 20)})
	if err != nil || first != 0 {
		t.Fatalf("batch = %d, %v", first, err)
	}
	snapshot := func() []byte { return read(t, cl, 0, cfg.Base, uint32(cfg.Bytes())) }
	before := snapshot()
	for _, tc := range []struct {
		name  string
		items [][]byte
		want  error
	}{
		{"batch larger than the room left", [][]byte{item("c"), item("d"), item("e")}, client.ErrFull},
		{"empty batch", nil, client.ErrInvalid},
		{"batch larger than the capacity", make([][]byte, 6), client.ErrInvalid},
		{"oversized item", [][]byte{item("ok"), bytes.Repeat([]byte{'x'}, 21)}, client.ErrInvalid},
	} {
		if _, err := q.EnqueueBatch(ctx, tc.items); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := q.Enqueue(ctx, bytes.Repeat([]byte{'x'}, 21)); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("oversized item: err = %v, want ErrInvalid", err)
	}
	if after := snapshot(); !bytes.Equal(before, after) {
		t.Fatal("refused enqueues changed the queue")
	}
	if items, err := q.Peek(ctx, 0, 5); err != nil || len(items) != 3 || len(items[2]) != 20 {
		t.Fatalf("peek = %q, %v", items, err)
	}

	for _, tc := range []struct {
		name string
		cl   *client.Client
		cfg  client.QueueConfig
	}{
		{"nil client", nil, cfg},
		{"zero capacity", cl, client.QueueConfig{Base: 0x9000, SlotSize: 32}},
		{"slot too small", cl, client.QueueConfig{Base: 0x9000, Capacity: 4, SlotSize: 12}},
		{"slot above the item limit", cl, client.QueueConfig{Base: 0x9000, Capacity: 4, SlotSize: 2 << 20}},
		{"misaligned base", cl, client.QueueConfig{Base: 0x9001, Capacity: 4, SlotSize: 32}},
		{"overflow", cl, client.QueueConfig{Base: 0x9000, Capacity: 1 << 62, SlotSize: 64}},
		{"other shape at an existing queue", cl, client.QueueConfig{Base: 0x2000, Capacity: 6, SlotSize: 32}},
	} {
		if _, err := client.OpenQueue(ctx, tc.cl, tc.cfg); !errors.Is(err, client.ErrInvalid) {
			t.Errorf("OpenQueue %s: err = %v, want ErrInvalid", tc.name, err)
		}
	}
	if after := snapshot(); !bytes.Equal(before, after) {
		t.Fatal("refused opens changed the queue")
	}
	if got := read(t, cl, 0, 0x9000, 32); !bytes.Equal(got, make([]byte, 32)) {
		t.Fatalf("a refused open wrote a header: %x", got)
	}
}

// Enqueued is how a producer resolves an enqueue whose outcome is unknown.
func TestQueueEnqueuedResolvesUnknownOutcome(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	q, err := client.OpenQueue(ctx, cl, client.QueueConfig{Base: 0x3000, Capacity: 2, SlotSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	mine := item("producer 7 seq 1")
	pos, err := q.Enqueue(ctx, mine)
	if err != nil {
		t.Fatal(err)
	}
	check := func(pos uint64, it []byte, want bool) {
		t.Helper()
		got, err := q.Enqueued(ctx, pos, it)
		if err != nil || got != want {
			t.Fatalf("Enqueued(%d, %q) = %v, %v; want %v", pos, it, got, err, want)
		}
	}
	check(pos, mine, true)                      // applied
	check(pos+1, mine, false)                   // never reached: retry is safe
	check(pos, item("producer 8 seq 1"), false) // someone else took it
	if _, err := q.EnqueueBatch(ctx, [][]byte{item("x")}); err != nil {
		t.Fatal(err)
	}
	if err := q.Trim(ctx, 2); err != nil {
		t.Fatal(err)
	}
	check(pos, mine, true) // trimmed but not yet overwritten: still known
	for i := 0; i < 2; i++ {
		if _, err := q.Enqueue(ctx, item("y")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Enqueued(ctx, pos, mine); !errors.Is(err, client.ErrTrimmed) {
		t.Fatalf("Enqueued on an overwritten slot: err = %v, want ErrTrimmed", err)
	}
}

type tagged struct{ producer, seq uint64 }

func encodeTagged(p, s uint64) []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, p), s)
}

// Producers on several clients (one of them in batches) fill a small queue
// while a reader follows by position and trims behind itself, so the queue
// wraps many times and producers meet ErrFull. The reader must see a
// gap-free, duplicate-free sequence in which each producer's items are in
// order and sit at the positions their Enqueue returned.
func TestQueueConcurrentProducersGapFreeNoDuplicates(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	ctx := ctxT(t)
	cfg := client.QueueConfig{Base: 0x4000, Capacity: 8, SlotSize: 32}
	const producers, per, batch = 3, 30, 3

	var mu sync.Mutex
	placed := map[uint64]tagged{} // position → item, as producers saw it
	errc := make(chan error, producers+1)
	var wg, producing sync.WaitGroup
	var produced atomic.Bool // every producer has returned
	for p := uint64(1); p <= producers; p++ {
		q, err := client.OpenQueue(ctx, newClient(t, c.Seeds()), cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		producing.Add(1)
		go func() {
			defer wg.Done()
			defer producing.Done()
			errc <- func() error {
				for s := uint64(0); s < per; {
					n := uint64(1)
					if p == producers {
						n = min(batch, per-s)
					}
					var items [][]byte
					for i := uint64(0); i < n; i++ {
						items = append(items, encodeTagged(p, s+i))
					}
					first, err := q.EnqueueBatch(ctx, items)
					if errors.Is(err, client.ErrFull) {
						if err := waitRoom(ctx, q, n); err != nil {
							return err
						}
						continue
					}
					if err != nil {
						return fmt.Errorf("producer %d: %w", p, err)
					}
					mu.Lock()
					for i := uint64(0); i < n; i++ {
						placed[first+i] = tagged{p, s + i}
					}
					mu.Unlock()
					s += n
				}
				return nil
			}()
		}()
	}

	var seen []tagged
	reader, err := client.OpenQueue(ctx, newClient(t, c.Seeds()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- func() error {
			for pos := uint64(0); pos < producers*per; {
				done := produced.Load() // before the peek: nothing comes after it
				items, err := reader.Peek(ctx, pos, 4)
				if err != nil {
					return fmt.Errorf("reader at %d: %w", pos, err)
				}
				if len(items) == 0 {
					if done {
						return nil // the count check below reports what is missing
					}
					if err := pollUntil(ctx, func() (bool, error) {
						s, err := reader.State(ctx)
						return s.Tail > pos || produced.Load(), err
					}); err != nil {
						return err
					}
					continue
				}
				for _, it := range items {
					seen = append(seen, tagged{binary.LittleEndian.Uint64(it), binary.LittleEndian.Uint64(it[8:])})
				}
				pos += uint64(len(items))
				if err := reader.Trim(ctx, pos); err != nil {
					return err
				}
			}
			return nil
		}()
	}()
	producing.Wait()
	produced.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}

	if len(seen) != producers*per {
		t.Fatalf("reader saw %d items, want %d", len(seen), producers*per)
	}
	next := map[uint64]uint64{}
	for pos, it := range seen {
		if placed[uint64(pos)] != it {
			t.Fatalf("position %d holds %+v, but its producer placed %+v there", pos, it, placed[uint64(pos)])
		}
		if it.seq != next[it.producer] {
			t.Fatalf("position %d: producer %d seq %d, want seq %d (gap, duplicate or reorder)", pos, it.producer, it.seq, next[it.producer])
		}
		next[it.producer]++
	}
	if s, err := reader.State(ctx); err != nil || s.Head != producers*per || s.Tail != producers*per {
		t.Fatalf("final state %+v, %v", s, err)
	}
}

// waitRoom waits, until ctx ends, for room for n items.
func waitRoom(ctx context.Context, q *client.Queue, n uint64) error {
	return pollUntil(ctx, func() (bool, error) {
		s, err := q.State(ctx)
		return s.Tail-s.Head+n <= q.Config().Capacity, err
	})
}

// pollUntil checks cond every millisecond until it holds or ctx ends.
func pollUntil(ctx context.Context, cond func() (bool, error)) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Competing consumers each take distinct items, and together all of them.
func TestQueueCompetingDequeuers(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	ctx := ctxT(t)
	cfg := client.QueueConfig{Base: 0x6000, Capacity: 64, SlotSize: 32}
	q, err := client.OpenQueue(ctx, newClient(t, c.Seeds()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	const total = 40
	for i := uint64(0); i < total; i += 5 {
		var items [][]byte
		for j := i; j < i+5; j++ {
			items = append(items, encodeTagged(0, j))
		}
		if _, err := q.EnqueueBatch(ctx, items); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	got := map[uint64]int{}
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		cq, err := client.OpenQueue(ctx, newClient(t, c.Seeds()), cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- func() error {
				for {
					from, items, err := cq.Dequeue(ctx, 3)
					if err != nil {
						return err
					}
					if len(items) == 0 {
						return nil
					}
					mu.Lock()
					for i, it := range items {
						seq := binary.LittleEndian.Uint64(it[8:])
						if seq != from+uint64(i) {
							mu.Unlock()
							return fmt.Errorf("position %d holds seq %d", from+uint64(i), seq)
						}
						got[seq]++
					}
					mu.Unlock()
				}
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
	for i := uint64(0); i < total; i++ {
		if got[i] != 1 {
			t.Fatalf("item %d dequeued %d times", i, got[i])
		}
	}
}

// An enqueue whose view of the tail is stale loses the compare and retries
// from the state the failed compare answered: no read between.
func TestQueueRetryFromFailedCompare(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	ctx := ctxT(t)
	cfg := client.QueueConfig{Base: 0x4000, Capacity: 8, SlotSize: 32}
	a, err := client.OpenQueue(ctx, newClient(t, c.Seeds()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := client.OpenQueue(ctx, newClient(t, c.Seeds()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pos, err := b.Enqueue(ctx, []byte("b0")); err != nil || pos != 0 {
		t.Fatalf("b0: %d, %v", pos, err)
	}
	if pos, err := a.Enqueue(ctx, []byte("a0")); err != nil || pos != 1 {
		t.Fatalf("a0: %d, %v", pos, err)
	}
	// b still believes the tail is 1.
	if pos, err := b.Enqueue(ctx, []byte("b1")); err != nil || pos != 2 {
		t.Fatalf("b1: %d, %v", pos, err)
	}
	if n := client.QueueRetriesFromFailure(b); n != 1 {
		t.Fatalf("b retried %d times from a failed compare's answer, want 1", n)
	}
	s, err := a.State(ctx)
	if err != nil || s.Head != 0 || s.Tail != 3 {
		t.Fatalf("state %+v, %v", s, err)
	}
}
