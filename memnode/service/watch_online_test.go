package service_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/memnode/service"
)

func rawWatch(t *testing.T, ctx context.Context, addr string, mn uint64) tuttipb.Memnode_WatchClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	st, err := tuttipb.NewMemnodeClient(cc).Watch(ctx, &tuttipb.WatchRequest{Memnode: mn,
		Ranges: []*tuttipb.Range{{Addr: 0, Len: 8}}})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func watchErrorOf(t *testing.T, err error) *tuttipb.WatchError {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if we, ok := d.(*tuttipb.WatchError); ok {
			return we
		}
	}
	t.Fatalf("status %v carries no WatchError", err)
	return nil
}

// Only the leader serves a watch: a follower refuses with the leader's
// address, and the leader ends the stream when it hands leadership over.
func TestWatchServedByLeaderOnly(t *testing.T) {
	c := startCluster(t, service.RecoveryConfig{Disabled: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	li, err := c.WaitLeader(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	leader := c.Hosts[li]
	var follower *service.Host
	for _, h := range c.Hosts {
		if h != leader {
			follower = h
		}
	}
	_, err = rawWatch(t, ctx, follower.Addr(), 1).Recv()
	if we := watchErrorOf(t, err); status.Code(err) != codes.FailedPrecondition ||
		we.GetStatus() != tuttipb.Status_STATUS_NOT_LEADER || we.GetLeaderHost() != leader.ID() || we.GetLeaderAddr() != leader.Addr() {
		t.Fatalf("follower answered %v (%v), want NOT_LEADER pointing at host %d", err, we, leader.ID())
	}
	_, err = rawWatch(t, ctx, leader.Addr(), 42).Recv()
	if we := watchErrorOf(t, err); status.Code(err) != codes.NotFound || we.GetStatus() != tuttipb.Status_STATUS_UNKNOWN_MEMNODE {
		t.Fatalf("unknown memnode: %v", err)
	}

	st := rawWatch(t, ctx, leader.Addr(), 1)
	first, err := st.Recv()
	if err != nil || !first.GetReset_() || first.GetSeq() != 1 || first.GetMemnode() != 1 {
		t.Fatalf("first event %v, %v: want seq 1 with reset", first, err)
	}
	if err := leader.Replication().TransferLeader(ctx, 1, follower.ID()); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			if we := watchErrorOf(t, err); we.GetStatus() != tuttipb.Status_STATUS_NOT_LEADER {
				t.Fatalf("stream ended with %v", err)
			}
			break
		}
		if ev.GetSeq() < 2 {
			t.Fatalf("event %v after the first", ev)
		}
	}
}
