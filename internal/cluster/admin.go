package cluster

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tutti-gcs/tutti/memnode/service"
)

// Host returns the running host with id, or nil.
func (c *Cluster) Host(id uint64) *service.Host {
	for _, h := range c.Hosts {
		if h != nil && h.ID() == id {
			return h
		}
	}
	return nil
}

// Eventually polls cond every 10ms until it returns nil or ctx ends; then
// it returns cond's last error, naming what was awaited.
func Eventually(ctx context.Context, what string, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// WaitDirectory waits until every running host has installed directory
// version v or later.
func (c *Cluster) WaitDirectory(ctx context.Context, v uint64) error {
	return Eventually(ctx, fmt.Sprintf("directory version %d on every host", v), func() error {
		for _, h := range c.Hosts {
			if h != nil && h.DirectoryVersion() < v {
				return fmt.Errorf("host %d has version %d", h.ID(), h.DirectoryVersion())
			}
		}
		return nil
	})
}

// WaitReplicas waits until memnode mn's Raft group has exactly the voters
// want (no learners, not joint), as its leader applied it, every host in
// want runs a replica, and no other running host does.
func (c *Cluster) WaitReplicas(ctx context.Context, mn uint64, want []uint64) error {
	want = slices.Sorted(slices.Values(want))
	return Eventually(ctx, fmt.Sprintf("memnode %d on hosts %v", mn, want), func() error {
		var leader *service.Host
		for _, h := range c.Hosts {
			if h == nil {
				continue
			}
			runs := slices.Contains(h.Replication().Groups(), mn)
			if runs != slices.Contains(want, h.ID()) {
				return fmt.Errorf("host %d runs a replica: %v", h.ID(), runs)
			}
			if runs && h.Replication().Leader(mn) == h.ID() {
				leader = h
			}
		}
		if leader == nil {
			return fmt.Errorf("no leader")
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		m, err := leader.Replication().Membership(cctx, mn)
		if err != nil {
			return err
		}
		if !slices.Equal(m.Voters, want) || len(m.Learners) > 0 || m.Joint() {
			return fmt.Errorf("leader %d: voters %v learners %v outgoing %v", leader.ID(), m.Voters, m.Learners, m.VotersOutgoing)
		}
		return nil
	})
}
