package service_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/replication"
)

// startSpare starts 4 hosts: memnodes on hosts 1-3, host 4 a spare.
func startSpare(t *testing.T, rc replication.Config) *cluster.Cluster {
	t.Helper()
	return startOnline(t, cluster.Config{Hosts: 4, Spares: 1, Memnodes: 2, DirectoryPoll: 50 * time.Millisecond, Replication: rc})
}

// startOnline starts a cluster from cfg (NoSync and a temporary DataDir
// are set here), closed with the test, and waits until it serves and every
// host has read the first directory.
func startOnline(t *testing.T, cfg cluster.Config) *cluster.Cluster {
	t.Helper()
	cfg.NoSync, cfg.DataDir = true, t.TempDir()
	c, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}
	return c
}

func oneSeedClient(t *testing.T, c *cluster.Cluster) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()[:1]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func TestDirectoryBootstrapAndOnlineChanges(t *testing.T) {
	c := startSpare(t, replication.Config{})
	cl := oneSeedClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	d, err := cl.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Hosts) != 4 || len(d.Memnodes) != 2 || d.Config.Replicas != 3 {
		t.Fatalf("bootstrap directory: %+v", d)
	}
	if info := cl.Cluster(); info.GetDirectoryVersion() != d.Version {
		t.Fatalf("Cluster RPC answered from version %d, directory is %d", info.GetDirectoryVersion(), d.Version)
	}

	// Add a memnode: it lands on the least-loaded hosts (the spare first).
	id, err := cl.AddMemnode(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id != 2 {
		t.Fatalf("new memnode id %d, want 2", id)
	}
	if err := c.WaitReplicas(ctx, 2, []uint64{1, 2, 4}); err != nil {
		t.Fatal(err)
	}
	// A client that knew only one seed and the old layout finds it.
	other := oneSeedClient(t, c)
	if _, err := cl.Exec(ctx, client.NewTx().Write(2, 64, []byte("new memnode"))); err != nil {
		t.Fatal(err)
	}
	res, err := other.Exec(ctx, client.NewTx().Read(2, 64, 11).Read(0, 0, 8))
	if err != nil || !res.Committed || string(res.Reads[0]) != "new memnode" {
		t.Fatalf("read on the new memnode: %+v, %v", res, err)
	}
	// Two-phase across an old and the new memnode.
	res, err = other.Exec(ctx, client.NewTx().Compare(2, 64, []byte("new memnode")).Write(2, 0, le64(7)).Write(1, 0, le64(7)))
	if err != nil || !res.Committed {
		t.Fatalf("two-phase with the new memnode: %+v, %v", res, err)
	}

	// Bad input: clear errors, nothing changes. First the new memnode's
	// leader clears its Bootstrap voters (a directory write of its own).
	var before *client.Directory
	for {
		if before, err = cl.Directory(ctx); err != nil {
			t.Fatal(err)
		}
		if len(before.Memnode(2).Bootstrap) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("memnode 2's Bootstrap voters never cleared: %+v", before.Memnode(2))
		case <-time.After(20 * time.Millisecond): // polling a condition, bounded by ctx
		}
	}
	bad := []struct {
		name string
		run  func() error
	}{
		{"unknown memnode", func() error { return cl.AddReplica(ctx, 99, 1) }},
		{"host not in cluster", func() error { return cl.AddReplica(ctx, 0, 9) }},
		{"duplicate replica", func() error { return cl.AddReplica(ctx, 0, 1) }},
		{"remove non-replica", func() error { return cl.RemoveReplica(ctx, 0, 4) }},
		{"move to a holder", func() error { return cl.MoveReplica(ctx, 0, 1, 2) }},
		{"memnode on unknown host", func() error { _, err := cl.AddMemnode(ctx, []uint64{1, 9}); return err }},
	}
	for _, b := range bad {
		err := b.run()
		if !errors.Is(err, client.ErrDirectoryChange) {
			t.Errorf("%s: err = %v, want ErrDirectoryChange", b.name, err)
		} else {
			t.Logf("%s: %v", b.name, err)
		}
	}
	after, err := cl.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Version != before.Version {
		t.Fatalf("refused changes moved the directory from version %d to %d", before.Version, after.Version)
	}

	// Remove a replica of the new memnode; its data stays reachable.
	if err := cl.RemoveReplica(ctx, 2, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicas(ctx, 2, []uint64{2, 4}); err != nil {
		t.Fatal(err)
	}
	waitDeleted(ctx, t, c, 1, 2)
	// The last replica cannot go.
	if err := cl.RemoveReplica(ctx, 2, 2); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicas(ctx, 2, []uint64{4}); err != nil {
		t.Fatal(err)
	}
	if err := cl.RemoveReplica(ctx, 2, 4); !errors.Is(err, client.ErrDirectoryChange) {
		t.Fatalf("removing the last replica: %v", err)
	}
	res, err = other.Exec(ctx, client.NewTx().Read(2, 64, 11))
	if err != nil || string(res.Reads[0]) != "new memnode" {
		t.Fatalf("read after removals: %+v, %v", res, err)
	}

	// Health through the Replicas RPC.
	_, states, err := cl.MemnodeStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 3 || states[2].Leader != 4 || !states[2].Converged {
		t.Fatalf("memnode status: %+v", states)
	}
}

// waitDeleted waits until host no longer stores memnode mn. A removed
// replica stops (Groups drops it) before its data is deleted, so a check
// right after WaitReplicas would race the deletion.
func waitDeleted(ctx context.Context, t *testing.T, c *cluster.Cluster, host, mn uint64) {
	t.Helper()
	if err := cluster.Eventually(ctx, fmt.Sprintf("host %d deletes memnode %d", host, mn), func() error {
		stored, err := c.Host(host).Replication().StoredGroups()
		if err != nil {
			return err
		}
		if slices.Contains(stored, mn) {
			return fmt.Errorf("host %d still stores memnode %d after its removal: %v", host, mn, stored)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Moving a replica while a client writes: no acknowledged write is lost and
// the new replica catches up from a snapshot.
func TestMoveReplicaUnderLoad(t *testing.T) {
	c := startSpare(t, replication.Config{SnapshotEntries: 64})
	cl := oneSeedClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	restores := c.Host(4).Replication().Stats().Restores

	var (
		mu    sync.Mutex
		acked []uint64
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(1); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, err := cl.Exec(ctx, client.NewTx().Write(1, i*8, le64(i)))
			if err == nil {
				mu.Lock()
				acked = append(acked, i)
				mu.Unlock()
			} else if ctx.Err() != nil {
				return
			}
		}
	}()
	ackedN := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	if err := cluster.Eventually(ctx, "writes before the move", func() error {
		if ackedN() < 200 {
			return errors.New("too few")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := cl.MoveReplica(ctx, 1, 1, 4); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicas(ctx, 1, []uint64{2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	n := ackedN()
	if err := cluster.Eventually(ctx, "writes after the move", func() error {
		if ackedN() < n+100 {
			return errors.New("too few")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()

	if got := c.Host(4).Replication().Stats().Restores; got <= restores {
		t.Fatalf("host 4 restored %d snapshots, want a new one (caught up by snapshot)", got-restores)
	}
	waitDeleted(ctx, t, c, 1, 1)
	mu.Lock()
	defer mu.Unlock()
	for start := 0; start < len(acked); start += 512 {
		tx := client.NewTx()
		batch := acked[start:min(len(acked), start+512)]
		for _, i := range batch {
			tx.Read(1, i*8, 8)
		}
		res, err := cl.Exec(ctx, tx)
		if err != nil {
			t.Fatal(err)
		}
		for k, i := range batch {
			if got := binary.LittleEndian.Uint64(res.Reads[k]); got != i {
				t.Fatalf("acknowledged write %d lost: read %d", i, got)
			}
		}
	}
	// The new replica holds the data too: it applied as far as the leader.
	leader := c.Host(c.Host(2).Replication().Leader(1))
	if leader == nil {
		t.Fatal("no leader of memnode 1")
	}
	lm, err := leader.Replication().Membership(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Eventually(ctx, "host 4 applied memnode 1", func() error {
		st, err := c.Host(4).Replication().Status(1)
		if err != nil {
			return err
		}
		if st.Applied < lm.Commit {
			return errors.New("behind")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged writes survived the move; host 4 restored %d snapshot(s)", len(acked),
		c.Host(4).Replication().Stats().Restores-restores)
}

// Moving the leader's own replica: the leader hands leadership over first.
func TestMoveLeaderReplica(t *testing.T) {
	c := startSpare(t, replication.Config{})
	cl := oneSeedClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.Exec(ctx, client.NewTx().Write(0, 8, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	leader := c.Host(1).Replication().Leader(0)
	if leader == 0 {
		t.Fatal("no leader of memnode 0")
	}
	want := []uint64{4}
	for _, r := range []uint64{1, 2, 3} {
		if r != leader {
			want = append(want, r)
		}
	}
	if err := cl.MoveReplica(ctx, 0, leader, 4); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicas(ctx, 0, want); err != nil {
		t.Fatal(err)
	}
	res, err := cl.Exec(ctx, client.NewTx().Compare(0, 8, []byte("before")).Write(0, 8, []byte("after!")))
	if err != nil || !res.Committed {
		t.Fatalf("memnode 0 after moving its leader: %+v, %v", res, err)
	}
	// The directory still works from any seed, the old leader's included.
	d, err := cl.Directory(ctx)
	if err != nil || !slices.Equal(d.Memnode(0).Replicas, slices.Sorted(slices.Values(want))) {
		t.Fatalf("directory: %+v, %v", d, err)
	}
}
