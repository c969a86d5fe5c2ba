package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	pb "go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sys/unix"
)

// Segments: the data of large log entries lives in append-only segment
// files beside the log engine, which keeps per entry only its term, type
// and a reference (segment, offset, length, crc32c). See doc.go, "Entry
// bytes in segment files".
//
// A worker cycle that appends such entries writes one record to its
// worker's segment: every operation of the cycle's batch (entries of every
// group, small ones included, and hard states) with the entries' data.
// The record is written and fdatasync'd first; then the engine batch, which
// also sets the segment's applied position (segPosKey), is committed
// without an fsync of its own. A crash can therefore lose engine batches
// whose records are durable, never the reverse: on open, the records after
// each segment's applied position are replayed into the engine (as far as
// they are intact), and the engine is synced. A batch that carries
// anything a record cannot replay (a snapshot, a truncation, a group
// registered or removed) is committed with its own fsync as before.
//
// Record layout, at offset off of segment id:
//
//	crc32c(4, BE)  over id(8) off(8) metaLen dataLen meta
//	metaLen(4, BE)
//	dataLen(8, BE)
//	data           the entries' data, in meta's order
//	meta           ops: segOpEntries g prevLast n {index term type len crc}
//	               and segOpHardState g term vote commit (uvarints, crc BE)
//
// The segment id is part of every record's checksum, so a recycled file's
// old records never pass for the new segment's.
const (
	segDirName = "seg"
	// segTarget: a writer moves on to a new segment once its current one
	// holds this much.
	segTarget = 64 << 20
	// segInlineMax: entries with at most this much data stay in the engine
	// (raft's empty and configuration entries, small requests).
	segInlineMax = 256
	// segPressureBytes: once live segments (those a writer is done with)
	// hold more than this, the groups whose entries keep the oldest of
	// them alive are asked for a snapshot that truncates their log past
	// them (pressed): a group that writes little would otherwise keep
	// alive every segment written since its last snapshot.
	segPressureBytes = 4 << 30
	// segRecycleMax dead segment files are kept for reuse: rewriting a
	// file whose pages are allocated costs less than growing a new one.
	segRecycleMax = 4
	segHeader     = 16
	segGCInterval = 500 * time.Millisecond

	segOpEntries   byte = 1
	segOpHardState byte = 2
)

// entryRefMarker starts the engine value of an entry whose data is in a
// segment: an unsigned varint that overflows 64 bits, where other entries
// start with their term. Builds from before segments read every entry's
// value as term, type, data; on this prefix they stop with "corrupt
// entry" instead of taking the reference for the entry's data.
var entryRefMarker = []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02}

// entryTerm returns the term in an entry's engine value, whether its data
// is in a segment, and the rest of the value after the type byte.
func entryTerm(v []byte) (term uint64, typ byte, ref bool, rest []byte, ok bool) {
	if ref = bytes.HasPrefix(v, entryRefMarker); ref {
		v = v[len(entryRefMarker):]
	}
	term, k := binary.Uvarint(v)
	if k <= 0 || len(v) < k+1 {
		return 0, 0, ref, nil, false
	}
	return term, v[k], ref, v[k+1:], true
}

// segPosKey: the engine key holding how far segment id's records are
// applied to the engine. Shorter than any group key (groupsWhere skips it).
func segPosKey(id uint64) []byte {
	k := []byte{0xff, 0xfe, 0, 0, 0, 0, 0, 0}
	putUint48(k[2:], id)
	return k
}

func putUint48(b []byte, v uint64) {
	b[0], b[1], b[2] = byte(v>>40), byte(v>>32), byte(v>>24)
	b[3], b[4], b[5] = byte(v>>16), byte(v>>8), byte(v)
}

func segPosKeyID(k []byte) (uint64, bool) {
	if len(k) != 8 || k[0] != 0xff || k[1] != 0xfe {
		return 0, false
	}
	var v uint64
	for _, c := range k[2:] {
		v = v<<8 | uint64(c)
	}
	return v, true
}

func segName(id uint64) string { return fmt.Sprintf("%016x.seg", id) }

const segFreePrefix = "free-"

// segLog holds a host's segment files.
type segLog struct {
	fs            vfs.FS
	dir           string
	log           zerolog.Logger
	db            *pebble.DB
	inlineMax     int
	target        int64
	interval      time.Duration // between collections (under mu)
	pressureBytes int64
	buffered      bool // no O_DIRECT (tests)
	// pressure: group -> index its log should be truncated through
	// (collect; read lock-free by the workers).
	pressure atomic.Pointer[map[uint64]uint64]

	// mu guards everything below; reads hold it shared while they read a
	// file, so a file is closed only once no read uses it.
	mu      sync.RWMutex
	files   map[uint64]vfs.File          // open for reading
	refs    map[uint64]map[uint64]uint64 // segment -> group -> highest index
	sizes   map[uint64]int64             // segment -> bytes written
	active  map[uint64]bool              // segments a writer appends to
	trunc   map[uint64]uint64            // group -> entries up to it deleted
	free    []string                     // dead files kept for reuse
	nextID  uint64
	writers map[*segWriter]struct{}
	closed  bool

	removed atomic.Uint64 // segments collected
	gcMu    sync.Mutex    // one collect at a time

	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	// afterDurable, if set (tests), runs after a record is durable and
	// before the engine batch that refers to it is committed.
	afterDurable func()
}

// segRecord collects a cycle's operations for the record.
type segRecord struct {
	meta  []byte
	data  [][]byte
	dlen  int64
	big   bool   // some entry's data goes to the segment
	id    uint64 // segment and offset of the record, once big
	start int64
	refs  []segRef
}

type segRef struct{ group, index uint64 }

func (r *segRecord) reset() {
	r.meta, r.data, r.dlen, r.big = r.meta[:0], r.data[:0], 0, false
	clear(r.data[:cap(r.data)])
	r.refs = r.refs[:0]
}

// openSegLog opens the segment directory of the engine in dir, replays
// into db every intact record not yet applied, syncs db, and collects
// the segments' references from db.
func openSegLog(fs vfs.FS, dir string, db *pebble.DB, log zerolog.Logger) (*segLog, error) {
	l := &segLog{
		fs: fs, dir: fs.PathJoin(dir, segDirName), log: log, db: db,
		inlineMax: segInlineMax, target: segTarget, interval: segGCInterval,
		pressureBytes: segPressureBytes,
		sizes:         map[uint64]int64{},
		files:         map[uint64]vfs.File{},
		refs:          map[uint64]map[uint64]uint64{},
		active:        map[uint64]bool{},
		trunc:         map[uint64]uint64{},
		writers:       map[*segWriter]struct{}{},
		wake:          make(chan struct{}, 1),
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	if err := fs.MkdirAll(l.dir, 0o755); err != nil {
		return nil, err
	}
	if err := syncDir(fs, dir); err != nil {
		return nil, err
	}
	if err := l.recover(); err != nil {
		l.closeFiles()
		return nil, err
	}
	go l.gcLoop()
	return l, nil
}

// recover replays unapplied records, then builds refs from the engine.
func (l *segLog) recover() error {
	names, err := l.fs.List(l.dir)
	if err != nil {
		return err
	}
	var ids []uint64
	for _, n := range names {
		if rest, ok := strings.CutPrefix(n, segFreePrefix); ok {
			// New segments get ids above the ids of every record a
			// reused file may still hold (those of its name and below),
			// or an old record could pass for the new segment's.
			if id, ok := parseSegName(rest); ok {
				l.nextID = max(l.nextID, id+1)
			}
			l.free = append(l.free, n)
			continue
		}
		id, ok := parseSegName(n)
		if !ok {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// Applied positions, and positions of segments no longer there.
	pos := map[uint64]int64{}
	var stale []uint64
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: segPosKey(0), UpperBound: []byte{0xff, 0xff}})
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		id, ok := segPosKeyID(it.Key())
		if !ok || len(it.Value()) != 8 {
			continue
		}
		pos[id] = int64(binary.BigEndian.Uint64(it.Value()))
		if !slices.Contains(ids, id) {
			stale = append(stale, id)
		}
		l.nextID = max(l.nextID, id+1)
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return err
	}
	replayed := 0
	for _, id := range ids {
		l.nextID = max(l.nextID, id+1)
		f, err := l.fs.Open(l.fs.PathJoin(l.dir, segName(id)))
		if err != nil {
			return err
		}
		l.files[id] = f
		if st, err := f.Stat(); err == nil {
			l.sizes[id] = st.Size()
		}
		n, err := l.replay(id, f, pos[id], l.sizes[id])
		if err != nil {
			return fmt.Errorf("replication: replay segment %s: %w", segName(id), err)
		}
		replayed += n
	}
	for _, id := range stale {
		if err := l.db.Delete(segPosKey(id), pebble.NoSync); err != nil {
			return err
		}
	}
	if err := l.db.LogData(nil, pebble.Sync); err != nil {
		return err
	}
	if replayed > 0 {
		l.log.Info().Int("records", replayed).Msg("log entries replayed from segments into the engine")
	}
	return l.loadRefs()
}

func parseSegName(n string) (uint64, bool) {
	s, ok := strings.CutSuffix(n, ".seg")
	if !ok || len(s) != 16 {
		return 0, false
	}
	id, err := strconv.ParseUint(s, 16, 64)
	return id, err == nil
}

// replay applies segment id's intact records from off on (size: the
// file's); it stops at the first that is not (torn by a crash, or a
// recycled file's old bytes).
func (l *segLog) replay(id uint64, f vfs.File, off, size int64) (int, error) {
	n := 0
	var hdr [segHeader]byte
	for {
		if _, err := f.ReadAt(hdr[:], off); err != nil {
			return n, nil // end of file (or a short tail)
		}
		sum := binary.BigEndian.Uint32(hdr[0:])
		metaLen := int64(binary.BigEndian.Uint32(hdr[4:]))
		dataLen := int64(binary.BigEndian.Uint64(hdr[8:]))
		// Lengths are checked against the file before anything is read
		// (a torn or old header may hold anything).
		if metaLen == 0 || dataLen < 0 || dataLen > size || off+segHeader+dataLen+metaLen > size {
			return n, nil
		}
		meta := make([]byte, metaLen)
		if _, err := f.ReadAt(meta, off+segHeader+dataLen); err != nil {
			return n, nil
		}
		if recordSum(id, off, hdr[4:], meta) != sum {
			return n, nil
		}
		dataOff := off + segHeader
		b := l.db.NewBatch()
		ok, err := l.replayMeta(b, id, f, dataOff, meta)
		if err != nil || !ok {
			_ = b.Close()
			return n, err
		}
		end := off + segHeader + dataLen + metaLen
		_ = b.Set(segPosKey(id), binary.BigEndian.AppendUint64(nil, uint64(end)), nil)
		err = b.Commit(pebble.NoSync)
		_ = b.Close()
		if err != nil {
			return n, err
		}
		n++
		off = end
	}
}

func recordSum(id uint64, off int64, lens, meta []byte) uint32 {
	var pre [16]byte
	binary.BigEndian.PutUint64(pre[:], id)
	binary.BigEndian.PutUint64(pre[8:], uint64(off))
	s := crc32.Update(0, crcTable, pre[:])
	s = crc32.Update(s, crcTable, lens)
	return crc32.Update(s, crcTable, meta)
}

// replayMeta rebuilds a record's engine operations into b, checking each
// entry's data against its checksum; ok is false if any fails.
func (l *segLog) replayMeta(b *pebble.Batch, id uint64, f vfs.File, dataOff int64, meta []byte) (ok bool, err error) {
	d := segDecoder{b: meta}
	var key, val []byte
	for len(d.b) > 0 && d.err == nil {
		switch op := d.byte(); op {
		case segOpEntries:
			g, prevLast, n := d.uvarint(), d.uvarint(), d.uvarint()
			last := uint64(0)
			for range n {
				index, term, typ, dlen, sum := d.uvarint(), d.uvarint(), d.byte(), d.uvarint(), d.uint32()
				if d.err != nil {
					break
				}
				data := make([]byte, dlen)
				if _, err := f.ReadAt(data, dataOff); err != nil && !errors.Is(err, io.EOF) {
					return false, err
				} else if err != nil {
					return false, nil
				}
				if crc32.Checksum(data, crcTable) != sum {
					return false, nil
				}
				key = appendEntryKey(key[:0], g, index)
				if len(data) > l.inlineMax {
					val = appendEntryRef(val[:0], term, typ, id, dataOff, uint64(dlen), sum)
				} else {
					val = binary.AppendUvarint(val[:0], term)
					val = append(val, typ)
					val = append(val, data...)
				}
				_ = b.Set(key, val, nil)
				dataOff += int64(dlen)
				last = index
			}
			if n > 0 && last < prevLast {
				_ = b.DeleteRange(entryKey(g, last+1), entryKey(g, prevLast+1), nil)
			}
		case segOpHardState:
			g, term, vote, commit := d.uvarint(), d.uvarint(), d.uvarint(), d.uvarint()
			_ = b.Set(groupKey(g, kindHardState), encodeHardState(term, vote, commit), nil)
		default:
			return false, nil
		}
	}
	return d.err == nil, nil
}

type segDecoder struct {
	b   []byte
	err error
}

var errSegMeta = errors.New("corrupt segment record")

func (d *segDecoder) uvarint() uint64 {
	v, k := binary.Uvarint(d.b)
	if k <= 0 {
		d.err, d.b = errSegMeta, nil
		return 0
	}
	d.b = d.b[k:]
	return v
}

func (d *segDecoder) byte() byte {
	if len(d.b) < 1 {
		d.err, d.b = errSegMeta, nil
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *segDecoder) uint32() uint32 {
	if len(d.b) < 4 {
		d.err, d.b = errSegMeta, nil
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

// appendEntryRef encodes an entry value whose data is in a segment.
func appendEntryRef(dst []byte, term uint64, typ byte, id uint64, off int64, n uint64, sum uint32) []byte {
	dst = append(dst, entryRefMarker...)
	dst = binary.AppendUvarint(dst, term)
	dst = append(dst, typ)
	dst = binary.AppendUvarint(dst, id)
	dst = binary.AppendUvarint(dst, uint64(off))
	dst = binary.AppendUvarint(dst, n)
	return binary.BigEndian.AppendUint32(dst, sum)
}

// loadRefs records which groups' entries each segment holds.
func (l *segLog) loadRefs() error {
	it, err := l.db.NewIter(nil)
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != 17 || k[8] != kindEntry {
			continue
		}
		_, _, ref, rest, ok := entryTerm(v)
		if !ok || !ref {
			continue
		}
		id, k2 := binary.Uvarint(rest)
		if k2 <= 0 {
			continue
		}
		l.addRef(id, binary.BigEndian.Uint64(k), binary.BigEndian.Uint64(k[9:]))
	}
	return errors.Join(it.Error(), it.Close())
}

// addRef: segment id holds entry index of group g. Under mu or alone.
func (l *segLog) addRef(id, g, index uint64) {
	m := l.refs[id]
	if m == nil {
		m = map[uint64]uint64{}
		l.refs[id] = m
	}
	if index > m[g] {
		m[g] = index
	}
}

// read returns the data an entry reference points at, checked.
func (l *segLog) read(g, index uint64, v []byte) ([]byte, error) {
	d := segDecoder{b: v}
	id, off, n, sum := d.uvarint(), d.uvarint(), d.uvarint(), d.uint32()
	if d.err != nil || n > 1<<40 {
		return nil, fmt.Errorf("replication: group %d: corrupt entry reference %d", g, index)
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	f := l.files[id]
	if f == nil {
		return nil, fmt.Errorf("replication: group %d: entry %d is in segment %s, which is gone", g, index, segName(id))
	}
	data := make([]byte, n)
	if _, err := f.ReadAt(data, int64(off)); err != nil {
		return nil, fmt.Errorf("replication: group %d: read entry %d from segment %s: %w", g, index, segName(id), err)
	}
	if got := crc32.Checksum(data, crcTable); got != sum {
		return nil, fmt.Errorf("replication: group %d: entry %d in segment %s is corrupt (checksum %08x, want %08x)", g, index, segName(id), got, sum)
	}
	return data, nil
}

// truncated: a committed batch deleted group g's entries up to upto.
func (l *segLog) truncated(g, upto uint64) {
	l.mu.Lock()
	if upto > l.trunc[g] {
		l.trunc[g] = upto
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// forget: group g's replica is removed (its keys deleted, durably); a new
// replica of g starts its log at the bottom again.
func (l *segLog) forget(g uint64) {
	l.mu.Lock()
	for _, m := range l.refs {
		delete(m, g)
	}
	delete(l.trunc, g)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// deadLocked lists the segments no writer appends to whose entries are
// all deleted.
func (l *segLog) deadLocked() []uint64 {
	var dead []uint64
	for id := range l.files {
		if l.active[id] {
			continue
		}
		live := false
		for g, hi := range l.refs[id] {
			if hi > l.trunc[g] {
				live = true
				break
			}
		}
		if !live {
			dead = append(dead, id)
		}
	}
	slices.Sort(dead)
	return dead
}

// pressureLocked: for the segments beyond pressureBytes (the oldest;
// writers' current ones and dead ones aside), the groups whose entries
// keep them alive and the index through which each would have to
// truncate its log to let them go.
func (l *segLog) pressureLocked(dead []uint64) *map[uint64]uint64 {
	var live []uint64
	for id := range l.files {
		if !l.active[id] && !slices.Contains(dead, id) {
			live = append(live, id)
		}
	}
	slices.Sort(live)
	var total int64
	press := map[uint64]uint64{}
	for i := len(live) - 1; i >= 0; i-- {
		id := live[i]
		total += l.sizes[id]
		if total <= l.pressureBytes {
			continue
		}
		for g, hi := range l.refs[id] {
			if hi > l.trunc[g] && hi > press[g] {
				press[g] = hi
			}
		}
	}
	return &press
}

// pressed returns the index through which group g should truncate its
// log to release old segments (0: none asked).
func (l *segLog) pressed(g uint64) uint64 {
	if p := l.pressure.Load(); p != nil {
		return (*p)[g]
	}
	return 0
}

func (l *segLog) gcLoop() {
	defer close(l.done)
	for {
		select {
		case <-l.stop:
			return
		case <-l.wake:
		case <-time.After(l.gcInterval()):
		}
		if err := l.collect(); err != nil {
			l.log.Warn().Err(err).Msg("cannot remove dead log segments")
		}
		// At most one pass per interval: each syncs the engine.
		select {
		case <-l.stop:
			return
		case <-time.After(l.gcInterval()):
		}
	}
}

func (l *segLog) gcInterval() time.Duration {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.interval
}

// collect removes (or keeps for reuse) the dead segments. The engine is
// synced first: the truncations that killed them, and every batch that
// applied their records, must survive a crash before the files go. A
// segment's applied position is deleted only after its file's removal is
// durable, so a file that comes back after a crash is never replayed from
// the start.
func (l *segLog) collect() error {
	l.gcMu.Lock()
	defer l.gcMu.Unlock()
	l.mu.RLock()
	dead := l.deadLocked()
	l.pressure.Store(l.pressureLocked(dead))
	l.mu.RUnlock()
	if len(dead) == 0 {
		return nil
	}
	if err := l.db.LogData(nil, pebble.Sync); err != nil {
		return err
	}
	var errs []error
	var gone []uint64
	for _, id := range dead {
		l.mu.Lock()
		f := l.files[id]
		delete(l.files, id)
		delete(l.refs, id)
		delete(l.sizes, id)
		reuse := len(l.free) < segRecycleMax
		l.mu.Unlock()
		if f != nil {
			_ = f.Close()
		}
		name := l.fs.PathJoin(l.dir, segName(id))
		if reuse {
			free := segFreePrefix + segName(id)
			if err := l.fs.Rename(name, l.fs.PathJoin(l.dir, free)); err != nil {
				errs = append(errs, err)
				continue
			}
			l.mu.Lock()
			l.free = append(l.free, free)
			l.mu.Unlock()
		} else if err := l.fs.Remove(name); err != nil {
			errs = append(errs, err)
			continue
		}
		l.removed.Add(1)
		gone = append(gone, id)
	}
	if err := syncDir(l.fs, l.dir); err != nil {
		return errors.Join(append(errs, err)...)
	}
	// Only the positions of segments whose file went: a file still
	// there is replayed from its position after a restart (from nothing,
	// were it deleted), then found dead again.
	b := l.db.NewBatch()
	for _, id := range gone {
		_ = b.Delete(segPosKey(id), nil)
	}
	errs = append(errs, b.Commit(pebble.NoSync), b.Close())
	return errors.Join(errs...)
}

// count is the number of segments.
func (l *segLog) count() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return uint64(len(l.files))
}

func (l *segLog) closeFiles() {
	for id, f := range l.files {
		_ = f.Close()
		delete(l.files, id)
	}
}

// close stops the collector and closes every file.
func (l *segLog) close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for w := range l.writers {
		if w.f != nil {
			errs = append(errs, w.f.Close())
			w.f = nil
		}
		if w.direct != nil {
			errs = append(errs, w.direct.Close())
			w.direct = nil
		}
	}
	l.closeFiles()
	return errors.Join(errs...)
}

// segWriter appends one worker's records to its current segment.
type segWriter struct {
	l   *segLog
	id  uint64
	f   vfs.File
	fd  int // -1 unless the file is the OS's (then records are written with pwritev)
	off int64
	buf []byte
	iov [][]byte
	// direct: the segment opened again with O_DIRECT (nil where the file
	// system refuses it, or is not the OS's): records are copied into blk,
	// an aligned buffer whose first tail bytes are those of the segment's
	// last partial block, and written in whole blocks past the page cache.
	direct *os.File
	blk    []byte
	tail   int
}

func (l *segLog) newWriter() *segWriter {
	w := &segWriter{l: l, fd: -1}
	l.mu.Lock()
	l.writers[w] = struct{}{}
	l.mu.Unlock()
	return w
}

// roll starts a new segment (reusing a dead file if there is one); its
// directory entry is synced before any batch can refer to it.
func (w *segWriter) roll() error {
	l := w.l
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("replication: log engine closed")
	}
	id := l.nextID
	l.nextID++
	var free string
	if n := len(l.free); n > 0 {
		free = l.free[n-1]
		l.free = l.free[:n-1]
	}
	old := w.id
	hadOld := w.f != nil
	l.mu.Unlock()

	name := l.fs.PathJoin(l.dir, segName(id))
	var f vfs.File
	var err error
	if free != "" {
		f, err = l.fs.ReuseForWrite(l.fs.PathJoin(l.dir, free), name, vfs.WriteCategoryUnspecified)
	} else {
		f, err = l.fs.Create(name, vfs.WriteCategoryUnspecified)
	}
	if err != nil {
		return err
	}
	rf, err := l.fs.Open(name)
	if err == nil {
		err = syncDir(l.fs, l.dir)
	}
	if err != nil {
		_ = f.Close()
		if rf != nil {
			_ = rf.Close()
		}
		return err
	}
	var direct *os.File
	if f.Fd() != vfs.InvalidFd && !l.buffered {
		direct, err = os.OpenFile(name, os.O_RDWR|syscall.O_CLOEXEC|syscall.O_DIRECT, 0)
		if err != nil {
			direct = nil // EINVAL: no O_DIRECT here (tmpfs)
		}
	}
	if hadOld {
		_ = w.f.Close()
		if w.direct != nil {
			_ = w.direct.Close()
		}
	}
	w.id, w.f, w.off, w.fd, w.direct, w.tail = id, f, 0, -1, direct, 0
	if fd := f.Fd(); fd != vfs.InvalidFd {
		w.fd = int(fd)
	}
	if direct != nil && w.blk == nil {
		w.blk = alignedBlock(directBufSize)
	}
	l.mu.Lock()
	l.files[id] = rf
	l.active[id] = true
	if hadOld {
		delete(l.active, old)
	}
	l.mu.Unlock()
	return nil
}

// begin places record r at the writer's end, rolling to a new segment
// first if the current one is full.
func (w *segWriter) begin(r *segRecord) error {
	if w.f == nil || w.off >= w.l.target {
		if err := w.roll(); err != nil {
			return err
		}
	}
	r.id, r.start, r.big = w.id, w.off, true
	return nil
}

// write appends r and, if sync, makes it durable; it returns the offset
// after it.
func (w *segWriter) write(r *segRecord, sync bool) (int64, error) {
	var hdr [segHeader]byte
	binary.BigEndian.PutUint32(hdr[4:], uint32(len(r.meta)))
	binary.BigEndian.PutUint64(hdr[8:], uint64(r.dlen))
	binary.BigEndian.PutUint32(hdr[0:], recordSum(r.id, r.start, hdr[4:], r.meta))
	total := segHeader + r.dlen + int64(len(r.meta))
	var err error
	if w.direct != nil {
		err = w.writeDirect(r, hdr[:])
		if err == nil && sync {
			err = unix.Fdatasync(int(w.direct.Fd()))
		}
		sync = false
	} else if w.fd >= 0 {
		w.iov = append(w.iov[:0], hdr[:])
		for _, d := range r.data {
			if len(d) > 0 {
				w.iov = append(w.iov, d)
			}
		}
		w.iov = append(w.iov, r.meta)
		err = pwritevAll(w.fd, w.iov, r.start)
		clear(w.iov)
	} else {
		w.buf = append(w.buf[:0], hdr[:]...)
		for _, d := range r.data {
			w.buf = append(w.buf, d...)
		}
		w.buf = append(w.buf, r.meta...)
		_, err = w.f.Write(w.buf)
	}
	if err == nil && sync {
		err = w.f.SyncData()
	}
	if err != nil {
		return 0, fmt.Errorf("replication: write segment %s: %w", segName(r.id), err)
	}
	w.off = r.start + total
	if f := w.l.afterDurable; f != nil {
		f()
	}
	w.l.mu.Lock()
	for _, ref := range r.refs {
		w.l.addRef(r.id, ref.group, ref.index)
	}
	w.l.sizes[r.id] = w.off
	w.l.mu.Unlock()
	return w.off, nil
}

// writeDirect writes r (its header hdr) at its start through blk: whole
// blocks, from the block holding the record's start (blk[:tail] holds that
// block's bytes before it) to the one holding its end, padded with zeros;
// that last block's bytes stay in blk for the next record. A crash while
// the first block is rewritten leaves each sector old or new, and the
// earlier record's bytes in it are the same in both.
func (w *segWriter) writeDirect(r *segRecord, hdr []byte) error {
	base := r.start - int64(w.tail)
	n := w.tail
	put := func(p []byte) error {
		for len(p) > 0 {
			c := copy(w.blk[n:], p)
			n += c
			p = p[c:]
			if n == len(w.blk) {
				if err := pwriteAll(int(w.direct.Fd()), w.blk, base); err != nil {
					return err
				}
				base += int64(n)
				n = 0
			}
		}
		return nil
	}
	if err := put(hdr); err != nil {
		return err
	}
	for _, d := range r.data {
		if err := put(d); err != nil {
			return err
		}
	}
	if err := put(r.meta); err != nil {
		return err
	}
	if n > 0 {
		padded := (n + directBlock - 1) &^ (directBlock - 1)
		clear(w.blk[n:padded])
		if err := pwriteAll(int(w.direct.Fd()), w.blk[:padded], base); err != nil {
			return err
		}
	}
	full := n &^ (directBlock - 1)
	w.tail = copy(w.blk, w.blk[full:n])
	return nil
}

// pwritevAll writes iovs at off, as many calls as it takes.
func pwritevAll(fd int, iovs [][]byte, off int64) error {
	const iovMax = 1024
	for len(iovs) > 0 {
		chunk := iovs[:min(len(iovs), iovMax)]
		n, err := unix.Pwritev(fd, chunk, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		off += int64(n)
		// Drop what was written.
		for n > 0 && len(iovs) > 0 {
			if n >= len(iovs[0]) {
				n -= len(iovs[0])
				iovs = iovs[1:]
			} else {
				iovs[0] = iovs[0][n:]
				n = 0
			}
		}
		for len(iovs) > 0 && len(iovs[0]) == 0 {
			iovs = iovs[1:]
		}
	}
	return nil
}

// addEntries starts the record's operation for a group's appended
// entries (prevLast: the last index stored before); addEntry adds each.
func (r *segRecord) addEntries(g, prevLast uint64, ents []*pb.Entry) {
	r.meta = append(r.meta, segOpEntries)
	r.meta = binary.AppendUvarint(r.meta, g)
	r.meta = binary.AppendUvarint(r.meta, prevLast)
	r.meta = binary.AppendUvarint(r.meta, uint64(len(ents)))
}

// addEntry adds e (sum: its data's checksum) and returns where its data
// starts in the record's data.
func (r *segRecord) addEntry(e *pb.Entry, sum uint32) (dataOff int64) {
	d := e.GetData()
	r.meta = binary.AppendUvarint(r.meta, e.GetIndex())
	r.meta = binary.AppendUvarint(r.meta, e.GetTerm())
	r.meta = append(r.meta, byte(e.GetType()))
	r.meta = binary.AppendUvarint(r.meta, uint64(len(d)))
	r.meta = binary.BigEndian.AppendUint32(r.meta, sum)
	dataOff = r.dlen
	r.data = append(r.data, d)
	r.dlen += int64(len(d))
	return dataOff
}

func (r *segRecord) addHardState(g uint64, hs *pb.HardState) {
	r.meta = append(r.meta, segOpHardState)
	r.meta = binary.AppendUvarint(r.meta, g)
	r.meta = binary.AppendUvarint(r.meta, hs.GetTerm())
	r.meta = binary.AppendUvarint(r.meta, hs.GetVote())
	r.meta = binary.AppendUvarint(r.meta, hs.GetCommit())
}
