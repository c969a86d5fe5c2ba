package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/tutti-gcs/tutti/replication"
)

// Faults cuts Raft traffic between the hosts of a local cluster: it wraps
// each host's transport (pass Faults.Wrap as Config.WrapTransport) and drops
// Raft messages, snapshots included, between hosts that are partitioned from
// each other. Client traffic is not affected: a cut-off host still answers
// clients, as a host behind a real partition would answer the clients on its
// side.
//
// A message is checked when it is sent and again when it is delivered, so a
// partition also stops messages already in flight. A dropped MsgSnap is
// reported to the sender's Raft as failed, as a broken snapshot stream would
// be.
//
// Faults survives host restarts: a restarted host gets a new wrapped
// transport under the same rules. All methods are safe for concurrent use.
type Faults struct {
	dropped atomic.Uint64

	mu struct {
		sync.RWMutex
		// partition maps a host to 1 + the index of its set in the last
		// Partition call; hosts named in no set are 0. nil: no partition.
		partition map[uint64]int
		isolated  map[uint64]bool
	}
	// hold: the appends of one group held back (HoldAppends).
	hold struct {
		sync.Mutex
		on    bool
		group uint64
		sends []func() // the held appends, in order
	}
}

// HoldAppends holds back the log appends (MsgApp) of Raft group (a memnode
// id) sent from now on, letting every other message through, heartbeats
// included: a leader whose followers are slow to persist, so what it
// appends stays uncommitted while it still confirms its leadership (and
// serves ReadIndex reads). ReleaseAppends sends what was held, in order,
// and stops holding.
func (f *Faults) HoldAppends(group uint64) {
	f.hold.Lock()
	defer f.hold.Unlock()
	f.hold.on, f.hold.group = true, group
}

// ReleaseAppends sends the appends HoldAppends held and stops holding.
func (f *Faults) ReleaseAppends() {
	f.hold.Lock()
	sends := f.hold.sends
	f.hold.on, f.hold.sends = false, nil
	f.hold.Unlock()
	for _, send := range sends {
		send()
	}
}

// HeldAppends returns how many sends of appends are held.
func (f *Faults) HeldAppends() int {
	f.hold.Lock()
	defer f.hold.Unlock()
	return len(f.hold.sends)
}

// held takes the appends of the held group out of msgs, to be sent by
// send on release, and returns the rest.
func (f *Faults) held(msgs []replication.GroupMessage, send func([]replication.GroupMessage)) []replication.GroupMessage {
	f.hold.Lock()
	defer f.hold.Unlock()
	if !f.hold.on {
		return msgs
	}
	var pass, keep []replication.GroupMessage
	for _, m := range msgs {
		if m.Group == f.hold.group && m.Msg != nil && m.Msg.GetType() == raftpb.MsgApp {
			keep = append(keep, m)
		} else {
			pass = append(pass, m)
		}
	}
	if len(keep) > 0 {
		f.hold.sends = append(f.hold.sends, func() { send(keep) })
	}
	return pass
}

// NewFaults returns a filter that lets every message through until told
// otherwise.
func NewFaults() *Faults {
	f := &Faults{}
	f.mu.isolated = make(map[uint64]bool)
	return f
}

// Partition splits the hosts (by id) into the given sets: hosts in different
// sets cannot exchange Raft messages. Hosts named in no set form one more set
// of their own. It replaces any earlier partition; Partition() removes it.
func (f *Faults) Partition(sets ...[]uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(sets) == 0 {
		f.mu.partition = nil
		return
	}
	f.mu.partition = make(map[uint64]int)
	for i, set := range sets {
		for _, h := range set {
			f.mu.partition[h] = i + 1
		}
	}
}

// Isolate cuts every Raft link to and from host (by id) until Heal.
func (f *Faults) Isolate(host uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.isolated[host] = true
}

// Heal removes the partition and every isolation.
func (f *Faults) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.partition = nil
	clear(f.mu.isolated)
}

// Linked reports whether a Raft message from host from to host to passes now.
func (f *Faults) Linked(from, to uint64) bool {
	if from == to {
		return true
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.mu.isolated[from] || f.mu.isolated[to] {
		return false
	}
	return f.mu.partition == nil || f.mu.partition[from] == f.mu.partition[to]
}

// Dropped returns how many Raft messages the filter has dropped so far.
func (f *Faults) Dropped() uint64 { return f.dropped.Load() }

// Wrap returns t filtered by f for host; it fits Config.WrapTransport.
func (f *Faults) Wrap(host uint64, t replication.Transport) replication.Transport {
	return &faultTransport{f: f, host: host, inner: t}
}

// faultTransport is one host's transport behind the filter.
type faultTransport struct {
	f     *Faults
	host  uint64
	inner replication.Transport

	reports sync.WaitGroup // goroutines reporting dropped snapshots
	mu      struct {
		sync.RWMutex
		h      replication.Handler // nil before Start
		closed bool
	}
}

func (t *faultTransport) Start(h replication.Handler) error {
	t.mu.Lock()
	t.mu.h = h
	t.mu.Unlock()
	return t.inner.Start(&faultHandler{t: t, h: h})
}

func (t *faultTransport) Send(msgs []replication.GroupMessage) {
	var pass []replication.GroupMessage // nil until a message is dropped
	for i, m := range msgs {
		if m.Msg == nil || t.f.Linked(t.host, m.Msg.GetTo()) {
			if pass != nil {
				pass = append(pass, m)
			}
			continue
		}
		if pass == nil {
			pass = append(make([]replication.GroupMessage, 0, len(msgs)), msgs[:i]...)
		}
		t.f.dropped.Add(1)
		if m.Msg.GetType() == raftpb.MsgSnap {
			t.reportSnapshotFailed(m.Group, m.Msg.GetTo())
		}
	}
	if pass == nil {
		pass = msgs
	}
	if pass = t.f.held(pass, t.inner.Send); len(pass) > 0 {
		t.inner.Send(pass)
	}
}

// reportSnapshotFailed tells Raft a snapshot was not delivered. Send must not
// call the handler itself, so the report comes from its own goroutine; none
// comes after Close.
func (t *faultTransport) reportSnapshotFailed(group, to uint64) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.mu.closed || t.mu.h == nil {
		return
	}
	h := t.mu.h
	t.reports.Go(func() {
		t.mu.RLock()
		defer t.mu.RUnlock()
		if !t.mu.closed {
			h.ReportSnapshot(group, to, false)
		}
	})
}

func (t *faultTransport) Close() error {
	t.mu.Lock()
	t.mu.closed = true
	t.mu.Unlock()
	t.reports.Wait()
	return t.inner.Close()
}

// faultHandler filters what the inner transport delivers.
type faultHandler struct {
	t *faultTransport
	h replication.Handler
}

func (fh *faultHandler) HandleMessages(msgs []replication.GroupMessage) {
	pass := make([]replication.GroupMessage, 0, len(msgs))
	for _, m := range msgs {
		if fh.t.f.Linked(m.Msg.GetFrom(), fh.t.host) {
			pass = append(pass, m)
		} else {
			fh.t.f.dropped.Add(1)
		}
	}
	if len(pass) > 0 {
		fh.h.HandleMessages(pass)
	}
}

func (fh *faultHandler) ReportUnreachable(group, to uint64) { fh.h.ReportUnreachable(group, to) }

func (fh *faultHandler) ReportSnapshot(group, to uint64, ok bool) {
	fh.h.ReportSnapshot(group, to, ok)
}

// Leader returns the index of the running host that believes it leads
// memnode mn, or -1. During an election or a partition two hosts may believe
// so; the one with the lowest index is returned.
func (c *Cluster) Leader(mn uint64) int {
	for i, h := range c.Hosts {
		if h != nil && h.Replication().Leader(mn) == h.ID() {
			return i
		}
	}
	return -1
}

// WaitLeader waits until some running host leads memnode mn and returns its
// index.
func (c *Cluster) WaitLeader(ctx context.Context, mn uint64) (int, error) {
	for {
		if i := c.Leader(mn); i >= 0 {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("local cluster: memnode %d has no leader: %w", mn, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// CrashLeader stops, as a crash would, the host that leads memnode mn once
// it has one, and returns its index (restart it with RestartHost).
func (c *Cluster) CrashLeader(ctx context.Context, mn uint64) (int, error) {
	i, err := c.WaitLeader(ctx, mn)
	if err != nil {
		return -1, err
	}
	return i, c.StopHost(i)
}
