package service_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

// wipeHost stops host id (1-based) as a crash would, deletes its data
// directory (a replaced disk) and starts it again, empty, on its address.
func wipeHost(t *testing.T, c *cluster.Cluster, id uint64) {
	t.Helper()
	if err := c.StopHost(int(id - 1)); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(c.Dir, fmt.Sprintf("host-%d", id))); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartHost(int(id - 1)); err != nil {
		t.Fatal(err)
	}
}

// A host that comes back with an empty data directory under its id has
// forgotten every acknowledgement and vote it gave: it must not take part in
// its memnodes' groups as the voter it was. Replicas 1, 2, 3; a write is
// committed by 1 and 2 while 3 is cut off; 2 crashes; 1 loses its disk and
// comes back. It used to bootstrap its configured replicas afresh as a
// voter, vote for 3 (whose log lacks the write), and 3 led without it:
// when 2 came back, 3 overwrote 2's copy and the acknowledged write was
// gone for good. Now 1 finds the cluster running and bootstraps nothing:
// memnode 1 waits for host 2, which leads with the write, and host 1
// rejoins as a new member that catches up by snapshot.
func TestWipedHostDoesNotVoteAcknowledgedWritesAway(t *testing.T) {
	var logs syncbuf.Buffer
	f := cluster.NewFaults()
	c := startOnline(t, cluster.Config{Hosts: 3, Memnodes: 2, Replicas: 3, DirectoryPoll: 50 * time.Millisecond,
		WrapTransport: f.Wrap, Logger: zerolog.New(&logs).Level(zerolog.InfoLevel)})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	const mn = 1
	if _, err := cl.Exec(ctx, client.NewTx().Write(mn, 0, []byte("before"))); err != nil {
		t.Fatal(err)
	}

	// Host 3 lags: cut off, it no longer leads memnode 1 (CheckQuorum) and
	// the write below commits on hosts 1 and 2 only.
	f.Isolate(3)
	if err := cluster.Eventually(ctx, "memnode 1 led by host 1 or 2 only", func() error {
		for _, h := range c.Hosts {
			if l := h.Replication().Leader(mn); l == h.ID() && h.ID() == 3 {
				return fmt.Errorf("host 3 still leads")
			}
		}
		if i := c.Leader(mn); i != 0 && i != 1 {
			return fmt.Errorf("leader index %d", i)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	acked := []byte("acknowledged")
	if _, err := cl.Exec(ctx, client.NewTx().Write(mn, 0, acked)); err != nil {
		t.Fatal(err)
	}

	// Host 2 crashes; host 1 loses its disk and comes back; host 3 is
	// reachable again.
	if err := c.StopHost(1); err != nil {
		t.Fatal(err)
	}
	if err := c.StopHost(0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(c.Dir, "host-1")); err != nil {
		t.Fatal(err)
	}
	f.Heal()
	if err := c.RestartHost(0); err != nil {
		t.Fatal(err)
	}
	// Either host 3 wins memnode 1 with the empty host's vote (the bug),
	// or host 1 declines to bootstrap its replicas (the fix).
	const declined = "not bootstrapping"
	if err := cluster.Eventually(ctx, "a leader of memnode 1 without host 2, or host 1 declining to bootstrap", func() error {
		if c.Leader(mn) >= 0 || logs.Lines(`"host":1`, declined) > 0 {
			return nil
		}
		return fmt.Errorf("neither yet")
	}); err != nil {
		t.Fatal(err)
	}
	if i := c.Leader(mn); i >= 0 {
		t.Logf("host %d leads memnode 1 while host 2 is down", i+1)
	}

	if err := c.RestartHost(1); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := cluster.Eventually(ctx, "reading memnode 1", func() error {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		defer rcancel()
		res, err := cl.Exec(rctx, client.NewTx().Read(mn, 0, uint32(len(acked))))
		if err != nil {
			return err
		}
		got = res.Reads[0]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, acked) {
		t.Fatalf("memnode 1 holds %q, want the acknowledged write %q: it was lost", got, acked)
	}
	// Host 1 is a replica of memnode 1 again, caught up.
	if err := c.WaitReplicas(ctx, mn, []uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
}

// The common case of a replaced disk: every other host runs. The empty host
// used to bootstrap its configured replicas as the voter it was, its log
// empty (its votes and acknowledgements counted as before; and the
// leader, whose record of it still had the entries it had acknowledged,
// would send it a commit index beyond its log, on which raft panics). Now
// it runs a replica only once the group took it out and added it back: as
// a member that is no voter until it has caught up. It ends a voter again.
func TestWipedHostRejoinsAsNewMember(t *testing.T) {
	c := startOnline(t, cluster.Config{Hosts: 3, Memnodes: 2, Replicas: 3, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	for mn := range uint64(2) {
		if _, err := cl.Exec(ctx, client.NewTx().Write(mn, 0, []byte("written"))); err != nil {
			t.Fatal(err)
		}
	}
	wipeHost(t, c, 1)
	h1 := c.Host(1)
	// Until both groups have host 1 as a voter again, host 1 must never
	// run a replica that counts itself a voter before it received the
	// group's state (applied index 1: at most the bootstrap).
	for mn := range uint64(2) {
		if err := cluster.Eventually(ctx, fmt.Sprintf("memnode %d on hosts 1-3, host 1 caught up", mn), func() error {
			for g := range uint64(2) {
				m, err := h1.Replication().Membership(ctx, g)
				if err != nil {
					continue // not running
				}
				if slices.Contains(m.Voters, 1) && m.Applied <= 1 {
					t.Fatalf("host 1 runs memnode %d as a voter (voters %v) with an empty log (applied %d)", g, m.Voters, m.Applied)
				}
			}
			wctx, wcancel := context.WithTimeout(ctx, 20*time.Millisecond)
			defer wcancel()
			return c.WaitReplicas(wctx, mn, []uint64{1, 2, 3})
		}); err != nil {
			t.Fatal(err)
		}
	}
	m, err := h1.Replication().Membership(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Applied <= 1 {
		t.Fatalf("host 1 is a voter of memnode 1 again but applied only %d", m.Applied)
	}
	// Restarted with its new data (and the marker file beside its log
	// engine), it recovers its replicas as any host does.
	if err := c.StopHost(0); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartHost(0); err != nil {
		t.Fatal(err)
	}
	if g := c.Host(1).Replication().Groups(); len(g) != 2 {
		t.Fatalf("restarted host 1 runs replicas %v, want memnodes 0 and 1", g)
	}
	if err := c.WaitReplicas(ctx, 1, []uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
}

// A host started with --join (no placement) is marked as having started
// empty: it cannot tell a replica it never had from one it lost. A replica
// added to it with `tutti replica add` must still just start: the group
// does not list it yet, or lists it as a learner the leader has no
// acknowledgement from, so nothing is removed and added back.
func TestJoinedHostTakesAnAddedReplica(t *testing.T) {
	var logs syncbuf.Buffer
	c := startOnline(t, cluster.Config{Hosts: 3, Memnodes: 2, DirectoryPoll: 50 * time.Millisecond,
		Logger: zerolog.New(&logs).Level(zerolog.InfoLevel)})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[uint64]string{4: lis.Addr().String()}
	for i, a := range c.Seeds() {
		hosts[uint64(i+1)] = a
	}
	dir := filepath.Join(t.TempDir(), "host-4")
	h4, err := service.StartHost(service.HostConfig{ID: 4, Listener: lis, Hosts: hosts, DataDir: dir,
		DirectoryPoll: 50 * time.Millisecond, Replication: replication.Config{NoSync: true},
		Logger: zerolog.New(&logs).Level(zerolog.InfoLevel)})
	if err != nil {
		t.Fatal(err)
	}
	defer h4.Close()
	if err := cluster.Eventually(ctx, "host 4 in the directory", func() error {
		d, err := cl.Directory(ctx)
		if err != nil {
			return err
		}
		if d.Host(4) == nil {
			return fmt.Errorf("not yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := cl.AddReplica(ctx, 1, 4); err != nil {
		t.Fatal(err)
	}
	c.Hosts = append(c.Hosts, h4) // for WaitReplicas
	defer func() { c.Hosts = c.Hosts[:3] }()
	if err := c.WaitReplicas(ctx, 1, []uint64{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	if n := logs.Lines("lost"); n > 0 {
		t.Fatalf("%d log lines about a lost replica; the added replica was new:\n%s", n, logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "TUTTI-STARTED-EMPTY")); err != nil {
		t.Fatalf("the joined host's data directory is not marked: %v", err)
	}
}

// A wiped host's replicas are removed and added back as learners; the host
// crashes right after a leader added it back, or right after it started
// the replica (empty, before the leader's snapshot), and restarts from its
// disk, at once or after a while. Every memnode must end with the host a
// voter again (a memnode left with two voters stops at the next fault).
func TestWipedHostCrashingAfterReAddEndsAVoter(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after []string // log line the crash follows
		down  time.Duration
	}{
		{"added", []string{`"add learner"`, `"replica":3`}, 0},
		{"added, down 3s", []string{`"add learner"`, `"replica":3`}, 3 * time.Second},
		{"started", []string{`"host":3`, "started replica assigned by the directory"}, 0},
		{"started, down 3s", []string{`"host":3`, "started replica assigned by the directory"}, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			c := startOnline(t, cluster.Config{Hosts: 3, Memnodes: 3, Replicas: 3, DirectoryPoll: 50 * time.Millisecond,
				Logger: zerolog.New(&logs).Level(zerolog.InfoLevel)})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cl := oneSeedClient(t, c)
			for mn := range uint64(3) {
				if _, err := cl.Exec(ctx, client.NewTx().Write(mn, 0, []byte("written"))); err != nil {
					t.Fatal(err)
				}
			}
			wipeHost(t, c, 3)
			if err := cluster.Eventually(ctx, "host 3 added back", func() error {
				if logs.Lines(tc.after...) == 0 {
					return fmt.Errorf("not yet")
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err := c.StopHost(2); err != nil {
				t.Fatal(err)
			}
			time.Sleep(tc.down) // the host stays down: not a wait for a condition
			if err := c.RestartHost(2); err != nil {
				t.Fatal(err)
			}
			for mn := range uint64(3) {
				wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
				err := c.WaitReplicas(wctx, mn, []uint64{1, 2, 3})
				wcancel()
				if err != nil {
					t.Fatalf("%v\nlogs:\n%s", err, logs.String())
				}
			}
		})
	}
}
