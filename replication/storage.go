package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The log engine: one Pebble database per Host holding the Raft state of all
// its groups. Keys are [group uint64 BE][kind byte][index uint64 BE] (the
// index only for entries), so one group's data is contiguous and its entries
// are ordered by index:
//
//	[g][kindRegistry]        the group exists on this host (value: initial peers)
//	[g][kindHardState]       term, vote, commit (3 × uint64 BE)
//	[g][kindSnapshot]        latest snapshot: uvarint(len(meta)) meta data
//	[g][kindEntry][index]    uvarint(term) type(byte) data, or for an
//	                         entry whose data is in a segment file
//	                         (segment.go) entryRefMarker uvarint(term)
//	                         type uvarint(segment) uvarint(offset)
//	                         uvarint(length) crc32c(data)
//	0xff 0xfe [id uint48]    how far segment id's records are applied
//	[g][kindSnapFile]        crc32c(data) (4 bytes BE) and the name of the
//	                         file in snap/ holding the latest snapshot's
//	                         data (then kindSnapshot holds only its
//	                         metadata)
//	[g][kindTombstone]       a removed replica's last term and vote, as
//	                         kindHardState with commit 0, the group gone
//	                         (RemoveGroup): see loadTombstone
//
// A snapshot's data is the whole state machine, so it is written to a file
// of its own beside the engine (written, synced, renamed, directory synced)
// rather than through Pebble's WAL, memtable, flushes and compactions; the
// batch that names the new file is synced before the previous file is
// removed, so the engine never names a file that is gone. Files no batch
// names (a crash between the two) are removed when the group is opened,
// and those of groups no longer registered (a crash inside RemoveGroup)
// when the host opens the engine.
//
// The engine only stores; the worker decides what to write. Writes go through
// a logBatch, committed once per worker cycle.
const (
	kindRegistry  byte = 0x01
	kindHardState byte = 0x02
	kindSnapshot  byte = 0x03
	kindEntry     byte = 0x04
	kindSnapFile  byte = 0x05
	kindTombstone byte = 0x06
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// snapDirName is the directory of snapshot files inside the engine's.
const snapDirName = "snap"

// memTableSize: the default 4 MB memtable is small for a log (see notes).
const memTableSize = 64 << 20

type engine struct {
	db      *pebble.DB
	fs      vfs.FS
	snapDir string
	rec     *reclaimer
	seg     *segLog

	closeOnce sync.Once
	closeErr  error
	// afterSnapMetaRead, if set (tests), runs in loadSnapshot between the
	// reads of a snapshot's metadata and of its file's name.
	afterSnapMetaRead func()
}

// openEngine opens (or creates) the engine in dir, on fs (the OS if nil;
// tests pass a crashable in-memory one).
func openEngine(dir string, fs vfs.FS, log zerolog.Logger) (*engine, error) {
	engFS := fs
	if fs == nil { // tables with O_DIRECT (directfs.go)
		engFS = newDirectFS(vfs.Default)
	}
	rec := newReclaimer(log)
	listener := rec.listener()
	opts := &pebble.Options{
		MemTableSize: memTableSize,
		Logger:       pebbleLogger{l: log},
		FS:           engFS,
		// What the engine holds is mostly Raft log on its way to being
		// truncated (a range deletion) after the next snapshot. With the
		// default thresholds (4 L0 read-amplification to compact, 64 MiB
		// in the base level) every flushed table was compacted, rewritten
		// and compressed again, often just before its entries were
		// deleted: Pebble flushes and compactions were ~15% of the
		// embedded cluster's CPU at multicast saturation. Letting L0 hold
		// more lets truncation delete most flushed tables whole
		// (delete-only compactions). See doc.go, "Engine settings".
		L0CompactionThreshold: 32,
		L0StopWritesThreshold: 128,
		LBaseMaxBytes:         1 << 30,
		// Truncated log prefixes are excised (reclaim.go), which needs
		// virtual tables; from this version on an excise that overlaps
		// the memtable (one whose flush the reclaimer did not wait for)
		// is queued behind it rather than waiting for its flush while
		// commits wait. Stores of older versions are upgraded when
		// opened.
		FormatMajorVersion: pebble.FormatFlushableIngestExcises,
		// An excise queued behind the memtable (above) cuts it short;
		// with the default 2 a memtable being flushed already made the
		// queue too long, and the excise waited for a flush instead.
		MemTableStopWritesThreshold: 4,
		// Flushes tell the reclaimer when a truncation's range deletion
		// has left the memtable.
		EventListener: &listener,
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("replication: open log engine in %s: %w", dir, err)
	}
	if fs == nil {
		// Snapshot files with O_DIRECT too.
		fs = engFS
	}
	rec.start(db)
	e := &engine{db: db, fs: fs, snapDir: fs.PathJoin(dir, snapDirName), rec: rec}
	// The directory itself must survive a crash: sync its parent too.
	if err = fs.MkdirAll(e.snapDir, 0o755); err == nil {
		err = syncDir(fs, dir)
	}
	if err != nil {
		e.rec.close()
		db.Close()
		return nil, fmt.Errorf("replication: create %s: %w", e.snapDir, err)
	}
	if e.seg, err = openSegLog(fs, dir, db, log); err != nil {
		e.rec.close()
		db.Close()
		return nil, fmt.Errorf("replication: open log segments in %s: %w", dir, err)
	}
	return e, nil
}

// close closes the engine; later calls do nothing.
func (e *engine) close() error {
	e.closeOnce.Do(func() {
		serr := e.seg.close()
		e.rec.close()
		e.closeErr = errors.Join(serr, e.db.Close())
	})
	return e.closeErr
}

func groupKey(g uint64, kind byte) []byte {
	k := make([]byte, 9)
	binary.BigEndian.PutUint64(k, g)
	k[8] = kind
	return k
}

func appendEntryKey(dst []byte, g, index uint64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, g)
	dst = append(dst, kindEntry)
	return binary.BigEndian.AppendUint64(dst, index)
}

func entryKey(g, index uint64) []byte { return appendEntryKey(make([]byte, 0, 17), g, index) }

// storedGroups lists the groups registered in the engine, ascending.
func (e *engine) storedGroups() ([]uint64, error) {
	return e.groupsWhere(func(g uint64, registered bool, _ *pebble.Iterator) bool { return registered })
}

// removedGroups lists the groups whose replica this host removed
// (RemoveGroup left a tombstone) and does not hold again, ascending.
func (e *engine) removedGroups() ([]uint64, error) {
	return e.groupsWhere(func(g uint64, registered bool, it *pebble.Iterator) bool {
		tomb := groupKey(g, kindTombstone)
		return !registered && it.SeekGE(tomb) && bytes.Equal(it.Key(), tomb)
	})
}

// groupsWhere lists, ascending, the groups with keys in the engine for which
// keep says yes; registered tells whether the group's first key is its
// registration (the smallest kind). keep may move the iterator within the
// group's keys.
func (e *engine) groupsWhere(keep func(g uint64, registered bool, it *pebble.Iterator) bool) ([]uint64, error) {
	it, err := e.db.NewIter(nil)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for valid := it.First(); valid; {
		k := it.Key()
		if len(k) < 9 {
			valid = it.Next()
			continue
		}
		g := binary.BigEndian.Uint64(k)
		if keep(g, k[8] == kindRegistry, it) {
			out = append(out, g)
		}
		if g == math.MaxUint64 {
			break
		}
		// Skip the rest of this group's keys.
		valid = it.SeekGE(groupKey(g+1, 0))
	}
	err = errors.Join(it.Error(), it.Close())
	return out, err
}

// persistedGroup is what the engine holds for one group.
type persistedGroup struct {
	peers []uint64
	hs    *pb.HardState // nil if none
	snap  *pb.Snapshot  // nil if none
	ents  []*pb.Entry   // ascending, contiguous
	// snapFile names the file holding snap's data, "" if it is inline.
	snapFile string
}

// loadGroup reads a group's state; ok is false if the group is not
// registered.
func (e *engine) loadGroup(g uint64) (pg *persistedGroup, ok bool, err error) {
	v, closer, err := e.db.Get(groupKey(g, kindRegistry))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	pg = &persistedGroup{}
	pg.peers, err = decodePeers(v)
	closer.Close()
	if err != nil {
		return nil, false, err
	}
	if pg.hs, err = e.loadHardState(g); err != nil {
		return nil, false, err
	}
	if pg.snap, pg.snapFile, err = e.loadSnapshot(g); err != nil {
		return nil, false, err
	}
	it, err := e.db.NewIter(&pebble.IterOptions{
		LowerBound: entryKey(g, 0),
		UpperBound: groupKey(g, kindEntry+1),
	})
	if err != nil {
		return nil, false, err
	}
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) != 17 {
			continue
		}
		ent, derr := e.decodeEntry(g, binary.BigEndian.Uint64(k[9:]), it.Value())
		if derr != nil {
			err = derr
			break
		}
		if n := len(pg.ents); n > 0 && pg.ents[n-1].GetIndex()+1 != ent.GetIndex() {
			err = fmt.Errorf("replication: group %d: log gap between %d and %d", g, pg.ents[n-1].GetIndex(), ent.GetIndex())
			break
		}
		pg.ents = append(pg.ents, ent)
	}
	if err = errors.Join(err, it.Error(), it.Close()); err != nil {
		return nil, false, err
	}
	return pg, true, nil
}

// logBatch collects writes for one commit.
type logBatch struct {
	e *engine
	b *pebble.Batch
	// truncated: prefixes truncatePrefix deleted, excised once committed.
	truncated []truncation
	key       []byte
	val       []byte
	// rec, for a worker's batch (withSegment), collects the batch's
	// entries and hard states for a segment record (segment.go); other
	// is set by every operation a record cannot replay.
	rec   *segRecord
	sw    *segWriter
	other bool
	err   error
}

func (e *engine) newBatch() *logBatch { return &logBatch{e: e, b: e.db.NewBatch()} }

// withSegment lets the batch put large entries' data in w's segment, with
// r (reset) as its record.
func (b *logBatch) withSegment(w *segWriter, r *segRecord) *logBatch {
	r.reset()
	b.rec, b.sw = r, w
	return b
}

// truncation: the entries of a group up to an index.
type truncation struct{ group, upto uint64 }

func (b *logBatch) empty() bool { return b.b.Empty() }

func (b *logBatch) close() { _ = b.b.Close() }

// commit writes the batch, with an fsync if sync. A batch whose entries'
// data went to a segment writes its record first (synced if sync); the
// engine's own fsync is then needed only if the batch holds more than the
// record can replay.
func (b *logBatch) commit(sync bool) error {
	if b.err != nil {
		return b.err
	}
	if r := b.rec; r != nil && r.big {
		end, err := b.sw.write(r, sync)
		r.reset()
		if err != nil {
			return err
		}
		_ = b.b.Set(segPosKey(r.id), binary.BigEndian.AppendUint64(nil, uint64(end)), nil)
		sync = sync && b.other
	}
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	if err := b.b.Commit(opts); err != nil {
		return err
	}
	// Only a synced truncation is excised: an excise that does not queue
	// behind the memtable is a manifest edit, durable at once, and had
	// the batch then been lost in a crash the log would restart with a
	// gap between the older snapshot and the excised entries.
	for _, t := range b.truncated {
		if sync {
			b.e.rec.add(t.group, t.upto)
		}
		b.e.seg.truncated(t.group, t.upto)
	}
	b.truncated = b.truncated[:0]
	return nil
}

func (b *logBatch) registerGroup(g uint64, peers []uint64) {
	b.other = true
	_ = b.b.Set(groupKey(g, kindRegistry), encodePeers(peers), nil)
}

// appendEntries writes ents (contiguous, ascending) for group g. Raft may
// overwrite a suffix of the log: prevLast is the last index stored before;
// entries after the new last index up to prevLast are deleted.
func (b *logBatch) appendEntries(g uint64, ents []*pb.Entry, prevLast uint64) {
	if len(ents) == 0 {
		return
	}
	r := b.rec
	if r != nil {
		r.addEntries(g, prevLast, ents)
	}
	for _, e := range ents {
		b.key = appendEntryKey(b.key[:0], g, e.GetIndex())
		if r != nil {
			data := e.GetData()
			sum := crc32.Checksum(data, crcTable)
			if len(data) > b.e.seg.inlineMax {
				if !r.big {
					if err := b.sw.begin(r); err != nil {
						b.err = err
						return
					}
				}
				off := r.start + segHeader + r.addEntry(e, sum)
				r.refs = append(r.refs, segRef{g, e.GetIndex()})
				b.val = appendEntryRef(b.val[:0], e.GetTerm(), byte(e.GetType()), r.id, off, uint64(len(data)), sum)
				_ = b.b.Set(b.key, b.val, nil)
				continue
			}
			r.addEntry(e, sum)
		}
		// Encoded in place in the batch: the data is copied once, not
		// into a scratch value and then into the batch.
		b.val = binary.AppendUvarint(b.val[:0], e.GetTerm())
		b.val = append(b.val, byte(e.GetType()))
		op := b.b.SetDeferred(len(b.key), len(b.val)+len(e.GetData()))
		copy(op.Key, b.key)
		copy(op.Value[copy(op.Value, b.val):], e.GetData())
		_ = op.Finish()
	}
	if last := ents[len(ents)-1].GetIndex(); last < prevLast {
		_ = b.b.DeleteRange(entryKey(g, last+1), entryKey(g, prevLast+1), nil)
	}
}

func (b *logBatch) setHardState(g uint64, hs *pb.HardState) {
	if b.rec != nil {
		b.rec.addHardState(g, hs)
	}
	_ = b.b.Set(groupKey(g, kindHardState), encodeHardState(hs.GetTerm(), hs.GetVote(), hs.GetCommit()), nil)
}

// loadHardState returns group g's hard state, nil if it has none.
func (e *engine) loadHardState(g uint64) (*pb.HardState, error) {
	return e.getHardState(groupKey(g, kindHardState))
}

// setTombstone records, for a group this host removes, the term and vote of
// its last hard state (see loadTombstone).
func (b *logBatch) setTombstone(g uint64, hs *pb.HardState) {
	b.other = true
	_ = b.b.Set(groupKey(g, kindTombstone), encodeHardState(hs.GetTerm(), hs.GetVote(), 0), nil)
}

// loadTombstone returns the term and vote a removed replica of group g on
// this host last persisted, as a hard state with no commit; nil if the
// host never removed one. Raft identifies a replica by its host id, so a
// replica added back to the host (a move there and back) is the same voter
// to the others: starting it with no hard state would let it vote a second
// time in a term its removed predecessor voted in (a vote request of that
// term, delayed, from a candidate still counting), and two leaders of one
// term could be elected.
func (e *engine) loadTombstone(g uint64) (*pb.HardState, error) {
	return e.getHardState(groupKey(g, kindTombstone))
}

// getHardState decodes the hard state stored at key, nil if there is none.
func (e *engine) getHardState(key []byte) (*pb.HardState, error) {
	v, closer, err := e.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return decodeHardState(v)
}

// loadSnapshot reads group g's latest snapshot, its data included (from
// its file, checksum verified), and the file's name ("" if inline); nil if
// there is none.
func (e *engine) loadSnapshot(g uint64) (snap *pb.Snapshot, file string, err error) {
	// One view for the metadata and the file's name: the log store reads
	// snapshots back off the worker (logStore.loadSnapshot), which may
	// install a newer one between the two reads.
	view := e.db.NewSnapshot()
	defer view.Close()
	if v, closer, err := view.Get(groupKey(g, kindSnapshot)); err == nil {
		snap, err = decodeSnapshot(v)
		closer.Close()
		if err != nil {
			return nil, "", err
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return nil, "", err
	}
	if f := e.afterSnapMetaRead; f != nil {
		f()
	}
	if v, closer, err := view.Get(groupKey(g, kindSnapFile)); err == nil {
		var sum uint32
		if len(v) > 4 {
			sum, file = binary.BigEndian.Uint32(v), string(v[4:])
		}
		closer.Close()
		if snap == nil || file == "" {
			return nil, "", fmt.Errorf("replication: group %d: corrupt snapshot file reference", g)
		}
		if snap.Data, err = e.readSnapFile(file); err != nil {
			return nil, "", err
		}
		if got := crc32.Checksum(snap.Data, crcTable); got != sum {
			return nil, "", fmt.Errorf("replication: group %d: snapshot file %s is corrupt (checksum %08x, want %08x)", g, file, got, sum)
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return nil, "", err
	}
	return snap, file, nil
}

// setSnapshot stores snap as the group's latest snapshot. If dropLog, every
// stored entry is deleted too (an incoming snapshot replaces the log;
// entries that follow it in the same Ready are written after this call).
// file names the snapshot file holding snap's data (writeSnapFile); with ""
// the data is stored inline.
func (b *logBatch) setSnapshot(g uint64, snap *pb.Snapshot, dropLog bool, file string) error {
	meta, err := proto.Marshal(snap.GetMetadata())
	if err != nil {
		return err
	}
	b.other = true
	if dropLog {
		_ = b.b.DeleteRange(entryKey(g, 0), groupKey(g, kindEntry+1), nil)
		// Entries up to the snapshot are never written again here (those
		// above it may be, later in this batch): excise them once committed.
		if i := snap.GetMetadata().GetIndex(); i > 0 {
			b.truncated = append(b.truncated, truncation{g, i})
		}
	}
	v := binary.AppendUvarint(nil, uint64(len(meta)))
	v = append(v, meta...)
	if file == "" {
		v = append(v, snap.GetData()...)
		_ = b.b.Delete(groupKey(g, kindSnapFile), nil)
	} else {
		ref := binary.BigEndian.AppendUint32(nil, crc32.Checksum(snap.GetData(), crcTable))
		_ = b.b.Set(groupKey(g, kindSnapFile), append(ref, file...), nil)
	}
	return b.b.Set(groupKey(g, kindSnapshot), v, nil)
}

// snapTmpSuffix ends the name of a snapshot file being written (its name
// and ".tmp").
const snapTmpSuffix = ".snap.tmp"

// snapFilePrefix starts the names of group g's snapshot files.
func snapFilePrefix(g uint64) string { return fmt.Sprintf("%016x-", g) }

// writeSnapFile writes snap's data to a new file named after the group,
// index and term, synced (with its directory) if sync, and returns its
// name. The data is in place only once the file is complete: it is
// written under a temporary name and renamed.
func (e *engine) writeSnapFile(g uint64, snap *pb.Snapshot, sync bool) (string, error) {
	md := snap.GetMetadata()
	name := fmt.Sprintf("%s%016x-%016x.snap", snapFilePrefix(g), md.GetIndex(), md.GetTerm())
	path := e.fs.PathJoin(e.snapDir, name)
	tmp := path + ".tmp" // ends with snapTmpSuffix
	f, err := e.fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return "", fmt.Errorf("replication: group %d: create snapshot file: %w", g, err)
	}
	// Through a buffer of our own: vfs.File.Write may modify what it is
	// given (pebble's MemFS does under its invariants builds), and the
	// data is still raft's snapshot.
	data := snap.GetData()
	buf := make([]byte, min(len(data), 256<<10))
	for len(data) > 0 && err == nil {
		n := copy(buf, data)
		data = data[n:]
		_, err = f.Write(buf[:n])
	}
	if err == nil && sync {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = e.fs.Rename(tmp, path)
	}
	if err == nil && sync {
		err = syncDir(e.fs, e.snapDir)
	}
	if err != nil {
		_ = e.fs.Remove(tmp)
		return "", fmt.Errorf("replication: group %d: write snapshot file %s: %w", g, name, err)
	}
	return name, nil
}

// syncDir makes the entries of directory dir durable.
func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// readSnapFile reads a snapshot file's data.
func (e *engine) readSnapFile(name string) ([]byte, error) {
	f, err := e.fs.Open(e.fs.PathJoin(e.snapDir, name))
	if err != nil {
		return nil, fmt.Errorf("replication: open snapshot file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("replication: read snapshot file %s: %w", name, err)
	}
	return data, nil
}

// removeSnapFiles removes group g's snapshot files other than keep (and
// unfinished ones). Errors are logged by the caller; a file left over is
// only disk space.
func (e *engine) removeSnapFiles(g uint64, keep string) error {
	names, err := e.fs.List(e.snapDir)
	if err != nil {
		return err
	}
	prefix := snapFilePrefix(g)
	var errs []error
	for _, n := range names {
		if n != keep && strings.HasPrefix(n, prefix) {
			errs = append(errs, e.fs.Remove(e.fs.PathJoin(e.snapDir, n)))
		}
	}
	return errors.Join(errs...)
}

// removeUnregisteredSnapFiles removes the snapshot files of groups the
// engine does not register: RemoveGroup deletes a group's keys before its
// files, and no later StartGroup opens the group to remove them if the
// host stops in between. Called before any group is started.
func (e *engine) removeUnregisteredSnapFiles() error {
	groups, err := e.storedGroups()
	if err != nil {
		return err
	}
	names, err := e.fs.List(e.snapDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		prefix, _, ok := strings.Cut(n, "-")
		if !ok || len(prefix) != 16 {
			continue
		}
		g, err := strconv.ParseUint(prefix, 16, 64)
		if err != nil || slices.Contains(groups, g) {
			continue
		}
		errs = append(errs, e.fs.Remove(e.fs.PathJoin(e.snapDir, n)))
	}
	return errors.Join(errs...)
}

// truncatePrefix deletes the entries with index <= upto.
func (b *logBatch) truncatePrefix(g, upto uint64) {
	b.other = true
	_ = b.b.DeleteRange(entryKey(g, 0), entryKey(g, upto+1), nil)
	b.truncated = append(b.truncated, truncation{g, upto})
}

func encodePeers(peers []uint64) []byte {
	v := binary.AppendUvarint(nil, uint64(len(peers)))
	for _, p := range peers {
		v = binary.AppendUvarint(v, p)
	}
	return v
}

func decodePeers(v []byte) ([]uint64, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)) {
		return nil, errors.New("replication: corrupt group registry")
	}
	v = v[k:]
	out := make([]uint64, 0, n)
	for range n {
		p, k := binary.Uvarint(v)
		if k <= 0 {
			return nil, errors.New("replication: corrupt group registry")
		}
		out = append(out, p)
		v = v[k:]
	}
	return out, nil
}

func encodeHardState(term, vote, commit uint64) []byte {
	v := make([]byte, 24)
	binary.BigEndian.PutUint64(v, term)
	binary.BigEndian.PutUint64(v[8:], vote)
	binary.BigEndian.PutUint64(v[16:], commit)
	return v
}

func decodeHardState(v []byte) (*pb.HardState, error) {
	if len(v) != 24 {
		return nil, errors.New("replication: corrupt hard state")
	}
	return &pb.HardState{
		Term:   new(binary.BigEndian.Uint64(v)),
		Vote:   new(binary.BigEndian.Uint64(v[8:])),
		Commit: new(binary.BigEndian.Uint64(v[16:])),
	}, nil
}

// decodeEntry decodes group g's entry index from its engine value,
// reading its data from its segment if it is there.
func (e *engine) decodeEntry(g, index uint64, v []byte) (*pb.Entry, error) {
	term, typ, ref, rest, ok := entryTerm(v)
	if !ok {
		return nil, fmt.Errorf("replication: corrupt entry %d", index)
	}
	ent := &pb.Entry{Term: new(term), Index: new(index), Type: pb.EntryType(typ).Enum()}
	if ref {
		data, err := e.seg.read(g, index, rest)
		if err != nil {
			return nil, err
		}
		ent.Data = data
	} else if len(rest) > 0 {
		ent.Data = append([]byte(nil), rest...)
	}
	return ent, nil
}

func decodeSnapshot(v []byte) (*pb.Snapshot, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || uint64(len(v)-k) < n {
		return nil, errors.New("replication: corrupt snapshot")
	}
	meta := &pb.SnapshotMetadata{}
	if err := proto.Unmarshal(v[k:k+int(n)], meta); err != nil {
		return nil, fmt.Errorf("replication: corrupt snapshot metadata: %w", err)
	}
	snap := &pb.Snapshot{Metadata: pb.EnsureSnapshotMetadata(meta)}
	if d := v[k+int(n):]; len(d) > 0 {
		snap.Data = append([]byte(nil), d...)
	}
	return snap, nil
}
