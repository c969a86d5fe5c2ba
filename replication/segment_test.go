package replication

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	pb "go.etcd.io/raft/v3/raftpb"
)

// segEntries are entries of group-specific data of n bytes each.
func segEntries(g, term, from, to uint64, n int) []*pb.Entry {
	var out []*pb.Entry
	for i := from; i <= to; i++ {
		d := bytes.Repeat([]byte(fmt.Sprintf("g%d-t%d-i%d;", g, term, i)), n/8+1)[:n]
		out = append(out, &pb.Entry{Term: new(term), Index: new(i), Type: pb.EntryNormal.Enum(), Data: d})
	}
	return out
}

// segEngine opens an engine on fs at "eng", closed when the test ends.
func segEngine(t *testing.T, fs vfs.FS) *engine {
	t.Helper()
	e, err := openEngine("eng", fs, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.close() })
	return e
}

// segCommit appends each group's entries (prevLast 0) and hard states in
// one worker batch through w.
func segCommit(t *testing.T, e *engine, w *segWriter, sync bool, ents map[uint64][]*pb.Entry, prevLast uint64, hs map[uint64]*pb.HardState) {
	t.Helper()
	var r segRecord
	b := e.newBatch().withSegment(w, &r)
	defer b.close()
	for _, g := range slices.Sorted(maps.Keys(ents)) {
		b.appendEntries(g, ents[g], prevLast)
	}
	for _, g := range slices.Sorted(maps.Keys(hs)) {
		b.setHardState(g, hs[g])
	}
	if err := b.commit(sync); err != nil {
		t.Fatal(err)
	}
}

// wantLog checks that the engine holds exactly want for group g.
func wantLog(t *testing.T, e *engine, g uint64, want []*pb.Entry) {
	t.Helper()
	pg, ok, err := e.loadGroup(g)
	if err != nil || !ok {
		t.Fatalf("loadGroup(%d) = %v, %v", g, ok, err)
	}
	if len(pg.ents) != len(want) {
		t.Fatalf("group %d: %d entries, want %d", g, len(pg.ents), len(want))
	}
	for i, w := range want {
		got := pg.ents[i]
		if got.GetIndex() != w.GetIndex() || got.GetTerm() != w.GetTerm() || got.GetType() != w.GetType() || !bytes.Equal(got.GetData(), w.GetData()) {
			t.Fatalf("group %d entry %d: got index %d term %d %d bytes, want index %d term %d %d bytes", g, i,
				got.GetIndex(), got.GetTerm(), len(got.GetData()), w.GetIndex(), w.GetTerm(), len(w.GetData()))
		}
	}
}

func registerGroups(t *testing.T, e *engine, gs ...uint64) {
	t.Helper()
	b := e.newBatch()
	for _, g := range gs {
		b.registerGroup(g, []uint64{1})
	}
	mustCommit(t, b)
}

// engineValue returns the engine's value for g's entry i.
func engineValue(t *testing.T, e *engine, g, i uint64) []byte {
	t.Helper()
	v, closer, err := e.db.Get(entryKey(g, i))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	return bytes.Clone(v)
}

// isRef tells whether the engine keeps only a reference to g's entry i.
func isRef(t *testing.T, e *engine, g, i uint64) bool {
	return bytes.HasPrefix(engineValue(t, e, g, i), entryRefMarker)
}

// Large entries' data goes to a segment and the engine keeps references;
// small ones stay in the engine; both read back, before and after a reopen.
func TestSegmentEntriesReadBack(t *testing.T) {
	fs := vfs.NewMem()
	e := segEngine(t, fs)
	registerGroups(t, e, 1, 2)
	w := e.seg.newWriter()
	big1 := segEntries(1, 1, 1, 5, 4000)
	small2 := testEntries(1, 1, 3)
	segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: big1, 2: small2}, 0,
		map[uint64]*pb.HardState{1: {Term: new(uint64(1)), Vote: new(uint64(1)), Commit: new(uint64(3))}})
	if !isRef(t, e, 1, 3) || isRef(t, e, 2, 3) {
		t.Fatalf("large entry in the engine or small one in a segment")
	}
	// Earlier builds decode a value as uvarint term, type, data: a
	// reference must stop them ("corrupt entry"), not pass for data.
	v := engineValue(t, e, 1, 3)
	if _, k := binary.Uvarint(v); k > 0 {
		t.Fatalf("an earlier build would read the reference %x as an entry", v)
	}
	wantLog(t, e, 1, big1)
	wantLog(t, e, 2, small2)
	if ents, _, err := e.readEntries(1, 2, 5, 1<<20); err != nil || len(ents) != 3 || !bytes.Equal(ents[2].GetData(), big1[3].GetData()) {
		t.Fatalf("readEntries(2, 5) = %d entries, %v", len(ents), err)
	}
	if err := e.close(); err != nil {
		t.Fatal(err)
	}
	e = segEngine(t, fs)
	wantLog(t, e, 1, big1)
	wantLog(t, e, 2, small2)
	if hs, err := e.loadHardState(1); err != nil || hs.GetCommit() != 3 {
		t.Fatalf("hard state after reopen = %v, %v", hs, err)
	}
}

// A crash after a record is durable but before the engine batch that
// refers to it is committed: the record is replayed on open, entries,
// overwritten suffix and hard state alike.
func TestSegmentRecordReplayedAfterLostBatch(t *testing.T) {
	mem := vfs.NewCrashableMem()
	e := segEngine(t, mem)
	registerGroups(t, e, 1, 2)
	w := e.seg.newWriter()
	first := segEntries(1, 1, 1, 8, 3000)
	segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: first}, 0, nil)
	// A new leader's entries replace 5..8 with 5..6; group 2 gets its
	// first entries; the record is durable, then the process dies.
	over := segEntries(1, 2, 5, 6, 3000)
	ents2 := append(segEntries(2, 2, 1, 2, 5000), testEntries(2, 3, 3)...)
	var clone *vfs.MemFS
	e.seg.afterDurable = func() { clone = mem.CrashClone(vfs.CrashCloneCfg{}) }
	segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: over, 2: ents2}, 8,
		map[uint64]*pb.HardState{1: {Term: new(uint64(2)), Vote: new(uint64(3)), Commit: new(uint64(4))}})
	e.seg.afterDurable = nil

	e2 := segEngine(t, clone)
	wantLog(t, e2, 1, append(slices.Clone(first[:4]), over...))
	wantLog(t, e2, 2, ents2)
	hs, err := e2.loadHardState(1)
	if err != nil || hs.GetTerm() != 2 || hs.GetVote() != 3 || hs.GetCommit() != 4 {
		t.Fatalf("hard state after replay = %v, %v; want term 2 vote 3 commit 4", hs, err)
	}
	// Replayed once: a second crash and open changes nothing.
	clone2 := clone.CrashClone(vfs.CrashCloneCfg{})
	e3 := segEngine(t, clone2)
	wantLog(t, e3, 1, append(slices.Clone(first[:4]), over...))
	wantLog(t, e3, 2, ents2)
}

// A record that was written but not synced when the machine crashed is
// gone, and so is the batch: the log is as before it, and the engine goes
// on from there.
func TestSegmentUnsyncedRecordLostWhole(t *testing.T) {
	mem := vfs.NewCrashableMem()
	e := segEngine(t, mem)
	registerGroups(t, e, 1)
	w := e.seg.newWriter()
	first := segEntries(1, 1, 1, 4, 3000)
	segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: first}, 0, nil)
	segCommit(t, e, w, false, map[uint64][]*pb.Entry{1: segEntries(1, 1, 5, 9, 3000)}, 0, nil)
	clone := mem.CrashClone(vfs.CrashCloneCfg{})
	e2 := segEngine(t, clone)
	wantLog(t, e2, 1, first)
	w2 := e2.seg.newWriter()
	more := segEntries(1, 2, 5, 6, 2000)
	segCommit(t, e2, w2, true, map[uint64][]*pb.Entry{1: more}, 4, nil)
	wantLog(t, e2, 1, append(slices.Clone(first), more...))
}

// Segments whose entries are all truncated are removed (or kept for
// reuse); a reused file's old records are never taken for the new
// segment's, across crashes, even where one lines up with the new
// segment's end (the segment id is part of each record's checksum).
func TestSegmentsCollectedAndReused(t *testing.T) {
	mem := vfs.NewCrashableMem()
	e := segEngine(t, mem)
	registerGroups(t, e, 1, 2)
	w := e.seg.newWriter()
	var log1, log2 []*pb.Entry
	// Records of one size, two to a segment.
	record := func(term, i uint64) {
		a, b := segEntries(1, term, 3*i+1, 3*i+3, 2000), segEntries(2, term, i+1, i+1, 1000)
		log1, log2 = append(log1, a...), append(log2, b...)
		segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: a, 2: b}, 0, nil)
		if i == 0 {
			e.seg.target = w.off + 1
		}
	}
	for i := range uint64(10) {
		record(1, i)
	}
	if n := e.seg.count(); n != 5 {
		t.Fatalf("%d segments, want 5", n)
	}
	// Group 1 truncated through record 5, group 2 through record 3: the
	// first two segments are dead; the third holds group 2's entry 5.
	b := e.newBatch()
	b.truncatePrefix(1, 18)
	b.truncatePrefix(2, 4)
	mustCommit(t, b)
	if err := e.seg.collect(); err != nil {
		t.Fatal(err)
	}
	if got, n := e.seg.removed.Load(), e.seg.count(); got != 2 || n != 3 {
		t.Fatalf("%d segments collected, %d left; want 2, 3", got, n)
	}
	log1, log2 = log1[18:], log2[4:]
	wantLog(t, e, 1, log1)
	wantLog(t, e, 2, log2)
	names, _ := mem.List("eng/seg")
	free := 0
	for _, n := range names {
		if strings.HasPrefix(n, segFreePrefix) {
			free++
		}
	}
	if free != 2 {
		t.Fatalf("%d files kept for reuse, want 2: %v", free, names)
	}
	// New records go to the reused files, each followed there by an old
	// record of the same size. Crash after each: nothing old comes back.
	for i := uint64(10); i < 13; i++ {
		record(2, i)
		clone := mem.CrashClone(vfs.CrashCloneCfg{})
		e2 := segEngine(t, clone)
		wantLog(t, e2, 1, log1)
		wantLog(t, e2, 2, log2)
		if err := e2.close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Segment ids are never given again while a file kept for reuse may hold
// records under them: not after every segment was collected and the
// engine reopened either.
func TestSegmentIDsAboveReusedFiles(t *testing.T) {
	fs := vfs.NewMem()
	e := segEngine(t, fs)
	e.seg.target = 1
	registerGroups(t, e, 1)
	w := e.seg.newWriter()
	for i := uint64(1); i <= 3; i++ {
		segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: segEntries(1, 1, i, i, 1000)}, 0, nil)
	}
	b := e.newBatch()
	b.truncatePrefix(1, 3)
	mustCommit(t, b)
	if err := e.close(); err != nil {
		t.Fatal(err)
	}
	// Reopened, no segment is a writer's and no entry in them is left:
	// all three are collected.
	e = segEngine(t, fs)
	if err := e.seg.collect(); err != nil {
		t.Fatal(err)
	}
	if n := e.seg.count(); n != 0 {
		t.Fatalf("%d segments left, want 0", n)
	}
	if err := e.close(); err != nil {
		t.Fatal(err)
	}
	e = segEngine(t, fs)
	if e.seg.nextID < 3 {
		t.Fatalf("next segment id %d, while reused files hold records of ids 0..2", e.seg.nextID)
	}
}

// A removed replica's truncations do not apply to the next replica of the
// group on the host, whose log starts at the bottom again.
func TestSegmentForgetRemovedGroup(t *testing.T) {
	e := segEngine(t, vfs.NewMem())
	e.seg.target = 1
	registerGroups(t, e, 1)
	w := e.seg.newWriter()
	segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: segEntries(1, 1, 1, 20, 1000)}, 0, nil)
	b := e.newBatch()
	b.truncatePrefix(1, 20)
	mustCommit(t, b)
	b = e.newBatch()
	b.deleteGroup(1)
	mustCommit(t, b)
	e.seg.forget(1)
	registerGroups(t, e, 1)
	again := segEntries(1, 5, 1, 3, 1000)
	segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: again}, 0, nil)
	segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: segEntries(1, 5, 4, 4, 1000)}, 0, nil)
	if err := e.seg.collect(); err != nil {
		t.Fatal(err)
	}
	wantLog(t, e, 1, append(again, segEntries(1, 5, 4, 4, 1000)...))
}

// A group that writes little keeps alive every segment holding one of its
// entries until its next snapshot, which its few entries would not bring
// for a long time. Once live segments pass their budget, such groups are
// asked for a snapshot that truncates their log past them.
func TestSlowGroupReleasesSegments(t *testing.T) {
	const budget = 64 << 10
	c := newCluster(t, 3, []uint64{1, 2}, func(cfg *Config) {
		cfg.SnapshotEntries = 40
		cfg.segmentInlineMax = -1
		cfg.segmentTarget = 4 << 10
		cfg.segmentGCInterval = 10 * time.Millisecond
		cfg.segmentPressureBytes = budget
		cfg.Workers = 1 // both groups in one segment stream
	})
	payload := strings.Repeat("x", 1000)
	// Group 1 writes 600 KiB, snapshotting every 40 entries; group 2 one
	// entry every 20 of group 1's, never enough for a snapshot of its own.
	for i := range 600 {
		c.propose(1, fmt.Sprintf("%d-%s", i, payload))
		if i%20 == 0 {
			c.propose(2, fmt.Sprintf("slow-%d", i))
		}
	}
	c.waitApplied(1, 600)
	c.waitApplied(2, 30)
	for _, id := range c.ids {
		h := c.host(id)
		// The budget, the segments of the last collection's interval,
		// and the writers' current ones.
		waitFor(t, 10*time.Second, fmt.Sprintf("host %d to release old segments", id), func() bool {
			return h.Stats().LogSegments <= budget/(4<<10)+8
		})
	}
	c.checkSame(1)
	c.checkSame(2)
}

// On the OS's file system records are written with O_DIRECT through an
// aligned buffer: records of every size (within a block, across blocks,
// larger than the buffer) land where the references say, each record
// intact for a replay, before and after a reopen.
func TestSegmentDirectWrites(t *testing.T) {
	dir := t.TempDir()
	e, err := openEngine(dir, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { e.close() }()
	registerGroups(t, e, 1)
	w := e.seg.newWriter()
	sizes := []int{300, 5000, 4096 - segHeader - 40, 70000, directBufSize + 12345, 257, 3 * directBufSize, 999, 4096, 1}
	var log []*pb.Entry
	next := uint64(1)
	for i, n := range sizes {
		ents := segEntries(1, 1, next, next+uint64(i%3), n)
		next += uint64(len(ents))
		log = append(log, ents...)
		segCommit(t, e, w, true, map[uint64][]*pb.Entry{1: ents}, 0, nil)
		if i == 0 && w.direct == nil {
			t.Skip("the file system under t.TempDir refuses O_DIRECT")
		}
	}
	wantLog(t, e, 1, log)
	f, err := e.fs.Open(e.fs.PathJoin(e.seg.dir, segName(w.id)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	n, err := e.seg.replay(w.id, f, 0, st.Size())
	f.Close()
	// The last commit's one entry is small: it has no record.
	if err != nil || n != len(sizes)-1 {
		t.Fatalf("replay from the start found %d intact records, %v; want %d", n, err, len(sizes)-1)
	}
	e = reopenEngine(t, e, dir)
	wantLog(t, e, 1, log)
}
