package service_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// A host drained of every replica keeps its data directory (the replicas'
// tombstones). Restarted, it must not bootstrap the configured placement
// again: that would create a second, empty memnode 0 whose directory it
// then writes afresh (a fork of the cluster).
func TestDrainedHostRestartDoesNotBootstrapAgain(t *testing.T) {
	c := startOnline(t, cluster.Config{Hosts: 2, Spares: 1, Replicas: 1, Memnodes: 1, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	if _, err := cl.Exec(ctx, client.NewTx().Write(0, 8, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	if err := cl.MoveReplica(ctx, 0, 1, 2); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicas(ctx, 0, []uint64{2}); err != nil {
		t.Fatal(err)
	}
	waitDeleted(ctx, t, c, 1, 0)
	d, err := cl.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if err := c.StopHost(0); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartHost(0); err != nil {
		t.Fatal(err)
	}
	// Checked at once: the reconciler would remove a bootstrapped replica
	// if it read the cluster's directory before that replica elected
	// itself, but not if it read the fresh, empty memnode 0 first.
	if g := c.Host(1).Replication().Groups(); len(g) > 0 {
		t.Fatalf("drained host 1 bootstrapped memnodes %v again at restart", g)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := cluster.Eventually(wctx, "host 1 installs the cluster's directory", func() error {
		h := c.Host(1)
		if v := h.DirectoryVersion(); v < d.Version {
			return fmt.Errorf("host 1 has directory version %d, the cluster %d", v, d.Version)
		}
		if g := h.Replication().Groups(); len(g) > 0 {
			return fmt.Errorf("host 1 runs replicas %v", g)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v (host 1 runs %v, leads memnode 0: %v)", err, c.Host(1).Replication().Groups(), c.Host(1).Replication().Leader(0) == 1)
	}
	// Through host 1 alone, memnode 0 still holds what was written.
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	one, err := client.New(cctx, client.Config{Seeds: c.Seeds()[:1]})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	res, err := one.Exec(cctx, client.NewTx().Read(0, 8, 6))
	if err != nil || string(res.Reads[0]) != "before" {
		t.Fatalf("memnode 0 through host 1: %+v, %v", res, err)
	}
}
