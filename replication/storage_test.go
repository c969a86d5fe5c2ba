package replication

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

func testEntries(term, from, to uint64) []*pb.Entry {
	var out []*pb.Entry
	for i := from; i <= to; i++ {
		out = append(out, &pb.Entry{Term: new(term), Index: new(i), Type: pb.EntryNormal.Enum(), Data: []byte{byte(i), byte(term)}})
	}
	return out
}

func entryIndexes(ents []*pb.Entry) (idx, terms []uint64) {
	for _, e := range ents {
		idx = append(idx, e.GetIndex())
		terms = append(terms, e.GetTerm())
	}
	return idx, terms
}

func mustCommit(t *testing.T, b *logBatch) {
	t.Helper()
	if err := b.commit(true); err != nil {
		t.Fatal(err)
	}
	b.close()
}

// newTestEngine opens an engine in a temporary directory, closed when the
// test ends.
func newTestEngine(t *testing.T) *engine {
	t.Helper()
	e, err := openEngine(t.TempDir(), nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.close() })
	return e
}

// reopenEngine closes e and opens the engine in dir again.
func reopenEngine(t *testing.T, e *engine, dir string) *engine {
	t.Helper()
	if err := e.close(); err != nil {
		t.Fatal(err)
	}
	e, err := openEngine(dir, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// snapshotAt is a snapshot at index i (term 1, voter 1) whose data,
// "state@i", tells it apart.
func snapshotAt(i uint64) *pb.Snapshot {
	return &pb.Snapshot{Data: []byte(fmt.Sprintf("state@%d", i)), Metadata: &pb.SnapshotMetadata{Index: new(i), Term: new(uint64(1)),
		ConfState: pb.EnsureConfState(&pb.ConfState{Voters: []uint64{1}})}}
}

// installSnapFile makes s group g's snapshot, its data in a file of its
// own, as the worker does (older files removed).
func installSnapFile(t *testing.T, e *engine, g uint64, s *pb.Snapshot) {
	t.Helper()
	file, err := e.writeSnapFile(g, s, true)
	if err != nil {
		t.Fatal(err)
	}
	b := e.newBatch()
	if err := b.setSnapshot(g, s, false, file); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, b)
	if err := e.removeSnapFiles(g, file); err != nil {
		t.Fatal(err)
	}
}

func TestEngineRoundTrip(t *testing.T) {
	dir := t.TempDir()
	e, err := openEngine(dir, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	// Group 7: register, snapshot at 1, entries 2..10 term 1.
	b := e.newBatch()
	b.registerGroup(7, []uint64{1, 2, 3})
	snap := &pb.Snapshot{Metadata: &pb.SnapshotMetadata{Index: new(uint64(1)), Term: new(uint64(1)),
		ConfState: pb.EnsureConfState(&pb.ConfState{Voters: []uint64{1, 2, 3}})}}
	if err := b.setSnapshot(7, snap, true, ""); err != nil {
		t.Fatal(err)
	}
	b.appendEntries(7, testEntries(1, 2, 10), 1)
	b.setHardState(7, &pb.HardState{Term: new(uint64(1)), Vote: new(uint64(2)), Commit: new(uint64(5))})
	// Group 3 only registered; group 9 has entries and no registry (ignored by storedGroups).
	b.registerGroup(3, nil)
	b.appendEntries(9, testEntries(1, 1, 3), 0)
	mustCommit(t, b)

	// Overwrite a suffix: entries 6..7 at term 2 replace 6..10.
	b = e.newBatch()
	b.appendEntries(7, testEntries(2, 6, 7), 10)
	b.setHardState(7, &pb.HardState{Term: new(uint64(2)), Vote: new(uint64(3)), Commit: new(uint64(6))})
	mustCommit(t, b)

	check := func(e *engine) {
		t.Helper()
		groups, err := e.storedGroups()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(groups, []uint64{3, 7}) {
			t.Fatalf("storedGroups = %v, want [3 7]", groups)
		}
		pg, ok, err := e.loadGroup(7)
		if err != nil || !ok {
			t.Fatalf("loadGroup(7) = %v, %v", ok, err)
		}
		if !slices.Equal(pg.peers, []uint64{1, 2, 3}) {
			t.Fatalf("peers = %v", pg.peers)
		}
		idx, terms := entryIndexes(pg.ents)
		if !slices.Equal(idx, []uint64{2, 3, 4, 5, 6, 7}) || !slices.Equal(terms, []uint64{1, 1, 1, 1, 2, 2}) {
			t.Fatalf("entries %v terms %v", idx, terms)
		}
		if !bytes.Equal(pg.ents[4].GetData(), []byte{6, 2}) || pg.ents[4].GetType() != pb.EntryNormal {
			t.Fatalf("entry 6 = %v", pg.ents[4])
		}
		if pg.hs.GetTerm() != 2 || pg.hs.GetVote() != 3 || pg.hs.GetCommit() != 6 {
			t.Fatalf("hard state %v", pg.hs)
		}
		if pg.snap.GetMetadata().GetIndex() != 1 || !slices.Equal(pg.snap.GetMetadata().GetConfState().GetVoters(), []uint64{1, 2, 3}) {
			t.Fatalf("snapshot %v", pg.snap)
		}
		if _, ok, err := e.loadGroup(4); ok || err != nil {
			t.Fatalf("loadGroup(4) = %v, %v; want not found", ok, err)
		}
		pg3, ok, err := e.loadGroup(3)
		if err != nil || !ok || pg3.hs != nil || pg3.snap != nil || len(pg3.ents) != 0 {
			t.Fatalf("loadGroup(3) = %+v, %v, %v", pg3, ok, err)
		}
	}
	check(e)
	e = reopenEngine(t, e, dir)
	check(e)

	// A local snapshot at 5 with compaction up to 4; then an incoming
	// snapshot at 20 that replaces the whole log, followed by entries.
	b = e.newBatch()
	snap5 := &pb.Snapshot{Data: []byte("state@5"), Metadata: &pb.SnapshotMetadata{Index: new(uint64(5)), Term: new(uint64(1)),
		ConfState: pb.EnsureConfState(&pb.ConfState{Voters: []uint64{1, 2, 3}})}}
	if err := b.setSnapshot(7, snap5, false, ""); err != nil {
		t.Fatal(err)
	}
	b.truncatePrefix(7, 4)
	mustCommit(t, b)
	pg, _, err := e.loadGroup(7)
	if err != nil {
		t.Fatal(err)
	}
	if idx, _ := entryIndexes(pg.ents); !slices.Equal(idx, []uint64{5, 6, 7}) || string(pg.snap.GetData()) != "state@5" {
		t.Fatalf("after compaction: entries %v snapshot %v", idx, pg.snap)
	}
	b = e.newBatch()
	snap20 := &pb.Snapshot{Data: []byte("state@20"), Metadata: &pb.SnapshotMetadata{Index: new(uint64(20)), Term: new(uint64(3)),
		ConfState: pb.EnsureConfState(&pb.ConfState{Voters: []uint64{1, 2, 4}})}}
	// This one's data goes to a file of its own.
	file, err := e.writeSnapFile(7, snap20, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.setSnapshot(7, snap20, true, file); err != nil {
		t.Fatal(err)
	}
	b.appendEntries(7, testEntries(3, 21, 22), 20)
	mustCommit(t, b)
	pg, _, err = e.loadGroup(7)
	if err != nil {
		t.Fatal(err)
	}
	if idx, _ := entryIndexes(pg.ents); !slices.Equal(idx, []uint64{21, 22}) || pg.snap.GetMetadata().GetIndex() != 20 ||
		!slices.Equal(pg.snap.GetMetadata().GetConfState().GetVoters(), []uint64{1, 2, 4}) {
		t.Fatalf("after incoming snapshot: entries %v snapshot %v", idx, pg.snap)
	}
	if pg.snapFile != file || string(pg.snap.GetData()) != "state@20" {
		t.Fatalf("snapshot file %q data %q, want %q and state@20", pg.snapFile, pg.snap.GetData(), file)
	}
	// A stale file of the group goes, the named one stays.
	stale, err := e.writeSnapFile(7, snap5, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.removeSnapFiles(7, file); err != nil {
		t.Fatal(err)
	}
	if names, _ := e.fs.List(e.snapDir); !slices.Equal(names, []string{file}) {
		t.Fatalf("snapshot files %v, want only %s (not %s)", names, file, stale)
	}
	// Other groups untouched.
	pg9, _, err := e.loadGroup(9)
	if err != nil || pg9 != nil {
		t.Fatalf("group 9 (unregistered) = %v, %v", pg9, err)
	}
	if err := e.close(); err != nil {
		t.Fatal(err)
	}
}

// writeSnapFile must leave the snapshot's data as it was: raft still sends
// it to followers. vfs.File.Write may modify its input (pebble's MemFS does
// in race and invariants builds, which is how a crash test found it), so
// the data goes through a buffer of its own.
func TestSnapFileLeavesDataIntact(t *testing.T) {
	e, err := openEngine("/data", vfs.NewCrashableMem(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	data := bytes.Repeat([]byte("state "), 100_000) // more than one buffer
	snap := &pb.Snapshot{Data: slices.Clone(data), Metadata: &pb.SnapshotMetadata{Index: new(uint64(9)), Term: new(uint64(2))}}
	name, err := e.writeSnapFile(4, snap, true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snap.GetData(), data) {
		t.Fatalf("writeSnapFile modified the snapshot's data")
	}
	got, err := e.readSnapFile(name)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v; want the %d written", len(got), err, len(data))
	}
}

// A snapshot file whose bytes are not those the engine recorded is refused
// when the group is loaded, instead of restoring a wrong state.
func TestCorruptSnapFileIsRefused(t *testing.T) {
	fs := vfs.NewMem()
	e, err := openEngine("/data", fs, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	snap := &pb.Snapshot{Data: []byte("the state"), Metadata: &pb.SnapshotMetadata{Index: new(uint64(9)), Term: new(uint64(2))}}
	name, err := e.writeSnapFile(4, snap, true)
	if err != nil {
		t.Fatal(err)
	}
	b := e.newBatch()
	b.registerGroup(4, []uint64{1})
	if err := b.setSnapshot(4, snap, false, name); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, b)
	if pg, _, err := e.loadGroup(4); err != nil || string(pg.snap.GetData()) != "the state" {
		t.Fatalf("loadGroup = %v, %v", pg, err)
	}
	f, err := fs.Create(fs.PathJoin(e.snapDir, name), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("the stale")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, _, err := e.loadGroup(4); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("loadGroup of a changed snapshot file: %v, want a corruption error", err)
	}
}

// The log store reads snapshots back off the worker, which may install a
// newer snapshot meanwhile. loadSnapshot read the metadata and the file's
// name with two separate reads, so it could pair one snapshot's metadata
// with the next one's data (sent to a follower as that snapshot); it now
// reads both from one view, and the log store reads again when the file
// it named was removed meanwhile.
func TestSnapshotReadBackWhileANewerIsInstalled(t *testing.T) {
	e := newTestEngine(t)
	installSnapFile(t, e, 2, snapshotAt(10))
	// Between the two reads, snapshot 20 replaces 10 (its file removed).
	once := true
	e.afterSnapMetaRead = func() {
		if once {
			once = false
			installSnapFile(t, e, 2, snapshotAt(20))
		}
	}
	var wg sync.WaitGroup
	var loadErr error
	st := &logStore{MemoryStorage: raft.NewMemoryStorage(), eng: e, group: 2, loadWG: &wg, onLoadError: func(err error) { loadErr = err }}
	wg.Add(1)
	st.loadSnapshot(10)
	if loadErr != nil {
		t.Fatalf("read back: %v", loadErr)
	}
	got := st.loaded
	if got == nil {
		t.Fatal("no snapshot read back")
	}
	if want := fmt.Sprintf("state@%d", got.GetMetadata().GetIndex()); string(got.GetData()) != want {
		t.Fatalf("snapshot %d read back with the data %q", got.GetMetadata().GetIndex(), got.GetData())
	}
	if got.GetMetadata().GetIndex() != 20 {
		t.Fatalf("read back snapshot %d, want the newer 20", got.GetMetadata().GetIndex())
	}
}

// A snapshot read back for raft while RemoveGroup deletes the group finds
// nothing; that is no error to report (it used to log "cannot read the
// snapshot back" at every removal that met a read).
func TestSnapshotReadBackDuringRemovalIsQuiet(t *testing.T) {
	e := newTestEngine(t)
	installSnapFile(t, e, 2, snapshotAt(5))
	hold := newGate()
	defer hold.release()
	var wg sync.WaitGroup
	var loadErr error
	st := &logStore{MemoryStorage: raft.NewMemoryStorage(), eng: e, group: 2, loadWG: &wg,
		beforeLoad: hold.wait, onLoadError: func(err error) { loadErr = err }}
	wg.Add(1)
	go st.loadSnapshot(5)
	// RemoveGroup's steps: mark, delete the group's keys, wait, remove files.
	st.removed.Store(true)
	b := e.newBatch()
	b.deleteGroup(2)
	mustCommit(t, b)
	hold.release()
	wg.Wait()
	if err := e.removeSnapFiles(2, ""); err != nil {
		t.Fatal(err)
	}
	if loadErr != nil {
		t.Fatalf("a read during the removal reported %v", loadErr)
	}
	if st.loaded != nil {
		t.Fatalf("a read during the removal kept snapshot %v", st.loaded.GetMetadata())
	}
}
