package client_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/replication"
)

// appHolder delays the log appends (MsgApp) of one Raft group while held,
// letting heartbeats through: a leader whose followers are slow to persist.
type appHolder struct {
	group uint64
	mu    sync.Mutex
	hold  bool
	held  []func()
}

type holdTransport struct {
	replication.Transport
	h *appHolder
}

func (t holdTransport) Send(msgs []replication.GroupMessage) {
	t.h.mu.Lock()
	var pass, keep []replication.GroupMessage
	for _, m := range msgs {
		if t.h.hold && m.Group == t.h.group && m.Msg != nil && m.Msg.GetType() == raftpb.MsgApp {
			keep = append(keep, m)
		} else {
			pass = append(pass, m)
		}
	}
	if len(keep) > 0 {
		t.h.held = append(t.h.held, func() { t.Transport.Send(keep) })
	}
	t.h.mu.Unlock()
	if len(pass) > 0 {
		t.Transport.Send(pass)
	}
}

func (h *appHolder) release() {
	h.mu.Lock()
	h.hold = false
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, send := range held {
		send()
	}
}

// After an Enqueue whose outcome is unknown, Enqueued false must mean the
// item will never land at pos (the type's documentation: it "may be
// retried"). A read served by ReadIndex does not wait for a proposal the
// leader has appended but not yet committed, so it can answer false for
// an enqueue that applies a moment later.
func TestEnqueuedFalseMeansNeverApplied(t *testing.T) {
	const mn = 1
	h := &appHolder{group: mn}
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2,
		WrapTransport: func(_ uint64, tr replication.Transport) replication.Transport { return holdTransport{tr, h} }})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	q, err := client.OpenQueue(ctx, cl, client.QueueConfig{Memnode: mn, Base: 0x1000, Capacity: 8, SlotSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, item("warm")); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.hold = true
	h.mu.Unlock()
	defer h.release()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	pos, err := q.Enqueue(short, item("once"))
	cancel()
	if !errors.Is(err, client.ErrUnknownOutcome) {
		t.Fatalf("enqueue with appends held: pos %d, err %v; want an unknown outcome", pos, err)
	}
	go func() { time.Sleep(500 * time.Millisecond); h.release() }()
	landed, err := q.Enqueued(ctx, pos, item("once"))
	if err != nil {
		t.Fatal(err)
	}
	if landed {
		return // the read waited for it: fine
	}
	// "Not enqueued": the producer may retry. Does the first attempt
	// still land?
	time.Sleep(time.Second)
	if now, err := q.Enqueued(ctx, pos, item("once")); err != nil || now {
		t.Fatalf("Enqueued(%d) said false, then the attempt applied (now %v, %v): a retry would enqueue the item twice", pos, now, err)
	}
}
