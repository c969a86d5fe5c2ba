package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/membership"
)

// newTestMembersBench is the driver of bench members on c, its agents run
// by this test binary standing in for tutti; they stop with the test.
func newTestMembersBench(t *testing.T, c *cluster.Cluster) *membersBench {
	t.Helper()
	exe := standInForTutti(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := newClient(ctx, zerolog.Nop(), c.Seeds())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	b := &membersBench{exe: exe, seeds: c.Seeds(), logDir: t.TempDir(), progress: io.Discard, cl: cl,
		killed: map[string]bool{}, restarted: map[string]bool{}}
	t.Cleanup(b.stopAll)
	return b
}

// benchLog returns a spawned process's log file in dir.
func benchLog(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name+".log"))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// wantRegistered checks that the process table has a's incarnation alive
// at the gossip address a reported, a port the kernel picked.
func wantRegistered(ctx context.Context, t *testing.T, b *membersBench, a *benchAgent) {
	t.Helper()
	tb, err := membership.ReadTable(ctx, b.cl, membership.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := tb.Lookup(a.id)
	if _, port, err := net.SplitHostPort(a.addr); err != nil || port == "0" {
		t.Fatalf("%s: gossip address %q; want the port it bound", a.id, a.addr)
	}
	if !ok || r.Incarnation != a.inc || !r.State.Live() || r.GossipAddr != a.addr {
		t.Fatalf("%s#%d at %s: table row %+v (found %v)", a.id, a.inc, a.addr, r, ok)
	}
}

// bench members picked each agent's gossip port here (free when found),
// released it and passed it to the agent, which bound it later: any socket
// could take the port in between (say an ephemeral port of an outgoing
// connection of any process), and the agent could then not start. Each
// agent now binds a port the kernel picks and reports it on its ready
// line. The agents here take the port of their --gossip-addr themselves
// just before they bind it, as such a socket would.
func TestBenchMembersAgentsBindTheirOwnPorts(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 1})
	b := newTestMembersBench(t, c)
	t.Setenv(envTakeGossipPort, "1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, id := range []string{"bench-1", "bench-2"} {
		if err := b.spawn(ctx, id, ""); err != nil {
			t.Fatalf("%v; its log:\n%s", err, benchLog(b.logDir, id))
		}
	}
	for _, a := range b.agents {
		wantRegistered(ctx, t, b, a)
	}
}

// A crashed agent is restarted on its gossip address, as a restarted
// process would be. Another socket can take the port after the crash; the
// restart then failed (the agent cannot bind it, and exits). It now runs
// on a port the kernel picks.
func TestBenchMembersRestartOnATakenPort(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 1})
	b := newTestMembersBench(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := b.spawn(ctx, "bench-1", ""); err != nil {
		t.Fatalf("%v; its log:\n%s", err, benchLog(b.logDir, "bench-1"))
	}
	old := b.agents[0]
	if err := old.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit after SIGKILL")
	}
	// The test takes the dead agent's port, for UDP and TCP.
	u, err := net.ListenPacket("udp", old.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	l, err := net.Listen("tcp", old.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := b.spawn(ctx, old.id, old.addr); err != nil {
		t.Fatalf("restart with %s taken: %v; its log:\n%s", old.addr, err, benchLog(b.logDir, old.id))
	}
	a := b.agents[0]
	if len(b.agents) != 1 || a == old || a.addr == old.addr || a.inc <= old.inc {
		t.Fatalf("after the restart: %d agents, %s#%d at %s (before: #%d at %s)", len(b.agents), a.id, a.inc, a.addr, old.inc, old.addr)
	}
	wantRegistered(ctx, t, b, a)
}

// bench mcast passed each member with membership a gossip port found free
// here, which the member bound later: if another socket took it in
// between, the member retried the bind until the benchmark gave up on it
// after 60 s. The member now binds a port the kernel picks (nobody needs
// its address in advance). The member here takes the port of its
// --gossip-addr itself just before it binds it, as such a socket would.
func TestBenchMcastMemberBindsItsOwnPort(t *testing.T) {
	c := testCluster(t)
	exe := standInForTutti(t)
	t.Setenv(envTakeGossipPort, "1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b := &mcastBench{exe: exe, seeds: c.Seeds(), logDir: t.TempDir(), group: "bench-mcast-ports", progress: io.Discard,
		msgBytes: 64, payload: payloadRandom, memberLog: "info"}
	m, err := b.spawn(ctx, 0, true)
	if err != nil {
		t.Fatalf("%v; its log:\n%s", err, benchLog(b.logDir, "member-0"))
	}
	b.members = append(b.members, m)
	defer b.stopAll()
	cl, err := newClient(ctx, zerolog.Nop(), c.Seeds())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tb, err := membership.ReadTable(ctx, cl, membership.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := tb.Lookup("mcast-0")
	if _, port, err := net.SplitHostPort(r.GossipAddr); !ok || !r.State.Live() || err != nil || port == "0" {
		t.Fatalf("the member's row: %+v (found %v); want it alive at the port it bound", r, ok)
	}
}
