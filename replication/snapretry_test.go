package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/raft/v3/raftpb"
)

// snapFailFS fails the creation of snapshot files while fail is set, as a
// full or failing disk would, and counts the failures.
type snapFailFS struct {
	vfs.FS
	fail   atomic.Bool
	failed atomic.Int64
}

func (f *snapFailFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	if f.fail.Load() && strings.HasSuffix(name, ".snap.tmp") {
		f.failed.Add(1)
		return nil, errors.New("injected: no space left on device")
	}
	return f.FS.Create(name, c)
}

// The snapshot taken after a configuration change is the one a replica
// being added can restore (raft refuses a snapshot whose configuration does
// not name it). If writing it fails once, it is tried again: else the new
// replica is sent the older snapshot over and over, refuses it every time,
// and never catches up until SnapshotEntries more entries are applied.
func TestFailedSnapshotAfterConfChangeIsRetried(t *testing.T) {
	net := NewFaultNetwork(1)
	fs1 := &snapFailFS{FS: vfs.NewMem()}
	start := func(id uint64, fs vfs.FS) *Host {
		t.Helper()
		cfg := testConfig()
		cfg.ID = id
		cfg.DataDir = "/data"
		cfg.Transport = net.Transport(id)
		h, err := newHost(cfg, fs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	h1 := start(1, fs1)
	sm1 := newTestSM()
	if err := h1.StartGroup(1, []uint64{1}, sm1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "leadership", func() bool { return h1.Leader(1) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 5 {
		if _, err := h1.Propose(ctx, 1, fmt.Appendf(nil, "c%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	h2 := start(2, vfs.NewMem())
	sm2 := newTestSM()
	if err := h2.StartGroup(1, nil, sm2); err != nil {
		t.Fatal(err)
	}
	// The disk fails for the snapshot the change forces, then recovers.
	fs1.fail.Store(true)
	if err := h1.ChangeReplicas(ctx, 1, []*pb.ConfChangeSingle{
		{Type: pb.ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(2))},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the forced snapshot to fail", func() bool { return fs1.failed.Load() > 0 })
	fs1.fail.Store(false)
	waitFor(t, 10*time.Second, "the added replica to catch up", func() bool { return sm2.len() == 5 })
}
