package replication

import (
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// trEventually polls cond until it holds or d passes.
func trEventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// trMsg builds a raft message of type typ from from to to with the given
// index and term 1.
func trMsg(group, from, to uint64, typ raftpb.MessageType, index uint64) GroupMessage {
	return GroupMessage{Group: group, Msg: &raftpb.Message{
		Type:  typ.Enum(),
		From:  proto.Uint64(from),
		To:    proto.Uint64(to),
		Term:  proto.Uint64(1),
		Index: proto.Uint64(index),
	}}
}

// trSnap builds a MsgSnap carrying data.
func trSnap(group, from, to uint64, data []byte) GroupMessage {
	m := trMsg(group, from, to, raftpb.MsgSnap, 0)
	m.Msg.Snapshot = &raftpb.Snapshot{
		Data: data,
		Metadata: &raftpb.SnapshotMetadata{
			Index:     proto.Uint64(100),
			Term:      proto.Uint64(3),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}},
		},
	}
	return m
}

type trSnapReport struct {
	group, to uint64
	ok        bool
}

// trHandler records everything a Transport hands to it.
type trHandler struct {
	mu          sync.Mutex
	msgs        []GroupMessage
	calls       int // HandleMessages calls
	unreachable map[[2]uint64]int
	snaps       []trSnapReport
	onMsgs      func([]GroupMessage) // optional, called outside mu
}

func newTrHandler() *trHandler {
	return &trHandler{unreachable: make(map[[2]uint64]int)}
}

func (h *trHandler) HandleMessages(msgs []GroupMessage) {
	h.mu.Lock()
	h.msgs = append(h.msgs, msgs...)
	h.calls++
	f := h.onMsgs
	h.mu.Unlock()
	if f != nil {
		f(msgs)
	}
}

func (h *trHandler) ReportUnreachable(group, to uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unreachable[[2]uint64{group, to}]++
}

func (h *trHandler) ReportSnapshot(group, to uint64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snaps = append(h.snaps, trSnapReport{group: group, to: to, ok: ok})
}

func (h *trHandler) received() []GroupMessage {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]GroupMessage(nil), h.msgs...)
}

func (h *trHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.msgs)
}

func (h *trHandler) unreachableCount(group, to uint64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.unreachable[[2]uint64{group, to}]
}

func (h *trHandler) snapReports() []trSnapReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]trSnapReport(nil), h.snaps...)
}
