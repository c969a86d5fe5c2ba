package service_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode/service"
)

// With the static placement (no directory), a host whose first boot stopped
// after starting some of its configured replicas must start the others at
// its next boot: nothing else ever would, and the memnode would be left
// with one replica fewer than configured (no quorum once one more host
// fails).
func TestStaticPlacementFirstBootInterruptedStartsTheRest(t *testing.T) {
	dir := t.TempDir()
	cfg := cluster.Config{Hosts: 3, Memnodes: 2, Replicas: 3, DataDir: dir, DirectoryPoll: -1, NoSync: true}
	crash := errors.New("crash before memnode 1")
	service.SetStartGroupHook(func(host, mn uint64) error {
		if host == 1 && mn == 1 {
			return crash
		}
		return nil
	})
	_, err := cluster.Start(cfg)
	service.SetStartGroupHook(nil)
	if !errors.Is(err, crash) {
		t.Fatalf("first boot: %v, want the injected crash", err)
	}

	c, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if g := c.Host(1).Replication().Groups(); !slices.Contains(g, 1) {
		t.Fatalf("host 1 runs memnodes %v after its restart, want 0 and 1 (its configured placement)", g)
	}
	// Memnode 1 on hosts 1 and 3 alone: host 1's replica counts.
	if err := c.StopHost(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: []string{c.Seeds()[0], c.Seeds()[2]}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cluster.Eventually(ctx, "a write to memnode 1 with host 2 down", func() error {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		defer wcancel()
		_, err := cl.Exec(wctx, client.NewTx().Write(1, 0, []byte("x")))
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
