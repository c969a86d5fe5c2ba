package replication

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
	pb "go.etcd.io/raft/v3/raftpb"
)

// bigEntries: entries from..to of term 1 with n bytes of data each, the
// data telling group and index apart.
func bigEntries(g, from, to uint64, n int) []*pb.Entry {
	var out []*pb.Entry
	for i := from; i <= to; i++ {
		d := bytes.Repeat([]byte{byte(g), byte(i)}, n/2)
		out = append(out, &pb.Entry{Term: new(uint64(1)), Index: new(i), Type: pb.EntryNormal.Enum(), Data: d})
	}
	return out
}

// mustFlush flushes the memtable: the reclaimer excises a truncation once
// the memtable holding its range deletion has been flushed.
func mustFlush(t *testing.T, e *engine) {
	t.Helper()
	if err := e.db.Flush(); err != nil {
		t.Fatal(err)
	}
}

// tablesOverlapping lists the engine's tables (of any level) holding a key
// in [start, end).
func tablesOverlapping(t *testing.T, e *engine, start, end []byte) []string {
	t.Helper()
	levels, err := e.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for l, tables := range levels {
		for _, ti := range tables {
			lo, hi := ti.Smallest.UserKey, ti.Largest.UserKey
			if bytes.Compare(lo, end) < 0 && bytes.Compare(hi, start) >= 0 {
				out = append(out, fmt.Sprintf("L%d %s [%x, %x] virtual=%v", l, ti.FileNum, lo, hi, ti.Virtual))
			}
		}
	}
	return out
}

// Truncated prefixes leave the tables: each flushed table holds entries of
// every group, so no group's range deletion covers one whole, and before
// the reclaimer the deleted entries stayed in L0 until a compaction read
// and rewrote them.
func TestTruncatedPrefixExcisedFromTables(t *testing.T) {
	dir := t.TempDir()
	e, err := openEngine(dir, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	const rounds, per, size = 6, 50, 4096
	groups := []uint64{1, 2, 3}
	b := e.newBatch()
	for _, g := range groups {
		b.registerGroup(g, []uint64{1, 2, 3})
	}
	mustCommit(t, b)
	for r := range uint64(rounds) {
		b := e.newBatch()
		for _, g := range groups {
			b.appendEntries(g, bigEntries(g, r*per+1, (r+1)*per, size), r*per)
			b.setHardState(g, &pb.HardState{Term: new(uint64(1)), Commit: new((r + 1) * per)})
		}
		mustCommit(t, b)
		if err := e.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(tablesOverlapping(t, e, entryKey(1, 0), entryKey(1, 5*per+1))); n < rounds {
		t.Fatalf("setup: %d tables hold group 1's entries, want one per flush (%d)", n, rounds)
	}

	// Group 1 up to round 5, group 2 all of it, group 3 nothing.
	cut := map[uint64]uint64{1: 5 * per, 2: rounds * per}
	b = e.newBatch()
	for g, upto := range cut {
		b.truncatePrefix(g, upto)
	}
	mustCommit(t, b)
	mustFlush(t, e)
	waitFor(t, 10*time.Second, "truncated entries to leave the tables", func() bool {
		for g, upto := range cut {
			if len(tablesOverlapping(t, e, entryKey(g, 0), entryKey(g, upto+1))) > 0 {
				return false
			}
		}
		return true
	})
	if ex := e.rec.excised.Load(); ex != 2 || e.rec.failed.Load() != 0 {
		t.Fatalf("excised %d, failed %d; want 2, 0", ex, e.rec.failed.Load())
	}

	check := func(e *engine) {
		t.Helper()
		want := map[uint64][2]uint64{1: {5*per + 1, rounds * per}, 2: {0, 0}, 3: {1, rounds * per}}
		for g, span := range want {
			pg, ok, err := e.loadGroup(g)
			if err != nil || !ok {
				t.Fatalf("loadGroup(%d) = %v, %v", g, ok, err)
			}
			if span[0] == 0 {
				if len(pg.ents) != 0 {
					t.Fatalf("group %d: %d entries left, want none", g, len(pg.ents))
				}
				continue
			}
			if n := uint64(len(pg.ents)); n != span[1]-span[0]+1 || pg.ents[0].GetIndex() != span[0] {
				t.Fatalf("group %d: %d entries from %d, want %d..%d", g, n, pg.ents[0].GetIndex(), span[0], span[1])
			}
			for _, ent := range pg.ents {
				if !bytes.Equal(ent.GetData(), bytes.Repeat([]byte{byte(g), byte(ent.GetIndex())}, size/2)) {
					t.Fatalf("group %d entry %d: wrong data", g, ent.GetIndex())
				}
			}
			if pg.hs.GetCommit() != rounds*per || len(pg.peers) != 3 {
				t.Fatalf("group %d: hard state %v, peers %v", g, pg.hs, pg.peers)
			}
		}
		if err := e.db.CheckLevels(nil); err != nil {
			t.Fatal(err)
		}
	}
	check(e)
	e = reopenEngine(t, e, dir)
	defer e.close()
	check(e)
}

// A removed replica's pending excise is dropped: the host may hold the
// group again, and the new replica's log starts at the bottom, inside the
// old replica's truncated span.
func TestReclaimForgetsRemovedGroup(t *testing.T) {
	e := newTestEngine(t)
	hold, held := newGate(), make(chan uint64, 4)
	release := hold.release
	defer release() // before e.close, which waits for the excise
	e.rec.beforeExcise = func(g, _ uint64) {
		held <- g
		if g == 6 {
			hold.wait()
		}
	}
	b := e.newBatch()
	b.appendEntries(5, bigEntries(5, 1, 100, 64), 0)
	b.appendEntries(6, bigEntries(6, 1, 100, 64), 0)
	mustCommit(t, b)
	// Group 6's excise runs (held); group 5's waits behind it.
	b = e.newBatch()
	b.truncatePrefix(6, 100)
	mustCommit(t, b)
	mustFlush(t, e)
	if g := <-held; g != 6 {
		t.Fatalf("first excise of group %d, want 6", g)
	}
	b = e.newBatch()
	b.truncatePrefix(5, 100)
	mustCommit(t, b)
	mustFlush(t, e)

	// Group 5's replica is removed (RemoveGroup: deleteGroup, then forget)
	// and a new one writes entries 1..50 while the old excise would still
	// be pending.
	b = e.newBatch()
	b.deleteGroup(5)
	mustCommit(t, b)
	e.rec.forget(5)
	b = e.newBatch()
	b.appendEntries(5, bigEntries(5, 1, 50, 64), 0)
	mustCommit(t, b)

	release()
	waitFor(t, 10*time.Second, "the reclaimer to finish", e.rec.idle)
	select {
	case g := <-held:
		t.Fatalf("group %d excised after its replica was removed", g)
	default:
	}
	ents, _, err := e.readEntries(5, 1, 51, 1<<30)
	if err != nil || len(ents) != 50 {
		t.Fatalf("new replica's entries: %d, %v; want 50", len(ents), err)
	}
}

// forget waits for an excise of the group in progress: RemoveGroup returns
// only once nothing can excise the new replica's entries.
func TestReclaimForgetWaitsForExciseInProgress(t *testing.T) {
	e := newTestEngine(t)
	hold, held := newGate(), make(chan struct{})
	e.rec.beforeExcise = func(uint64, uint64) {
		close(held)
		hold.wait()
	}
	release := hold.release
	defer release() // before e.close, which waits for the excise
	b := e.newBatch()
	b.appendEntries(5, bigEntries(5, 1, 10, 64), 0)
	b.truncatePrefix(5, 10)
	mustCommit(t, b)
	mustFlush(t, e)
	<-held
	excisedWhenForgot := make(chan uint64, 1)
	go func() {
		e.rec.forget(5)
		excisedWhenForgot <- e.rec.excised.Load()
	}()
	select {
	case n := <-excisedWhenForgot:
		t.Fatalf("forget returned during the excise (excised %d)", n)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	if n := <-excisedWhenForgot; n != 1 {
		t.Fatalf("forget returned with %d excises done, want 1", n)
	}
}

// Pebble refuses Excise below FormatVirtualSSTables; the engine opens
// stores at a version that has it, upgrading older ones.
func TestEngineFormatAllowsExcise(t *testing.T) {
	dir := t.TempDir()
	old, err := pebble.Open(dir, &pebble.Options{FormatMajorVersion: pebble.FormatMinSupported, Logger: pebbleLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Set(groupKey(1, kindRegistry), encodePeers([]uint64{1}), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	e, err := openEngine(dir, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	if v := e.db.FormatMajorVersion(); v < pebble.FormatFlushableIngestExcises {
		t.Fatalf("format %v, want at least %v", v, pebble.FormatFlushableIngestExcises)
	}
	if gs, err := e.storedGroups(); err != nil || len(gs) != 1 || gs[0] != 1 {
		t.Fatalf("storedGroups after upgrade = %v, %v", gs, err)
	}
}

// A restored snapshot replaces the log: the replaced entries up to the
// snapshot are excised too, and entries the same batch writes after it
// stay.
func TestRestoredSnapshotExcisesReplacedLog(t *testing.T) {
	e := newTestEngine(t)
	b := e.newBatch()
	b.registerGroup(4, []uint64{1, 2, 3})
	b.appendEntries(4, bigEntries(4, 1, 40, 4096), 0)
	b.appendEntries(8, bigEntries(8, 1, 40, 4096), 0)
	mustCommit(t, b)
	if err := e.db.Flush(); err != nil {
		t.Fatal(err)
	}
	// A snapshot at 60 (past the stored log), then entries 61..70.
	b = e.newBatch()
	if err := b.setSnapshot(4, snapshotAt(60), true, ""); err != nil {
		t.Fatal(err)
	}
	b.appendEntries(4, bigEntries(4, 61, 70, 4096), 0)
	mustCommit(t, b)
	mustFlush(t, e)
	waitFor(t, 10*time.Second, "the replaced log to leave the tables", func() bool {
		return len(tablesOverlapping(t, e, entryKey(4, 0), entryKey(4, 61))) == 0
	})
	pg, ok, err := e.loadGroup(4)
	if err != nil || !ok || len(pg.ents) != 10 || pg.ents[0].GetIndex() != 61 || pg.snap.GetMetadata().GetIndex() != 60 {
		t.Fatalf("after restore: ok %v err %v, %d entries, snapshot %v", ok, err, len(pg.ents), pg.snap.GetMetadata())
	}
	if ents, _, err := e.readEntries(8, 1, 41, 1<<30); err != nil || len(ents) != 40 {
		t.Fatalf("group 8: %d entries, %v; want 40", len(ents), err)
	}
}

// A truncation committed without fsync is not excised: the excise can be
// durable before the batch (a manifest edit), and losing the batch in a
// crash would then leave a gap between the older snapshot and the log.
func TestUnsyncedTruncationNotExcised(t *testing.T) {
	e := newTestEngine(t)
	b := e.newBatch()
	b.appendEntries(3, bigEntries(3, 1, 20, 64), 0)
	mustCommit(t, b)
	b = e.newBatch()
	b.truncatePrefix(3, 10)
	if err := b.commit(false); err != nil {
		t.Fatal(err)
	}
	b.close()
	if !e.rec.idle() || e.rec.excised.Load() != 0 {
		t.Fatalf("an unsynced truncation was handed to the reclaimer (excised %d)", e.rec.excised.Load())
	}
	b = e.newBatch()
	b.truncatePrefix(3, 15)
	mustCommit(t, b)
	mustFlush(t, e)
	waitFor(t, 10*time.Second, "the synced truncation to be excised", func() bool { return e.rec.excised.Load() == 1 })
	if ents, _, err := e.readEntries(3, 16, 21, 1<<30); err != nil || len(ents) != 5 || ents[0].GetIndex() != 16 {
		t.Fatalf("entries after the truncations: %d, %v", len(ents), err)
	}
}

// An engine with excised (virtual) tables opens with the options builds
// before the excises used (same Pebble, default format), as README's
// "Upgrading" promises for going back to an earlier build.
func TestExcisedEngineOpensWithEarlierOptions(t *testing.T) {
	dir := t.TempDir()
	e, err := openEngine(dir, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	b := e.newBatch()
	for _, g := range []uint64{1, 2} {
		b.registerGroup(g, []uint64{1})
		b.appendEntries(g, bigEntries(g, 1, 40, 4096), 0)
	}
	mustCommit(t, b)
	if err := e.db.Flush(); err != nil {
		t.Fatal(err)
	}
	b = e.newBatch()
	b.truncatePrefix(1, 30)
	mustCommit(t, b)
	mustFlush(t, e)
	waitFor(t, 10*time.Second, "the excise", func() bool { return e.rec.excised.Load() == 1 })
	if err := e.db.Flush(); err != nil {
		t.Fatal(err)
	}
	levels, err := e.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	virtual := 0
	for _, l := range levels {
		for _, ti := range l {
			if ti.Virtual {
				virtual++
			}
		}
	}
	if virtual == 0 {
		t.Fatal("setup: the excise left no virtual table")
	}
	if err := e.close(); err != nil {
		t.Fatal(err)
	}
	// The options of earlier builds: no format, default stop-writes.
	old, err := pebble.Open(dir, &pebble.Options{MemTableSize: 64 << 20, Logger: pebbleLogger{},
		L0CompactionThreshold: 32, L0StopWritesThreshold: 128, LBaseMaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oe := &engine{db: old}
	for g, first := range map[uint64]uint64{1: 31, 2: 1} {
		ents, _, err := oe.readEntries(g, first, 41, 1<<30)
		if err != nil || uint64(len(ents)) != 41-first {
			t.Fatalf("group %d read with earlier options: %d entries, %v", g, len(ents), err)
		}
		for _, ent := range ents {
			if !bytes.Equal(ent.GetData(), bytes.Repeat([]byte{byte(g), byte(ent.GetIndex())}, 2048)) {
				t.Fatalf("group %d entry %d: wrong data", g, ent.GetIndex())
			}
		}
	}
	if err := old.CheckLevels(nil); err != nil {
		t.Fatal(err)
	}
}

// A truncation is excised once the memtable holding its range deletion has
// been flushed. Excised earlier, the span overlaps the memtable, and
// Pebble cuts the memtable short to queue the excise behind it: one more
// memtable (a fresh arena, page faults) and a small table per truncation.
func TestExciseWaitsForTheMemtableFlush(t *testing.T) {
	e := newTestEngine(t)
	e.rec.setMaxDefer(time.Hour)
	excising := make(chan int64, 4) // flushes done when an excise began
	e.rec.beforeExcise = func(uint64, uint64) { excising <- e.db.Metrics().Flush.Count }
	b := e.newBatch()
	b.appendEntries(1, bigEntries(1, 1, 40, 4096), 0)
	mustCommit(t, b)
	mustFlush(t, e)
	b = e.newBatch()
	b.truncatePrefix(1, 30)
	mustCommit(t, b)
	select {
	case n := <-excising:
		t.Fatalf("excised while the range deletion was in the memtable (%d flushes)", n)
	case <-time.After(300 * time.Millisecond):
	}
	flushed := e.db.Metrics().Flush.Count
	mustFlush(t, e)
	select {
	case n := <-excising:
		if n <= flushed {
			t.Fatalf("excise began after %d flushes, want > %d", n, flushed)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not excised after the memtable's flush")
	}
	waitFor(t, 10*time.Second, "the excise to end", e.rec.idle)
	mustFlush(t, e)
	if m := e.db.Metrics(); m.Flush.AsIngestCount != 0 || e.rec.excised.Load() != 1 {
		t.Fatalf("excised %d, flushables flushed %d; want 1, 0", e.rec.excised.Load(), m.Flush.AsIngestCount)
	}
	if n := len(tablesOverlapping(t, e, entryKey(1, 0), entryKey(1, 31))); n != 0 {
		t.Fatalf("%d tables still hold truncated entries", n)
	}
	if ents, _, err := e.readEntries(1, 31, 41, 1<<30); err != nil || len(ents) != 10 || ents[0].GetIndex() != 31 {
		t.Fatalf("entries after the truncation: %d, %v", len(ents), err)
	}
}

// Without flushes (few writes) a truncation is excised after maxDefer,
// counted from its group's first pending truncation: a group truncated
// more often than that is still excised.
func TestExciseDeadlineWithoutFlushes(t *testing.T) {
	e := newTestEngine(t)
	e.rec.setMaxDefer(100 * time.Millisecond)
	b := e.newBatch()
	b.appendEntries(2, bigEntries(2, 1, 400, 64), 0)
	mustCommit(t, b)
	start := time.Now()
	upto := uint64(0)
	for e.rec.excised.Load() == 0 {
		if upto == 300 || time.Since(start) > 5*time.Second {
			t.Fatalf("no excise after %d truncations in %v, one every 10 ms", upto, time.Since(start))
		}
		upto++
		b := e.newBatch()
		b.truncatePrefix(2, upto)
		mustCommit(t, b)
		time.Sleep(10 * time.Millisecond)
	}
	if ents, _, err := e.readEntries(2, upto+1, 401, 1<<30); err != nil || uint64(len(ents)) != 400-upto {
		t.Fatalf("entries after the truncations: %d, %v", len(ents), err)
	}
}
