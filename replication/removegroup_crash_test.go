package replication

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
)

// removeHookFS calls onRemove after each file removal.
type removeHookFS struct {
	vfs.FS
	onRemove func(name string)
}

func (f removeHookFS) Remove(name string) error {
	err := f.FS.Remove(name)
	f.onRemove(name)
	return err
}

// A crash inside RemoveGroup, after the batch deleting the group's keys is
// durable and before its snapshot files are removed, leaves files that no
// group names and no later StartGroup opens: the next Host on the data
// directory removes them.
func TestRemoveGroupCrashLeavesNoSnapshotFiles(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var (
		mu    sync.Mutex
		armed bool
		clone *vfs.MemFS
	)
	fs := removeHookFS{FS: mem, onRemove: func(name string) {
		mu.Lock()
		defer mu.Unlock()
		if armed && clone == nil && strings.Contains(name, snapFilePrefix(2)) {
			// The removal is not synced: this is the disk of a crash just
			// before it (the group's keys are already gone).
			clone = mem.CrashClone(vfs.CrashCloneCfg{})
		}
	}}
	cfg := testConfig()
	cfg.ID = 1
	cfg.DataDir = "/data"
	cfg.SnapshotEntries = 3
	net := NewFaultNetwork(1)
	cfg.Transport = net.Transport(1)
	h, err := newHost(cfg, fs)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []uint64{1, 2} {
		if err := h.StartGroup(g, []uint64{1}, newTestSM()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waitFor(t, 10*time.Second, "leadership", func() bool { return h.Leader(1) == 1 && h.Leader(2) == 1 })
	for i := range 10 {
		for _, g := range []uint64{1, 2} {
			if _, err := h.Propose(ctx, g, fmt.Appendf(nil, "c%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	groupFiles := func(fs vfs.FS, g uint64) []string {
		t.Helper()
		names, err := fs.List("/data/" + snapDirName)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range names {
			if strings.HasPrefix(n, snapFilePrefix(g)) {
				out = append(out, n)
			}
		}
		return out
	}
	waitFor(t, 10*time.Second, "a snapshot file of group 2", func() bool { return len(groupFiles(mem, 2)) > 0 })
	mu.Lock()
	armed = true
	mu.Unlock()
	if err := h.RemoveGroup(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	crashed := clone
	mu.Unlock()
	if crashed == nil {
		t.Fatal("RemoveGroup removed no snapshot file of group 2")
	}
	if len(groupFiles(crashed, 2)) == 0 {
		t.Fatal("the crash clone lost group 2's files: the test sets up nothing")
	}

	cfg.Transport = net.Transport(1)
	h, err = newHost(cfg, crashed)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	stored, err := h.StoredGroups()
	if err != nil || len(stored) != 1 || stored[0] != 1 {
		t.Fatalf("StoredGroups = %v, %v; want [1]", stored, err)
	}
	if err := h.StartGroup(1, nil, newTestSM()); err != nil {
		t.Fatal(err)
	}
	if left := groupFiles(crashed, 2); len(left) > 0 {
		t.Fatalf("snapshot files of removed group 2 left behind: %v", left)
	}
	if len(groupFiles(crashed, 1)) != 1 {
		t.Fatalf("group 1's snapshot files: %v, want one", groupFiles(crashed, 1))
	}
}

// A replica added back to a host that removed one of the group before is
// the same Raft voter to the others (replica id = host id). Started with no
// hard state it would vote a second time in a term its predecessor voted
// in: a delayed vote request of that term from a candidate still counting
// could then make a second leader of the term. It starts from its
// predecessor's term and vote instead, kept by RemoveGroup.
func TestReaddedReplicaDoesNotVoteTwice(t *testing.T) {
	net := NewFaultNetwork(1)
	cfg := testConfig()
	cfg.ID = 1
	cfg.DataDir = "/data"
	cfg.Transport = net.Transport(1)
	h, err := newHost(cfg, vfs.NewMem())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const group = 7
	if err := h.StartGroup(group, []uint64{1}, newTestSM()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "leadership", func() bool { return h.Leader(group) == 1 })
	var before *raftpb.HardState
	waitFor(t, 10*time.Second, "the self-vote persisted", func() bool {
		hs, err := h.eng.loadHardState(group)
		if err != nil {
			t.Fatal(err)
		}
		before = hs
		return hs != nil && hs.GetVote() == 1 && hs.GetTerm() >= 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.RemoveGroup(ctx, group); err != nil {
		t.Fatal(err)
	}
	// The engine holds no group but is not new (see RemovedGroups).
	if stored, err := h.StoredGroups(); err != nil || len(stored) != 0 {
		t.Fatalf("StoredGroups after RemoveGroup = %v, %v", stored, err)
	}
	if removed, err := h.RemovedGroups(); err != nil || !slices.Equal(removed, []uint64{group}) {
		t.Fatalf("RemovedGroups after RemoveGroup = %v, %v", removed, err)
	}
	trs, peers := faultHosts(t, net, 2)
	// Added back as an empty replica waiting for a snapshot.
	if err := h.StartGroup(group, nil, newTestSM()); err != nil {
		t.Fatal(err)
	}
	if removed, err := h.RemovedGroups(); err != nil || len(removed) != 0 {
		t.Fatalf("RemovedGroups with the group started again = %v, %v", removed, err)
	}
	if hs, err := h.eng.loadHardState(group); err != nil || hs.GetTerm() != before.GetTerm() || hs.GetVote() != 1 {
		t.Fatalf("re-added replica's hard state %v (%v), want term %d vote 1", hs, err, before.GetTerm())
	}
	// Host 2's vote request of the term the removed replica voted in.
	trs[2].Send([]GroupMessage{{Group: group, Msg: &raftpb.Message{
		Type: raftpb.MessageType_MsgVote.Enum(), From: new(uint64(2)), To: new(uint64(1)),
		Term: new(before.GetTerm()), LogTerm: new(before.GetTerm()), Index: new(uint64(1000)),
	}}})
	var resp *raftpb.Message
	waitFor(t, 10*time.Second, "the vote response", func() bool {
		for _, m := range peers[2].received() {
			if m.Group == group && m.Msg.GetType() == raftpb.MessageType_MsgVoteResp {
				resp = m.Msg
				return true
			}
		}
		return false
	})
	if !resp.GetReject() {
		t.Fatalf("the re-added replica voted for host 2 in term %d, where its predecessor voted for host 1", before.GetTerm())
	}
}
