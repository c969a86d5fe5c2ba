package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// shortSM is a testSM that keeps only the first 8 bytes of each command, so
// its snapshots stay small however large the entries are.
type shortSM struct{ *testSM }

func (s shortSM) Apply(cmds []Command) [][]byte {
	short := make([]Command, len(cmds))
	for i, c := range cmds {
		short[i] = c
		short[i].Data = c.Data[:min(8, len(c.Data))]
	}
	return s.testSM.Apply(short)
}

// Query is testSM's on what shortSM keeps: Query(x) counts the commands
// whose first 8 bytes are x's.
func (s shortSM) Query(q []byte) []byte {
	if string(q) == "len" {
		return s.testSM.Query(q)
	}
	return s.testSM.Query(q[:min(8, len(q))])
}

// cacheBytes sums the data of the entries a replica keeps in memory.
func cacheBytes(t *testing.T, g *group) uint64 {
	t.Helper()
	first, _ := g.ms.FirstIndex()
	last, _ := g.ms.LastIndex()
	if last < first {
		return 0
	}
	ents, err := g.ms.Entries(first, last+1, math.MaxUint64)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, e := range ents {
		n += uint64(len(e.GetData()))
	}
	return n
}

// engineBytes sums the data of the entries the host's log engine holds for
// group g (in the engine or in its segments).
func engineBytes(t *testing.T, h *Host, g uint64) uint64 {
	t.Helper()
	it, err := h.eng.db.NewIter(&pebble.IterOptions{LowerBound: entryKey(g, 0), UpperBound: groupKey(g, kindEntry+1)})
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for valid := it.First(); valid; valid = it.Next() {
		ent, err := h.eng.decodeEntry(g, binary.BigEndian.Uint64(it.Key()[9:]), it.Value())
		if err != nil {
			t.Fatal(err)
		}
		n += uint64(len(ent.GetData()))
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		t.Fatal(err)
	}
	return n
}

// writeLargeEntries starts three hosts running group 1 on shortSMs, with
// mod applied to their Config, proposes n entries of about entry bytes and
// waits until every replica applied them.
func writeLargeEntries(t *testing.T, n, entry int, mod func(*Config)) (*cluster, []shortSM) {
	t.Helper()
	var (
		mu  sync.Mutex
		sms []shortSM
	)
	c := newClusterSM(t, 3, []uint64{1}, mod, func() StateMachine {
		mu.Lock()
		defer mu.Unlock()
		s := shortSM{newTestSM()}
		sms = append(sms, s)
		return s
	})
	pad := strings.Repeat("x", entry)
	for i := range n {
		c.propose(1, fmt.Sprintf("%08d%s", i, pad))
	}
	waitFor(t, 20*time.Second, "every replica to apply every entry", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range sms {
			if s.len() < n {
				return false
			}
		}
		return len(sms) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	return c, slices.Clone(sms)
}

// Large entries are compacted by size: SnapshotEntries alone let every
// replica keep up to 10,000 entries (20 GiB of 2 MiB gcs batches) in its
// log. With SnapshotBytes the log stays near SnapshotBytes plus its margin
// however many entries are written, and the replicas still agree.
func TestLogBoundedByBytes(t *testing.T) {
	const (
		snapBytes = 64 << 10
		entry     = 4 << 10
		n         = 300 // 1.2 MiB of entries
	)
	c, sms := writeLargeEntries(t, n, entry, func(cfg *Config) {
		cfg.SnapshotEntries = 1 << 30 // only bytes trigger snapshots
		cfg.SnapshotBytes = snapBytes
	})
	// Bound: a snapshot is due once SnapshotBytes were applied since the
	// last one (one entry may overshoot), and a quarter of it stays as
	// the margin behind the snapshot.
	const bound = snapBytes + snapBytes/4 + 2*entry
	for _, id := range c.ids {
		h := c.host(id)
		// Each stored entry also holds its term and type (a few bytes).
		if got := engineBytes(t, h, 1); got > bound+n*4 {
			t.Errorf("host %d keeps %d bytes of log, want <= %d", id, got, bound+n*4)
		}
		if h.Stats().Snapshots == 0 {
			t.Errorf("host %d took no snapshot", id)
		}
	}
	ref := sms[0].entries()
	for _, s := range sms[1:] {
		if got := s.entries(); strings.Join(got, ",") != strings.Join(ref, ",") {
			t.Fatalf("replicas differ")
		}
	}
}

// compactTo keeps at most the entry margin and a quarter of SnapshotBytes
// behind the snapshot.
func TestCompactToMargin(t *testing.T) {
	g := &group{h: &Host{cfg: Config{SnapshotEntries: 10000, SnapshotBytes: 400}}}
	for i := uint64(1); i <= 2000; i++ {
		g.sizes = append(g.sizes, entrySize{i, 10})
	}
	g.applied = 2000
	// 100 bytes of margin: the last 10 entries.
	if got := g.compactTo(g.applied); got != 1990 {
		t.Fatalf("small entries: compactTo = %d, want 1990", got)
	}
	// A snapshot below the applied index (written while more applied):
	// the margin is behind the snapshot.
	if got := g.compactTo(1500); got != 1490 {
		t.Fatalf("snapshot at 1500: compactTo = %d, want 1490", got)
	}
	// Count bound: 1 byte per entry, 1000 entries kept.
	for i := range g.sizes {
		g.sizes[i].bytes = 0
	}
	if got := g.compactTo(g.applied); got != 1000 {
		t.Fatalf("empty entries: compactTo = %d, want 1000", got)
	}
	// One entry larger than the budget: nothing behind the snapshot.
	g.sizes[len(g.sizes)-1].bytes = 1000
	if got := g.compactTo(g.applied); got != 2000 {
		t.Fatalf("large last entry: compactTo = %d, want 2000", got)
	}
	// Sizes unknown (entries from before a restart): the count bound.
	g.sizes = nil
	if got := g.compactTo(g.applied); got != 1000 {
		t.Fatalf("no sizes: compactTo = %d, want 1000", got)
	}
}

// The in-memory log is bounded by LogCacheBytes, not by snapshots: with
// snapshots far away, a replica keeps only the newest applied entries in
// memory, and the log engine keeps the rest.
func TestLogCacheBounded(t *testing.T) {
	const (
		cache = 64 << 10
		entry = 4 << 10
		n     = 300 // 1.2 MiB of entries
	)
	c, _ := writeLargeEntries(t, n, entry, func(cfg *Config) {
		cfg.SnapshotEntries = 1 << 30
		cfg.SnapshotBytes = 1 << 40
		cfg.LogCacheBytes = cache
	})
	for _, id := range c.ids {
		h := c.host(id)
		if got := cacheBytes(t, h.mustGroup(t, 1)); got > cache+2*entry {
			t.Errorf("host %d keeps %d bytes of log in memory, want <= %d", id, got, cache+2*entry)
		}
		if got := engineBytes(t, h, 1); got < n*entry {
			t.Errorf("host %d's log engine holds %d bytes, want the whole log (>= %d)", id, got, n*entry)
		}
		if s := h.Stats().Snapshots; s != 0 {
			t.Errorf("host %d took %d snapshots, want none", id, s)
		}
	}
}

// A follower that fell behind by more than the leader's cache catches up
// from the leader's log engine, entry by entry, without a snapshot.
func TestLaggingFollowerCatchesUpFromEngine(t *testing.T) {
	const entry = 4 << 10
	c := newCluster(t, 3, []uint64{1}, func(cfg *Config) {
		cfg.SnapshotEntries = 1 << 30
		cfg.SnapshotBytes = 1 << 40
		cfg.LogCacheBytes = 16 << 10
	})
	c.propose(1, "first")
	victim := c.follower(1)
	c.net.Isolate(victim)
	pad := strings.Repeat("y", entry)
	for i := range 100 {
		c.propose(1, fmt.Sprintf("%04d%s", i, pad))
	}
	restores := c.host(victim).Stats().Restores
	var reads uint64
	for _, id := range c.ids {
		reads += c.host(id).Stats().LogReads
	}
	c.net.Heal()
	c.waitApplied(1, 101)
	log := c.checkSame(1)
	if log[0] != "first" || log[100][:4] != "0099" {
		t.Fatalf("log %v...", log[0])
	}
	if got := c.host(victim).Stats().Restores; got != restores {
		t.Fatalf("the follower caught up by snapshot (%d restores), want from the log", got-restores)
	}
	var after uint64
	for _, id := range c.ids {
		after += c.host(id).Stats().LogReads
	}
	if after-reads < 50 {
		t.Fatalf("%d entries read back from the log engine, want most of the 100 the follower missed", after-reads)
	}
}

// Each group keeps one snapshot file: a new one replaces the older once
// the batch naming it is durable, and files no batch names (a crash between
// the two steps) are removed when the host opens the group again.
func TestSnapshotFilesReplaced(t *testing.T) {
	c := newCluster(t, 3, []uint64{1, 2}, func(cfg *Config) { cfg.SnapshotEntries = 10 })
	for i := range 45 {
		c.propose(1, fmt.Sprintf("a%d", i))
		c.propose(2, fmt.Sprintf("b%d", i))
	}
	c.waitApplied(1, 45)
	c.waitApplied(2, 45)
	files := func(id uint64) []string {
		names, err := os.ReadDir(filepath.Join(c.dirs[id], snapDirName))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range names {
			out = append(out, n.Name())
		}
		return out
	}
	perGroup := func(names []string) map[string]int {
		m := map[string]int{}
		for _, n := range names {
			m[n[:16]]++
		}
		return m
	}
	id := c.ids[0]
	waitFor(t, 10*time.Second, "one snapshot file per group", func() bool {
		m := perGroup(files(id))
		return len(m) == 2 && m[fmt.Sprintf("%016x", 1)] == 1 && m[fmt.Sprintf("%016x", 2)] == 1
	})
	c.stop(id)
	dir := filepath.Join(c.dirs[id], snapDirName)
	for _, n := range []string{snapFilePrefix(1) + "00000000000000ff-0000000000000009.snap", snapFilePrefix(2) + "x.snap.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("orphan"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := c.start(id, nil)
	if got := perGroup(files(id)); len(got) != 2 || got[fmt.Sprintf("%016x", 1)] != 1 || got[fmt.Sprintf("%016x", 2)] != 1 {
		t.Fatalf("after restart: snapshot files %v, want one per group", files(id))
	}
	if h.Stats().Restores == 0 {
		t.Fatalf("the restarted host restored no snapshot from its files")
	}
	c.waitApplied(1, 45)
	c.waitApplied(2, 45)
	c.checkSame(1)
	c.checkSame(2)
}
