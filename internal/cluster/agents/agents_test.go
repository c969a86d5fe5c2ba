package agents

import (
	"context"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/membership"
)

func TestAgentsPerHost(t *testing.T) {
	c, err := cluster.Start(cluster.Config{NoSync: true, Memnodes: 1, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	a, err := Start(ctx, c, Config{Timing: membership.Timing{PollInterval: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	table := func() membership.Table {
		tb, err := membership.ReadTable(ctx, cl, membership.DefaultTable)
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	// Registered when Start returns, under the hosts' gRPC addresses.
	live := table().Live()
	if len(live) != 3 || a.Len() != 3 || len(a.GossipAddrs()) != 3 {
		t.Fatalf("live rows %v", live)
	}
	for i, r := range live {
		if r.ID != a.Node(i).ID() || r.GRPCAddr != c.Seeds()[i] || r.GossipAddr != a.Node(i).GossipAddr() {
			t.Fatalf("row %d: %v", i, r)
		}
	}
	// A crashed agent is declared dead by the others; Close makes the rest leave.
	inc := a.Node(2).Incarnation()
	a.Crash(2)
	if a.Node(2) != nil {
		t.Fatal("crashed agent still listed")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r, _ := table().Lookup("host-3"); r.State == membership.StateDead && r.Incarnation == inc {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host-3 not dead after 20 s: %v", table().Rows)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"host-1", "host-2"} {
		if r, _ := table().Lookup(id); r.State != membership.StateLeft {
			t.Fatalf("after Close %s is %v", id, r)
		}
	}
}
