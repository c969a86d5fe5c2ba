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
)

// A replica change right after AddMemnode, before the new memnode's hosts
// have read the directory that creates it: the group must still be
// created (and then changed), not left with only empty replicas waiting
// for a snapshot no leader will ever send.
func TestChangeRightAfterAddMemnode(t *testing.T) {
	// A slow poll, so the hosts read the directory only after both
	// changes (the client's refresh wakes only its seed, host 1).
	c := startOnline(t, cluster.Config{Hosts: 4, Spares: 1, Memnodes: 2, DirectoryPoll: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	id, err := cl.AddMemnode(ctx, []uint64{2, 3, 4})
	if err != nil {
		t.Fatal(err)
	}
	// Two of the three initial voters leave before they ever ran: the
	// group still needs them to come into being.
	if err := cl.AddReplica(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
	for _, h := range []uint64{3, 4} {
		if err := cl.RemoveReplica(ctx, id, h); err != nil {
			t.Fatal(err)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := c.WaitReplicas(wctx, id, []uint64{1, 2}); err != nil {
		for _, h := range c.Hosts {
			if m, merr := h.Replication().Membership(ctx, id); merr == nil {
				t.Logf("host %d: leader %d voters %v learners %v applied %d", h.ID(), m.Leader, m.Voters, m.Learners, m.Applied)
			}
		}
		t.Fatal(err)
	}
	if _, err := cl.Exec(ctx, client.NewTx().Write(id, 0, []byte("created"))); err != nil {
		t.Fatal(err)
	}
}

// Default placement of a new memnode (no hosts given) must skip hosts that
// do not answer: decommissioned hosts hold no replica (load 0), so the
// least-loaded choice alone would put the memnode on them and its group
// would never elect a leader. With fewer answering hosts than replicas it
// must refuse and change nothing.
func TestAddMemnodeDefaultPlacementSkipsDownHosts(t *testing.T) {
	// Memnode 0 on hosts 1-3; hosts 4 and 5 hold nothing.
	c := startOnline(t, cluster.Config{Hosts: 5, Spares: 2, Memnodes: 1, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	// Decommission hosts 4 and 5: they stay in the directory, stopped.
	for _, i := range []int{3, 4} {
		if err := c.StopHost(i); err != nil {
			t.Fatal(err)
		}
	}
	id, err := cl.AddMemnode(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := cl.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if reps := d.Memnode(id).Replicas; !slices.Equal(reps, []uint64{1, 2, 3}) {
		t.Fatalf("memnode %d placed on %v, want the answering hosts [1 2 3]", id, reps)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if _, err := c.WaitLeader(wctx, id); err != nil {
		t.Fatalf("memnode %d: %v", id, err)
	}

	// The leader clears the new memnode's bootstrap voters (a directory
	// change of its own); wait for it, so the check below sees only ours.
	if err := cluster.Eventually(wctx, "bootstrap voters cleared", func() error {
		if d, err = cl.Directory(ctx); err != nil {
			return err
		}
		if b := d.Memnode(id).Bootstrap; len(b) > 0 {
			return fmt.Errorf("memnode %d bootstrap %v", id, b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Host 3 goes too: two answering hosts for three replicas.
	if err := c.StopHost(2); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AddMemnode(ctx, nil); !errors.Is(err, client.ErrTooFewHosts) {
		t.Fatalf("AddMemnode with 2 answering hosts of 5 for 3 replicas: %v, want ErrTooFewHosts", err)
	}
	after, err := cl.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Version != d.Version || len(after.Memnodes) != len(d.Memnodes) {
		t.Fatalf("refused AddMemnode changed the directory: version %d -> %d, memnodes %d -> %d",
			d.Version, after.Version, len(d.Memnodes), len(after.Memnodes))
	}
}
