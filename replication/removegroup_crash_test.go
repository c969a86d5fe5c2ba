package replication

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
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
