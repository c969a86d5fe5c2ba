package service_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

// A host joining with the id of a running host (a typo in --id) must not
// take that host's place in the directory: it used to register its own
// address over the running host's, which wrote its own back at its next
// poll, and the two rewrote the directory for as long as both ran (clients
// and hosts that learn addresses from the directory sent host 2's traffic
// to the newcomer half of the time). The newcomer also started empty
// replicas of host 2's memnodes.
func TestJoiningHostWithATakenIDDoesNotRegister(t *testing.T) {
	c := startOnline(t, cluster.Config{Hosts: 3, Memnodes: 2, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	before, err := cl.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[uint64]string{}
	for i, a := range c.Seeds() {
		hosts[uint64(i+1)] = a
	}
	// The newcomer takes the id of a host that does not lead memnode 0
	// (one that did could not even read the directory: the newcomer
	// would take memnode 0's leader for itself).
	li, err := c.WaitLeader(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	victim := uint64(1 + (li+1)%3)
	orig := hosts[victim]
	impostorHosts := maps.Clone(hosts)
	impostorHosts[victim] = lis.Addr().String()
	imp, err := service.StartHost(service.HostConfig{ID: victim, Listener: lis, Hosts: impostorHosts,
		DataDir: filepath.Join(t.TempDir(), "impostor"), DirectoryPoll: 50 * time.Millisecond,
		Replication: replication.Config{NoSync: true}, Recovery: service.RecoveryConfig{Disabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer imp.Close()
	if err := cluster.Eventually(ctx, "the newcomer reads the directory", func() error {
		if v := imp.DirectoryVersion(); v < before.Version {
			return fmt.Errorf("version %d", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Some twenty polls of both hosts 2 (an absence needs a window; it
	// cannot make the test fail falsely).
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		d, err := cl.Directory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h := d.Host(victim); h == nil || h.Addr != orig || d.Version != before.Version {
			t.Fatalf("directory version %d -> %d, host %d at %+v (the running host at %s, the newcomer at %s)",
				before.Version, d.Version, victim, h, orig, impostorHosts[victim])
		}
		if g := imp.Replication().Groups(); len(g) > 0 {
			t.Fatalf("the newcomer with host %d's id runs replicas %v", victim, g)
		}
	}
	if _, err := cl.Exec(ctx, client.NewTx().Write(1, 0, []byte("still fine"))); err != nil {
		t.Fatal(err)
	}
}

// The probe that guards a host's id must know the host itself: a host
// restarted under another name for the same socket (--peers switched from
// an IP address to a host name) finds its old address answering with its
// id, and must still register its new one.
func TestHostRenamedOnTheSameSocketRegisters(t *testing.T) {
	c := startOnline(t, cluster.Config{Hosts: 3, Memnodes: 2, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	hosts := map[uint64]string{}
	for i, a := range c.Seeds() {
		hosts[uint64(i+1)] = a
	}
	if err := c.StopHost(2); err != nil {
		t.Fatal(err)
	}
	_, port, err := net.SplitHostPort(hosts[3])
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", hosts[3])
	if err != nil {
		t.Fatal(err)
	}
	renamed := maps.Clone(hosts)
	renamed[3] = net.JoinHostPort("localhost", port)
	h, err := service.StartHost(service.HostConfig{ID: 3, Listener: lis, Hosts: renamed,
		Memnodes: c.Memnodes(), DataDir: filepath.Join(c.Dir, "host-3"), DirectoryPoll: 50 * time.Millisecond,
		Replication: replication.Config{NoSync: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := cluster.Eventually(ctx, "host 3 registers its new name", func() error {
		d, err := cl.Directory(ctx)
		if err != nil {
			return err
		}
		if a := d.Host(3).Addr; a != renamed[3] {
			return fmt.Errorf("host 3 at %s", a)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
