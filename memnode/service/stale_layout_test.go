package service_test

import (
	"context"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// A host that cannot read the directory (memnode 0 without quorum) answers
// the Cluster RPC from the layout it last installed, which after a restart
// is its configured placement (directory_version 0). A client that already
// knew a newer directory used to take that older layout over its own: after
// a move it routed back to the host the replica had left, which pointed at
// itself, and the client went round between it and its refreshes until it
// gave up, though the replica's new host served it all along.
func TestClientKeepsNewerLayoutThanASeedAnswers(t *testing.T) {
	// Memnode 0 on host 1, memnode 1 on host 2, host 3 a spare.
	c := startOnline(t, cluster.Config{Hosts: 3, Spares: 1, Replicas: 1, Memnodes: 2, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	seed := c.Seeds()[1] // host 2
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	cl, err := client.New(cctx, client.Config{Seeds: []string{seed}})
	ccancel()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Exec(ctx, client.NewTx().Write(1, 8, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	if err := cl.MoveReplica(ctx, 1, 2, 3); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicas(ctx, 1, []uint64{3}); err != nil {
		t.Fatal(err)
	}
	waitDeleted(ctx, t, c, 2, 1)
	if err := cl.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	newer := cl.Cluster().GetDirectoryVersion()
	if res, err := cl.Exec(ctx, client.NewTx().Read(1, 8, 6)); err != nil || string(res.Reads[0]) != "before" {
		t.Fatalf("read after the move: %+v, %v", res, err)
	}

	// Memnode 0 goes down; host 2 restarts and knows only its configured
	// placement (memnode 1 on host 2).
	if err := c.StopHost(0); err != nil {
		t.Fatal(err)
	}
	if err := c.StopHost(1); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartHost(1); err != nil {
		t.Fatal(err)
	}
	if err := cl.Refresh(ctx); err != nil { // as an error would make it
		t.Fatal(err)
	}
	if v := cl.Cluster().GetDirectoryVersion(); v < newer {
		t.Errorf("client installed directory version %d over the %d it knew", v, newer)
	}
	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	defer rcancel()
	res, err := cl.Exec(rctx, client.NewTx().Read(1, 8, 6))
	if err != nil || string(res.Reads[0]) != "before" {
		t.Fatalf("memnode 1, served by host 3, unreachable through a client that knew where it was: %+v, %v", res, err)
	}
}
