package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// logStore is the raft.Storage of one group: the log engine holds the whole
// log, and a raft.MemoryStorage holds its recent part (the cache), the hard
// state and the latest snapshot. Raft reads recent entries (sending to
// followers that keep up, applying) from memory; entries that fell out of
// the cache are read back from the engine, which only a follower lagging
// by more than the cache needs.
//
// Before it, the MemoryStorage held every entry back to the compaction
// point, so a group's memory grew with SnapshotEntries times the entry size
// (5 GiB per group with gcs's 512 KiB batches) and only a snapshot freed it.
//
// Entries below the cache are committed and applied, so they never change:
// the cache is only trimmed up to the applied index, and raft overwrites
// only uncommitted entries.
//
// All methods run on the group's worker goroutine (RawNode's and the
// cycle's), except that the cache's own methods lock, and a snapshot is
// read back on a goroutine of its own (loadSnapshot) under loadMu.
type logStore struct {
	*raft.MemoryStorage // cache, hard state, snapshot
	eng                 *engine
	group               uint64
	reads               *atomic.Uint64 // Stats.LogReads
	// first is the first index the engine holds (the log's FirstIndex);
	// firstTerm is the term of first-1, kept for raft's matching.
	first, firstTerm uint64
	// snap is the metadata of the latest snapshot taken here (the cache's
	// is the latest restored one's, also without data). Neither keeps the
	// data: a snapshot is the whole state machine, which would be held
	// twice. Snapshot reads it back from the engine.
	snap *pb.Snapshot
	// onLoadError reports a snapshot the engine could not give back (on
	// the goroutine that read it).
	onLoadError func(error)

	// The latest snapshot with its data, read back off the worker for
	// raft (Snapshot); loadWG: reads in flight (the group's snapWG, which
	// RemoveGroup and Host.Close wait for); loads counts reads (tests).
	loadMu     sync.Mutex
	loaded     *pb.Snapshot
	loadedUsed time.Time
	loading    bool
	loadWG     *sync.WaitGroup
	loads      atomic.Uint64
	removed    atomic.Bool // RemoveGroup deletes the group: reads may fail
	// beforeLoad, if set (tests), runs before each read.
	beforeLoad func()
}

// Snapshot returns the latest snapshot (the newer of the one taken here and
// the cache's) with its data, read back from the engine (its file, checksum
// verified): raft asks only to send it to a follower that fell behind the
// log. The read runs on a goroutine of its own (loadSnapshot): until it is
// done, or if the engine cannot give the snapshot back, raft is told to try
// later (it asks again at the follower's next heartbeat response). The
// data is then kept for further sends of the same snapshot (another
// follower, a send that failed) until none asked for snapshotKeep
// (dropIdleSnapshot). Before, raft's call read the file on the worker,
// whose other groups all waited (a 256 MiB memnode: the whole read), and
// read it again for every follower and every failed send.
func (s *logStore) Snapshot() (*pb.Snapshot, error) {
	ms, err := s.MemoryStorage.Snapshot()
	if err != nil {
		return ms, err
	}
	idx := ms.GetMetadata().GetIndex()
	if s.snap != nil {
		idx = max(idx, s.snap.GetMetadata().GetIndex())
	}
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if s.loaded != nil && s.loaded.GetMetadata().GetIndex() == idx {
		s.loadedUsed = time.Now()
		return s.loaded, nil
	}
	s.loaded = nil // an older one
	if !s.loading {
		s.loading = true
		s.loadWG.Add(1)
		go s.loadSnapshot(idx)
	}
	return nil, raft.ErrSnapshotTemporarilyUnavailable
}

// snapshotKeep: how long a snapshot read back for raft is kept after it
// was last asked for.
const snapshotKeep = 10 * time.Second

// loadSnapshot reads the group's snapshot back from the engine for
// Snapshot, expecting index idx.
func (s *logStore) loadSnapshot(idx uint64) {
	defer s.loadWG.Done()
	if f := s.beforeLoad; f != nil {
		f()
	}
	snap, _, err := s.eng.loadSnapshot(s.group)
	if err != nil {
		// The worker may have installed a newer snapshot and removed the
		// file between the read of its name and of the file: read again.
		snap, _, err = s.eng.loadSnapshot(s.group)
	}
	if err == nil && snap == nil {
		err = fmt.Errorf("replication: group %d: the engine holds no snapshot (want index %d)", s.group, idx)
	}
	s.loads.Add(1)
	s.loadMu.Lock()
	s.loading = false
	if err == nil {
		// Kept even if newer than idx (taken meanwhile): raft asks for
		// the latest, and Snapshot hands out only that.
		s.loaded, s.loadedUsed = snap, time.Now()
	}
	s.loadMu.Unlock()
	if err != nil && s.onLoadError != nil && !s.removed.Load() {
		s.onLoadError(err)
	}
}

// dropIdleSnapshot forgets a snapshot read back for raft that nobody asked
// for since snapshotKeep before now (called by the worker at its ticks).
func (s *logStore) dropIdleSnapshot(now time.Time) {
	s.loadMu.Lock()
	if s.loaded != nil && now.Sub(s.loadedUsed) > snapshotKeep {
		s.loaded = nil
	}
	s.loadMu.Unlock()
}

// withoutData is snap without its data, as the log store keeps snapshots.
func withoutData(snap *pb.Snapshot) *pb.Snapshot {
	return &pb.Snapshot{Metadata: snap.GetMetadata()}
}

var _ raft.Storage = (*logStore)(nil)

// resetFirst records that the engine's log starts at first, after an entry
// of term term (a snapshot or a truncation).
func (s *logStore) resetFirst(first, term uint64) { s.first, s.firstTerm = first, term }

// syncFirst takes the engine's first index from the cache, when both hold
// the same entries (after recovery, bootstrap or an incoming snapshot).
func (s *logStore) syncFirst() {
	first, _ := s.MemoryStorage.FirstIndex()
	term, _ := s.MemoryStorage.Term(first - 1)
	s.resetFirst(first, term)
}

// FirstIndex is the engine's: entries before the cache are still available.
func (s *logStore) FirstIndex() (uint64, error) { return s.first, nil }

// Term answers from the cache, or from the engine below it.
func (s *logStore) Term(i uint64) (uint64, error) {
	cacheFirst, _ := s.MemoryStorage.FirstIndex()
	switch {
	case i+1 >= cacheFirst:
		return s.MemoryStorage.Term(i)
	case i+1 < s.first:
		return 0, raft.ErrCompacted
	case i+1 == s.first:
		return s.firstTerm, nil
	}
	v, closer, err := s.eng.db.Get(entryKey(s.group, i))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, raft.ErrUnavailable
	}
	if err != nil {
		return 0, fmt.Errorf("replication: group %d: read term of %d: %w", s.group, i, err)
	}
	defer closer.Close()
	term, _, _, _, ok := entryTerm(v)
	if !ok {
		return 0, fmt.Errorf("replication: corrupt entry %d", i)
	}
	return term, nil
}

// Entries answers from the engine for the part of [lo, hi) below the cache
// and from the cache for the rest, up to maxSize bytes (at least one entry).
func (s *logStore) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	if lo < s.first {
		return nil, raft.ErrCompacted
	}
	cacheFirst, _ := s.MemoryStorage.FirstIndex()
	if lo >= cacheFirst {
		return s.MemoryStorage.Entries(lo, hi, maxSize)
	}
	ents, size, err := s.eng.readEntries(s.group, lo, min(hi, cacheFirst), maxSize)
	if err != nil {
		return nil, err
	}
	s.reads.Add(uint64(len(ents)))
	if len(ents) < int(min(hi, cacheFirst)-lo) || hi <= cacheFirst || size >= maxSize {
		if len(ents) == 0 {
			return nil, raft.ErrUnavailable
		}
		return ents, nil
	}
	more, err := s.MemoryStorage.Entries(cacheFirst, hi, maxSize-size)
	if err != nil {
		return ents, nil
	}
	// The cache returns at least one entry even over the size: keep that
	// one only if it fits.
	for _, e := range more {
		size += uint64(len(e.GetData()))
		if size > maxSize {
			break
		}
		ents = append(ents, e)
	}
	return ents, nil
}

// readEntries reads group g's entries in [lo, hi) from the engine, stopping
// before the one that would take their data past maxSize (but returning at
// least one). size is the data returned. Fewer entries than asked mean a
// gap, or maxSize.
func (e *engine) readEntries(g, lo, hi, maxSize uint64) (ents []*pb.Entry, size uint64, err error) {
	it, err := e.db.NewIter(&pebble.IterOptions{
		LowerBound: entryKey(g, lo),
		UpperBound: entryKey(g, hi),
	})
	if err != nil {
		return nil, 0, err
	}
	next := lo
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) != 17 || binary.BigEndian.Uint64(k[9:]) != next {
			break
		}
		ent, derr := e.decodeEntry(g, next, it.Value())
		if derr != nil {
			err = derr
			break
		}
		if len(ents) > 0 && size+uint64(len(ent.GetData())) > maxSize {
			break
		}
		ents = append(ents, ent)
		size += uint64(len(ent.GetData()))
		next++
	}
	if err = errors.Join(err, it.Error(), it.Close()); err != nil {
		return nil, 0, err
	}
	return ents, size, nil
}
