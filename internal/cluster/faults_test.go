package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"

	"github.com/tutti-gcs/tutti/replication"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recordingTransport is an inner transport that records what it is asked to
// send and lets the test deliver messages to the handler it was started with.
type recordingTransport struct {
	mu     sync.Mutex
	sent   []replication.GroupMessage
	h      replication.Handler
	closed bool
}

func (r *recordingTransport) Send(msgs []replication.GroupMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, msgs...)
}

func (r *recordingTransport) Start(h replication.Handler) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h = h
	return nil
}

func (r *recordingTransport) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

type report struct {
	group, to uint64
	ok        bool
}

type recordingHandler struct {
	mu      sync.Mutex
	got     []replication.GroupMessage
	reports chan report
}

func (h *recordingHandler) HandleMessages(msgs []replication.GroupMessage) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, msgs...)
}
func (h *recordingHandler) ReportUnreachable(group, to uint64) {}
func (h *recordingHandler) ReportSnapshot(group, to uint64, ok bool) {
	h.reports <- report{group, to, ok}
}

func msg(group, from, to uint64, typ raftpb.MessageType) replication.GroupMessage {
	return replication.GroupMessage{Group: group, Msg: &raftpb.Message{Type: typ.Enum(), From: &from, To: &to}}
}

func TestFaultsFilterBothDirectionsAndReportDroppedSnapshots(t *testing.T) {
	f := NewFaults()
	inner := &recordingTransport{}
	h := &recordingHandler{reports: make(chan report, 4)}
	tr := f.Wrap(1, inner)
	if err := tr.Start(h); err != nil {
		t.Fatal(err)
	}

	f.Partition([]uint64{1, 2}, []uint64{3})
	tr.Send([]replication.GroupMessage{
		msg(7, 1, 2, raftpb.MsgApp),
		msg(7, 1, 3, raftpb.MsgApp),
		msg(8, 1, 3, raftpb.MsgSnap),
		msg(8, 1, 2, raftpb.MsgHeartbeat),
	})
	inner.mu.Lock()
	sent := inner.sent
	inner.mu.Unlock()
	if len(sent) != 2 || sent[0].Msg.GetTo() != 2 || sent[1].Msg.GetTo() != 2 {
		t.Fatalf("sent %v, want only the two messages to host 2", sent)
	}
	select {
	case r := <-h.reports:
		if r != (report{8, 3, false}) {
			t.Fatalf("snapshot report %+v, want a failure for group 8 to host 3", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a dropped snapshot was not reported")
	}

	// Incoming: messages from the other side are dropped as well.
	inner.h.HandleMessages([]replication.GroupMessage{msg(7, 3, 1, raftpb.MsgVote), msg(7, 2, 1, raftpb.MsgVote)})
	h.mu.Lock()
	if len(h.got) != 1 || h.got[0].Msg.GetFrom() != 2 {
		t.Fatalf("delivered %v, want only the message from host 2", h.got)
	}
	h.mu.Unlock()
	if got := f.Dropped(); got != 3 {
		t.Fatalf("dropped %d, want 3", got)
	}

	// Isolate cuts everything; Heal restores it. Hosts named in no set
	// form a set of their own.
	f.Heal()
	f.Isolate(2)
	if f.Linked(1, 2) || f.Linked(2, 3) || !f.Linked(1, 3) {
		t.Fatal("isolate did not cut exactly host 2's links")
	}
	f.Heal()
	f.Partition([]uint64{1})
	if f.Linked(1, 2) || !f.Linked(2, 3) {
		t.Fatal("hosts named in no set must form their own set")
	}
	f.Heal()
	if !f.Linked(1, 2) || !f.Linked(3, 1) {
		t.Fatal("heal did not restore the links")
	}

	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if !inner.closed {
		t.Fatal("Close did not close the inner transport")
	}
	// After Close, dropped snapshots are not reported.
	f.Isolate(3)
	tr.Send([]replication.GroupMessage{msg(8, 1, 3, raftpb.MsgSnap)})
	select {
	case r := <-h.reports:
		t.Fatalf("report %+v after Close", r)
	default:
	}
}

// A leader cut off by a partition loses its group to the majority side, and
// the cluster converges again after Heal.
func TestFaultsPartitionMovesLeadership(t *testing.T) {
	f := NewFaults()
	c, err := Start(Config{Hosts: 3, Memnodes: 1, NoSync: true, DataDir: t.TempDir(), WrapTransport: f.Wrap})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	mn := c.Memnodes()[0].ID
	old, err := c.WaitLeader(ctx, mn)
	if err != nil {
		t.Fatal(err)
	}
	f.Isolate(c.Hosts[old].ID())
	// Wait for a leader on the majority side and for the old one to step
	// down (check-quorum).
	for {
		l := -1
		for i, h := range c.Hosts {
			if i != old && h.Replication().Leader(mn) == h.ID() {
				l = i
			}
		}
		if l >= 0 && c.Hosts[old].Replication().Leader(mn) != c.Hosts[old].ID() {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no new leader on the majority side after isolating host %d", old+1)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if f.Dropped() == 0 {
		t.Fatal("no message was dropped")
	}
	f.Heal()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if i, err := c.CrashLeader(ctx, mn); err != nil {
		t.Fatal(err)
	} else if err := c.RestartHost(i); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}
