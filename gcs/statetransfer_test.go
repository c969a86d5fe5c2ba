package gcs_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode"
)

// drain consumes g's events until they close.
func drain(g *gcs.Group) {
	go func() {
		for range g.Events() {
		}
	}()
}

// TestStateTransferAboveItemLimit: a state larger than the cluster's item
// limit (ClusterInfo.max_item_bytes) is written and read in items within
// it, as every other ring access of the package is. Before, the provider
// wrote and the joiner read the state in 512 KiB items whatever the limit:
// on a cluster with smaller items every write was rejected (ErrInvalid),
// the provider published a failed snapshot (and leaked the region it had
// allocated) and the joiner's Join failed with ErrStateTransfer.
func TestStateTransferAboveItemLimit(t *testing.T) {
	e := newEnvWith(t, cluster.Config{Memnode: memnode.Config{MaxItemBytes: 64 << 10}})
	state := bytes.Repeat([]byte("0123456789abcdef"), (300<<10)/16)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := e.node("a").Join(ctx, "g", gcs.JoinOptions{
		Snapshot: func() ([]byte, error) { return state, nil },
		Restore:  func([]byte) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	drain(a)
	var got []byte
	b, err := e.node("b").Join(ctx, "g", gcs.JoinOptions{
		Snapshot: func() ([]byte, error) { return nil, nil },
		Restore:  func(s []byte) error { got = s; return nil },
	})
	if err != nil {
		t.Fatalf("join with a state of %d bytes (items of at most 64 KiB): %v", len(state), err)
	}
	drain(b)
	if !bytes.Equal(got, state) {
		t.Fatalf("restored %d bytes, want the provider's %d", len(got), len(state))
	}
	for _, g := range []*gcs.Group{b, a} {
		if err := g.Leave(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
