package replication

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// startEmptyReplica starts group 7 on host 1 as a new, empty replica (it
// waits for a leader's snapshot) and registers hosts 2 and 3 on the same
// network as recorders; it returns their transports and handlers.
func startEmptyReplica(t *testing.T) (*Host, [2]Transport, [2]*trHandler) {
	t.Helper()
	net := NewFaultNetwork(1)
	cfg := testConfig()
	cfg.ID, cfg.DataDir, cfg.Transport = 1, "/data", net.Transport(1)
	h, err := newHost(cfg, vfs.NewMem())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.StartGroup(7, nil, newTestSM()); err != nil {
		t.Fatal(err)
	}
	var trs [2]Transport
	var hs [2]*trHandler
	for i := range 2 {
		trs[i], hs[i] = net.Transport(uint64(i+2)), newTrHandler()
		if err := trs[i].Start(hs[i]); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { trs[i].Close() })
	}
	return h, trs, hs
}

// probeMsg is a heartbeat from host 2 whose answer shows that host 1 has
// processed everything sent to it before (one inbox, in order).
func probeMsg(term uint64) GroupMessage {
	m := trMsg(7, 2, 1, raftpb.MsgHeartbeat, 0)
	m.Msg.Term, m.Msg.Context = proto.Uint64(term), []byte("probe")
	return m
}

func waitProbe(t *testing.T, h *trHandler) {
	t.Helper()
	waitFor(t, 10*time.Second, "the probe's answer", func() bool {
		for _, m := range h.received() {
			if m.Msg.GetType() == raftpb.MsgHeartbeatResp && string(m.Msg.GetContext()) == "probe" {
				return true
			}
		}
		return false
	})
}

// A replica that has received nothing yet (started empty, waiting for a
// snapshot) must not vote: a candidate that asks it counts it as a voter,
// which only a former incarnation of it was (its host lost its data
// directory), and that one's votes and acknowledgements are forgotten. It
// used to grant any candidate, its empty log being behind none; it
// rejects.
func TestEmptyReplicaDoesNotVote(t *testing.T) {
	_, trs, hs := startEmptyReplica(t)
	for _, typ := range []raftpb.MessageType{raftpb.MsgPreVote, raftpb.MsgVote} {
		v := trMsg(7, 3, 1, typ, 10)
		v.Msg.Term, v.Msg.LogTerm = proto.Uint64(6), proto.Uint64(5)
		trs[1].Send([]GroupMessage{v})
	}
	trs[0].Send([]GroupMessage{probeMsg(6)})
	waitProbe(t, hs[0])
	rejected := 0
	for _, m := range hs[1].received() {
		if typ := m.Msg.GetType(); typ == raftpb.MsgVoteResp || typ == raftpb.MsgPreVoteResp {
			if !m.Msg.GetReject() {
				t.Fatalf("the empty replica granted %v to host 3", typ)
			}
			rejected++
		}
	}
	if rejected != 2 {
		t.Fatalf("%d rejections, want 2 (the vote and the pre-vote)", rejected)
	}
}

// A heartbeat whose commit index is beyond the replica's log comes from a
// leader's record of acknowledgements a former incarnation made (queued
// for the host before its replica was removed and added back empty): raft
// panics on it ("tocommit(3) is out of range [lastIndex(0)]"), which took
// the host down. It is dropped; a heartbeat within the log is answered.
func TestHeartbeatBeyondTheLogIsDropped(t *testing.T) {
	_, trs, hs := startEmptyReplica(t)
	stale := trMsg(7, 2, 1, raftpb.MsgHeartbeat, 0)
	stale.Msg.Term, stale.Msg.Commit, stale.Msg.Context = proto.Uint64(6), proto.Uint64(3), []byte("stale")
	trs[0].Send([]GroupMessage{stale, probeMsg(6)})
	waitProbe(t, hs[0])
	for _, m := range hs[0].received() {
		if string(m.Msg.GetContext()) == "stale" {
			t.Fatalf("the stale heartbeat was answered: %v", m.Msg)
		}
	}
}
