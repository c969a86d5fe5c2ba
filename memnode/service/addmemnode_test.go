package service_test

import (
	"context"
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
