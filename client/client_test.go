package client_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startCluster(t *testing.T, cfg cluster.Config) *cluster.Cluster {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	c, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// newClient returns a client of seeds, closed with the test; dial options
// replace the default (insecure credentials), so they must name some.
func newClient(t *testing.T, seeds []string, dial ...grpc.DialOption) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: seeds, DialOptions: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustExec(t *testing.T, cl *client.Client, tx *client.Tx) *client.Result {
	t.Helper()
	r, err := cl.Exec(ctxT(t), tx)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	return r
}

func read(t *testing.T, cl *client.Client, mn, addr uint64, n uint32) []byte {
	t.Helper()
	r := mustExec(t, cl, client.NewTx().Read(mn, addr, n))
	if !r.Committed {
		t.Fatalf("read not committed: %+v", r)
	}
	return r.Reads[0]
}

func TestOnePhaseCompareReadWrite(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true})
	cl := newClient(t, c.Seeds()[:1])

	r := mustExec(t, cl, client.NewTx().Write(0, 0x10, []byte("hello")))
	if !r.Committed || r.FailedCompare != -1 {
		t.Fatalf("write: %+v", r)
	}
	if got := read(t, cl, 0, 0x10, 5); string(got) != "hello" {
		t.Fatalf("read %q, want hello", got)
	}
	// Unwritten memory reads as zeros.
	if got := read(t, cl, 1, 1<<30, 3); !bytes.Equal(got, []byte{0, 0, 0}) {
		t.Fatalf("fresh memory %v", got)
	}
	// Compare matches: reads see the state before the writes of the same tx.
	r = mustExec(t, cl, client.NewTx().
		Compare(0, 0x10, []byte("hello")).
		Write(0, 0x10, []byte("world")).
		Read(0, 0x10, 5))
	if !r.Committed || string(r.Reads[0]) != "hello" {
		t.Fatalf("cas: %+v", r)
	}
	// Second compare fails: not committed, index 1, nothing written.
	r = mustExec(t, cl, client.NewTx().
		Compare(0, 0x10, []byte("world")).
		Compare(0, 0x20, []byte("x")).
		Write(0, 0x10, []byte("nope!")))
	if r.Committed || r.FailedCompare != 1 {
		t.Fatalf("failed compare: %+v", r)
	}
	if got := read(t, cl, 0, 0x10, 5); string(got) != "world" {
		t.Fatalf("after failed compare read %q, want world", got)
	}
	// A failed compare on one memnode answers its reads as of the failure,
	// in the order Read was called: a compare-and-swap retries from them.
	r = mustExec(t, cl, client.NewTx().
		Read(0, 0x12, 3).
		Compare(0, 0x10, []byte("stale")).
		Write(0, 0x10, []byte("nope!")).
		Read(0, 0x10, 5))
	if r.Committed || r.FailedCompare != 0 || len(r.Reads) != 2 || string(r.Reads[0]) != "rld" || string(r.Reads[1]) != "world" {
		t.Fatalf("failed compare with reads: %+v", r)
	}
	// Read-only (unlogged) too.
	r = mustExec(t, cl, client.NewTx().Compare(0, 0x10, []byte("stale")).Read(0, 0x10, 5))
	if r.Committed || len(r.Reads) != 1 || string(r.Reads[0]) != "world" {
		t.Fatalf("failed read-only compare with reads: %+v", r)
	}
	// Across memnodes a failed compare answers no reads.
	r = mustExec(t, cl, client.NewTx().
		Compare(0, 0x10, []byte("stale")).
		Write(1, 0x10, []byte("nope!")).
		Read(0, 0x10, 5))
	if r.Committed || r.FailedCompare != 0 || r.Reads != nil {
		t.Fatalf("failed two-phase compare: %+v", r)
	}
}

func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2, Memnode: memnode.Config{Size: 1 << 20, MaxItemBytes: 1024, MaxItems: 8}})
	cl := newClient(t, c.Seeds())
	mustExec(t, cl, client.NewTx().Write(0, 0, []byte("keep")))

	cases := []struct {
		name string
		tx   *client.Tx
		want error
	}{
		{"empty", client.NewTx(), client.ErrInvalid},
		{"unknown memnode", client.NewTx().Write(9, 0, []byte("x")), client.ErrUnknownMemnode},
		{"two-phase, unknown memnode", client.NewTx().Write(0, 0, []byte("gone")).Write(9, 0, []byte("x")), client.ErrUnknownMemnode},
		{"two-phase, out of range at one", client.NewTx().Write(0, 0, []byte("gone")).Write(1, 1<<20-1, []byte("xx")), client.ErrInvalid},
		// Malformed, whatever the compares find: as with one memnode,
		// where the item checks come before the compares.
		{"two-phase, out of range at one, compare failing at the other", client.NewTx().Compare(0, 0, []byte("nope")).
			Write(0, 0, []byte("gone")).Write(1, 1<<20-1, []byte("xx")), client.ErrInvalid},
		{"out of range", client.NewTx().Write(0, 0, []byte("gone")).Write(0, 1<<20-1, []byte("xx")), client.ErrInvalid},
		{"oversized item", client.NewTx().Write(0, 0, []byte("gone")).Write(0, 8, make([]byte, 1025)), client.ErrInvalid},
		{"zero-length read", client.NewTx().Write(0, 0, []byte("gone")).Read(0, 0, 0), client.ErrInvalid},
		{"too many items", func() *client.Tx {
			tx := client.NewTx()
			for i := 0; i < 9; i++ {
				tx.Write(0, uint64(i*8), []byte("gone"))
			}
			return tx
		}(), client.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cl.Exec(ctxT(t), tc.tx)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.name != "empty" {
				var e *client.Error
				if !errors.As(err, &e) || e.Detail == "" {
					t.Fatalf("want a *client.Error with detail, got %#v", err)
				}
			}
		})
	}
	if got := read(t, cl, 0, 0, 4); string(got) != "keep" {
		t.Fatalf("state changed by refused requests: %q", got)
	}
}

func leaderIndex(t *testing.T, c *cluster.Cluster, mn uint64) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, h := range c.Hosts {
			if h != nil && h.Replication().Leader(mn) == h.ID() {
				return i
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("memnode %d has no leader", mn)
	return -1
}

func TestLeaderCrashKeepsAcknowledgedWrites(t *testing.T) {
	c := startCluster(t, cluster.Config{Memnodes: 1})
	cl := newClient(t, c.Seeds())
	for i := uint64(0); i < 50; i++ {
		mustExec(t, cl, client.NewTx().Write(0, i*8, binary.LittleEndian.AppendUint64(nil, i+1)))
	}
	li := leaderIndex(t, c, 0)
	if err := c.StopHost(li); err != nil {
		t.Fatal(err)
	}
	// The client finds the new leader by itself. A write sent on the old
	// leader's connection before the client noticed it break may end with
	// an unknown outcome (it could have left); these writes are
	// idempotent, so such a write is simply sent again. Only acknowledged
	// writes must survive.
	for i := uint64(50); i < 100; i++ {
		tx := client.NewTx().Write(0, i*8, binary.LittleEndian.AppendUint64(nil, i+1))
		for attempt := 0; ; attempt++ {
			_, err := cl.Exec(ctxT(t), tx)
			if err == nil {
				break
			}
			if !errors.Is(err, client.ErrUnknownOutcome) || attempt == 3 {
				t.Fatalf("write %d: %v", i, err)
			}
		}
	}
	if err := c.RestartHost(li); err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < 100; i++ {
		if got := binary.LittleEndian.Uint64(read(t, cl, 0, i*8, 8)); got != i+1 {
			t.Fatalf("word %d = %d, want %d", i, got, i+1)
		}
	}
}

func TestWholeClusterRestartRecovers(t *testing.T) {
	dir := t.TempDir()
	c, err := cluster.Start(cluster.Config{DataDir: dir, Memnodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, cl, client.NewTx().Write(0, 100, []byte("durable-0")))
	mustExec(t, cl, client.NewTx().Write(1, 200, []byte("durable-1")))
	cl.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c2 := startCluster(t, cluster.Config{DataDir: dir, Memnodes: 2})
	cl2 := newClient(t, c2.Seeds())
	if got := read(t, cl2, 0, 100, 9); string(got) != "durable-0" {
		t.Fatalf("memnode 0 after restart: %q", got)
	}
	if got := read(t, cl2, 1, 200, 9); string(got) != "durable-1" {
		t.Fatalf("memnode 1 after restart: %q", got)
	}
}

// Concurrent compare-and-swap increments: every committed CAS adds exactly one.
func TestConcurrentCASCounter(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 1})
	cl := newClient(t, c.Seeds())
	const workers, per = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for done := 0; done < per; {
				r, err := cl.Exec(ctx, client.NewTx().Read(0, 0, 8))
				if err != nil {
					errs <- err
					return
				}
				cur := r.Reads[0]
				next := binary.LittleEndian.AppendUint64(nil, binary.LittleEndian.Uint64(cur)+1)
				r, err = cl.Exec(ctx, client.NewTx().Compare(0, 0, cur).Write(0, 0, next))
				if err != nil {
					errs <- err
					return
				}
				if r.Committed {
					done++
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(read(t, cl, 0, 0, 8)); got != workers*per {
		t.Fatalf("counter = %d, want %d", got, workers*per)
	}
}

// A minitransaction whose context has already ended is not sent: Exec
// returns the context's error and nothing applies. Before, the request
// left anyway (and applied), and Exec reported ErrUnknownOutcome for one
// memnode, or for several settled the attempt on a context of its own and
// committed it.
func TestExecWithEndedContextSendsNothing(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2})
	cl := newClient(t, c.Seeds())
	mustExec(t, cl, client.NewTx().Write(0, 0, []byte("warm")).Write(1, 0, []byte("warm")))
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		tx   *client.Tx
	}{
		{"one-phase", client.NewTx().Write(0, 8, []byte("x"))},
		{"two-phase", client.NewTx().Write(0, 16, []byte("y")).Write(1, 16, []byte("y"))},
	} {
		r, err := cl.Exec(ended, tc.tx)
		if !errors.Is(err, context.Canceled) || errors.Is(err, client.ErrUnknownOutcome) {
			t.Errorf("%s: Exec with an ended context: %+v, %v; want context.Canceled", tc.name, r, err)
		}
	}
	// Requests on one session are proposed in the order they were sent:
	// once these writes are done, anything sent before them has applied.
	mustExec(t, cl, client.NewTx().Write(0, 24, []byte("z")))
	mustExec(t, cl, client.NewTx().Write(1, 24, []byte("z")))
	for _, at := range []struct{ mn, addr uint64 }{{0, 8}, {0, 16}, {1, 16}} {
		if got := read(t, cl, at.mn, at.addr, 1); got[0] != 0 {
			t.Errorf("memnode %d at %d: %q applied by an Exec whose context had ended", at.mn, at.addr, got)
		}
	}
}
