package service_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

// bootCluster is a cluster of n hosts started by hand (not cluster.Start,
// which listens on every address before starting the first host): a host
// listens only once it starts, as a process does.
type bootCluster struct {
	t    *testing.T
	dir  string
	addr map[uint64]string
	cfgs map[uint64]service.HostConfig
	mu   sync.Mutex
	c    cluster.Cluster // Hosts, for WaitReplicas
}

func newBootCluster(t *testing.T, n int, logger zerolog.Logger) *bootCluster {
	t.Helper()
	b := &bootCluster{t: t, dir: t.TempDir(), addr: map[uint64]string{}, cfgs: map[uint64]service.HostConfig{}}
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = uint64(i + 1)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b.addr[ids[i]] = l.Addr().String()
		l.Close()
	}
	specs, err := service.Place(ids, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		b.cfgs[id] = service.HostConfig{ID: id, Listen: b.addr[id], Hosts: b.addr, Memnodes: specs,
			DataDir: filepath.Join(b.dir, fmt.Sprintf("host-%d", id)), DirectoryPoll: 50 * time.Millisecond,
			Replication: replication.Config{NoSync: true}, Logger: logger}
	}
	b.c.Hosts = make([]*service.Host, n)
	t.Cleanup(func() {
		for i := range b.c.Hosts {
			b.stop(uint64(i + 1))
		}
	})
	return b
}

func (b *bootCluster) start(id uint64) error {
	h, err := service.StartHost(b.cfgs[id])
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.c.Hosts[id-1] = h
	b.mu.Unlock()
	return nil
}

func (b *bootCluster) stop(id uint64) {
	b.mu.Lock()
	h := b.c.Hosts[id-1]
	b.c.Hosts[id-1] = nil
	b.mu.Unlock()
	if h != nil {
		h.Close()
	}
}

// noLostHost fails the test if a host took itself for one that lost its
// data directory, or a leader removed a replica as lost.
func (b *bootCluster) noLostHost(logs *syncbuf.Buffer) {
	b.t.Helper()
	for id, cfg := range b.cfgs {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "TUTTI-STARTED-EMPTY")); err == nil {
			b.t.Errorf("host %d marked its data directory as lost at the cluster's first boot", id)
		}
	}
	for _, what := range []string{"not bootstrapping", "remove lost replica", "lost replica"} {
		if n := logs.Lines(what); n > 0 {
			b.t.Errorf("%d log lines with %q at the cluster's first boot", n, what)
		}
	}
	if b.t.Failed() {
		b.t.Logf("logs:\n%s", logs.String())
	}
}

// Every host of a new cluster starts at about the same moment (a compose
// file, a deployment), empty. A host whose probe of a peer met a closed
// port retries only after gRPC's reconnection backoff (about a second);
// meanwhile the peers that saw every host booting bootstrapped and
// elected leaders. It used to find their groups past term 1, take itself
// for a host that had lost its data directory, and have its replicas
// removed and added back (leaving memnodes with two voters for a while).
// Now the peers recorded its boot nonce when they bootstrapped: it is still
// at the first boot and bootstraps its configured replicas.
func TestSimultaneousFirstBootLosesNoHost(t *testing.T) {
	var logs syncbuf.Buffer
	b := newBootCluster(t, 3, zerolog.New(&logs).Level(zerolog.InfoLevel))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Value
	for id := range uint64(3) {
		wg.Go(func() {
			// Started together, as processes are: within 100 ms.
			time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
			if err := b.start(id + 1); err != nil {
				failed.Store(err)
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	for mn := range uint64(3) {
		if err := b.c.WaitReplicas(ctx, mn, []uint64{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
	}
	b.noLostHost(&logs)
}

// A host answers its peers as booting (its nonce), they bootstrap with it
// and elect, and it crashes before it bootstraps. Both deciding hosts
// restart (their record of its nonce must survive in their data
// directories), then it restarts: its engine is still empty and its nonce
// the same, so it never voted or acknowledged anything, and it bootstraps
// its configured replicas as at the first boot.
func TestFirstBootSurvivesRestartsBeforeBootstrap(t *testing.T) {
	var logs syncbuf.Buffer
	b := newBootCluster(t, 3, zerolog.New(&logs).Level(zerolog.InfoLevel))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	var hold atomic.Bool
	hold.Store(true)
	service.SetFirstBootHook(func(host uint64) bool { return host != 3 || !hold.Load() })
	defer service.SetFirstBootHook(nil)
	for id := range uint64(3) {
		if err := b.start(id + 1); err != nil {
			t.Fatal(err)
		}
	}
	// Hosts 1 and 2 bootstrap (host 3 answered as booting) and elect.
	for mn := range uint64(3) {
		if err := cluster.Eventually(ctx, fmt.Sprintf("memnode %d led by host 1 or 2", mn), func() error {
			for _, h := range b.c.Hosts[:2] {
				if h.Replication().Leader(mn) == h.ID() {
					return nil
				}
			}
			return fmt.Errorf("no leader")
		}); err != nil {
			t.Fatal(err)
		}
	}
	if g := b.c.Hosts[2].Replication().Groups(); len(g) != 0 {
		t.Fatalf("host 3 runs %v before deciding", g)
	}
	b.stop(3) // crashed before bootstrapping
	for _, id := range []uint64{1, 2} {
		b.stop(id)
		if err := b.start(id); err != nil {
			t.Fatal(err)
		}
	}
	hold.Store(false)
	if err := b.start(3); err != nil {
		t.Fatal(err)
	}
	for mn := range uint64(3) {
		if err := b.c.WaitReplicas(ctx, mn, []uint64{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
	}
	// (Its replicas run before it logs the decision.)
	if err := cluster.Eventually(ctx, "host 3 logging it bootstrapped on a peer's record of its nonce", func() error {
		if logs.Lines(`"host":3`, "recorded_by") == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	b.noLostHost(&logs)
}
