package gcs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"sort"
)

// Memnode layout of the groups (all integers little-endian; unwritten memory
// reads as zeros). See doc.go for the overview.
const (
	// IndexBase is where the group index lives on every home memnode.
	IndexBase = 0x7800_0000
	// IndexSlots is the number of slots of the group index.
	IndexSlots = 1024
	// IndexSlotSize is the size of one index slot:
	//
	//	+0   meta     address of the group's metadata region (0: free slot)
	//	+8   nameLen  length of the group name
	//	+16  name     [112]byte
	IndexSlotSize = 128
	// MaxGroupName is the longest group name.
	MaxGroupName = IndexSlotSize - 16
	// indexProbe is how many slots one index read covers.
	indexProbe = 8
	// indexDeleted in an index slot's meta word marks a deleted group's
	// slot (a tombstone, name zeroed): lookups probe past it, a new name
	// may take it (see Node.lookup).
	indexDeleted = 1
	// FreeMetaAddr, right after the index, heads the home memnode's list
	// of deleted groups' metadata regions (0: empty), reused for new
	// groups (Node.Delete). A listed region's magic is metaDeleted and the
	// word at +offFreeNext (member slot 0's inc; every slot is free) names
	// the next.
	FreeMetaAddr = IndexBase + IndexSlots*IndexSlotSize
	offFreeNext  = metaHeader + 8

	// AllocBase and AllocLimit bound the allocator (client.Allocator) that
	// gcs uses on every memnode for group metadata, member queues and state
	// transfer regions.
	AllocBase  = 0x8000_0000
	AllocLimit = AllocBase + 0x4000_0000

	// Metadata region of a group (allocated on the home memnode):
	//
	//	+0    magic     "tuttiGV1"
	//	+8    view      current view id (0: never joined)
	//	+16   tail      next order-log position (bytes, only grows)
	//	+24   msgs      messages ordered so far (Message.Pos of the last)
	//	+32   head      order-log positions below head are reclaimed
	//	+40   nextTag   last member tag handed out
	//	+48   logSize   bytes of the order log (a power of two)
	//	+56   maxMembers
	//	+64   members[maxMembers], memberSize bytes each
	//	then  order log, logSize bytes: position p at (p mod logSize)
	metaMagic = "tuttiGV1"
	// metaDeleted is the magic of a deleted group's metadata region,
	// listed at FreeMetaAddr until a new group takes it. Its view, tail,
	// msgs, head and nextTag stay as they were (the view one higher) and
	// the new group goes on from them: they never go back, so a process
	// still holding the address under the old name cannot commit a
	// compare of old values against the new group.
	metaDeleted   = "tuttiGVD"
	metaHeader    = 64
	offView       = 8
	offTail       = 16
	offMsgs       = 24
	offHead       = 32
	memberSize    = 256
	memberNameOff = 112
	// MaxIDLen bounds Config.ID so that "ID#incarnation" fits a member slot.
	MaxIDLen = 120

	// A member slot:
	//
	//	+0    tag        unique per group and member life; 0: free slot
	//	+8    inc        membership incarnation (0 without Membership)
	//	+16   joinedView view that admitted the member (rank: oldest first)
	//	+24   qMemnode   the member's queue region (client.Region)
	//	+32   qAddr
	//	+40   qLen
	//	+48   dLog       delivered order-log position (published for GC)
	//	+56   dMsg       delivered message position (published for Stability)
	//	+64   stStatus   state transfer to this member: stPending..stFreeing
	//	+72   stMemnode  state region
	//	+80   stAddr
	//	+88   stLen      state bytes (region length is rounded up)
	//	+96   retiredAt  0 while a member; else the log position of the view
	//	                 record that removed it (the slot is freed, and the
	//	                 queue reclaimed, once head passes it); positions
	//	                 are 8-aligned and the low bit, retiredLeft, marks
	//	                 a graceful Leave (see gc.go); bit 1,
	//	                 retiredFreeing, that the queue is being freed
	//	+104  nameLen
	//	+112  name       [144]byte "ID#incarnation"
	offDLog    = 48
	offStState = 64
	offRetired = 96

	// Order records (8-byte aligned, at position p of the log):
	//
	//	+0   pos      p (a reader checks it: a stale slot holds another)
	//	+8   size     u32 record bytes, a multiple of 8
	//	+12  kind     u8: recInline, recRef, recView
	//	+14  slot     u16 sender's member slot (batches)
	//	+16  view     view id the record belongs to (view records: the new id)
	//	+24  msgBase  messages ordered before this record
	//	+32  tag      sender's member tag (batches)
	//	+40  firstSeq sender's sequence number of the first message
	//	+48  count    u32 messages; +52 u32 body bytes
	//	+56  body     inline: messages (u32 len, payload)...
	//	              ref: qMemnode, qAddr, qLen, qPos, bytes (u64 each):
	//	                   the batch blob in the sender's queue ring
	//	              view: encoded view (encodeView)
	recHeader = 56
	recInline = 1
	recRef    = 2
	recView   = 3

	// A batch blob in a member's queue ring (at queue position q):
	//
	//	+0   q        u64 (checked by readers)
	//	+8   size     u32 blob bytes (a multiple of 8, ORed with
	//	              blobSealed); +12 count u32
	//	+16  tag      sender's member tag
	//	+24  firstSeq
	//	+32  messages (u32 len, payload)..., zeros to a multiple of 8
	//	size-8       sealed: CRC-32C of the bytes before it (u32), 0 (u32)
	blobHeader  = 32
	blobTrailer = 8
	// blobSealed marks a blob that ends in its checksum (blobTrailer).
	// Writers before it wrote a size with the low bits clear and no
	// trailer; their blobs are checked by their header alone.
	blobSealed = 1
)

// State transfer status of a member slot.
const (
	stPending  = 0 // nothing written yet
	stReady    = 1 // stMemnode/stAddr/stLen hold the state
	stNone     = 2 // the provider has no Snapshot: nothing to restore
	stFailed   = 3 // the provider's Snapshot failed
	stConsumed = 4 // the joiner restored and freed the region
	stFreeing  = 5 // the region is being freed: its first word is freeMarker
)

// freeMarker is what the first word of a member's queue (its fence) or
// state region (its length) holds while the region is being freed, between
// the minitransaction that marks the slot and the one that frees the region
// (reclaim). The top bit set, it is neither a tag, a state length nor a
// metadata magic, so once the region is freed (the free zeroes the word)
// and allocated again, a late retry of the free cannot match it.
func freeMarker(tag uint64) []byte { return le.AppendUint64(nil, 1<<63|tag) }

// queueFence is the first word of a member's queue while the member owns
// it, compared by each of its queue writes: its tag mixed with the group's
// identity (home memnode and metadata address, which a group never shares
// with another, and whose counters a reused metadata region continues),
// with the top bit clear (never a freeMarker) and never zero. Tags alone
// repeat across groups (each counts from 1) and a freed queue block soon
// goes to the next Alloc of its size on that memnode, often another
// group's member with the same small tag: a removed member still retrying
// a queue write then passed the fence compare and wrote into the new
// owner's ring.
func queueFence(ref groupRef, tag uint64) []byte {
	x := ref.home*0x9e3779b97f4a7c15 ^ ref.meta*0xbf58476d1ce4e5b9
	x ^= x >> 31
	x *= 0x94d049bb133111eb
	x ^= x >> 29
	f := (x ^ tag) &^ (1 << 63)
	if f == 0 {
		f = 1
	}
	return le.AppendUint64(nil, f)
}

var le = binary.LittleEndian

func putU64s(b []byte, vs ...uint64) {
	for i, v := range vs {
		le.PutUint64(b[i*8:], v)
	}
}

func u64(b []byte, off int) uint64 { return le.Uint64(b[off:]) }

func align8(n int) int { return (n + 7) &^ 7 }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// newBlob returns a sealed blob for batch (count messages, size encoded
// bytes) at queue position q: header, messages, checksum.
func newBlob(q, tag, firstSeq uint64, batch []*sendReq, size int) []byte {
	blob := make([]byte, align8(blobHeader+size)+blobTrailer)
	putU64s(blob, q)
	le.PutUint32(blob[8:], uint32(len(blob))|blobSealed)
	le.PutUint32(blob[12:], uint32(len(batch)))
	putU64s(blob[16:], tag, firstSeq)
	encodeBatch(blob[blobHeader:blobHeader], batch)
	end := len(blob) - blobTrailer
	le.PutUint32(blob[end:], crc32.Checksum(blob[:end], castagnoli))
	return blob
}

// checkBlob returns the batch body of blob b read at queue position q for
// the record of (tag, firstSeq), or an error if the queue no longer holds
// that blob whole. The header alone does not tell: queue writes overwrite
// a trimmed region from its start, but two queue writes in flight may
// commit out of order (the first retried), so a reader that fell behind
// the trimmed log without knowing it yet could find the old header before
// a newer blob's tail over the rest. The checksum tells.
func checkBlob(b []byte, q, tag, firstSeq uint64) ([]byte, error) {
	if len(b) < blobHeader || u64(b, 0) != q || u64(b, 16) != tag || u64(b, 24) != firstSeq {
		return nil, fmt.Errorf("%w: queue position %d no longer holds the batch (reclaimed)", ErrCorrupt, q)
	}
	if size := le.Uint32(b[8:]); size&blobSealed != 0 {
		end := len(b) - blobTrailer
		if int(size&^7) != len(b) || end < blobHeader || le.Uint32(b[end:]) != crc32.Checksum(b[:end], castagnoli) {
			return nil, fmt.Errorf("%w: queue position %d no longer holds the batch whole (overwritten)", ErrCorrupt, q)
		}
	}
	return b[blobHeader:], nil
}

// hashName is FNV-1a of s.
func hashName(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// homeOf picks the home memnode of group among memnodes (sorted).
func homeOf(group string, memnodes []uint64) uint64 {
	ms := append([]uint64(nil), memnodes...)
	sort.Slice(ms, func(i, j int) bool { return ms[i] < ms[j] })
	return ms[hashName(group)%uint64(len(ms))]
}

// header is the fixed part of a group's metadata.
type header struct {
	view, tail, msgs, head, nextTag, logSize, maxMembers uint64
}

func decodeHeader(b []byte) (header, error) {
	if string(b[:8]) == metaDeleted {
		return header{}, fmt.Errorf("%w: deleted", ErrNoGroup)
	}
	if string(b[:8]) != metaMagic {
		return header{}, fmt.Errorf("%w: bad group metadata magic %q", ErrCorrupt, b[:8])
	}
	return header{view: u64(b, 8), tail: u64(b, 16), msgs: u64(b, 24), head: u64(b, 32),
		nextTag: u64(b, 40), logSize: u64(b, 48), maxMembers: u64(b, 56)}, nil
}

func (h header) encode() []byte {
	b := make([]byte, metaHeader)
	copy(b, metaMagic)
	putU64s(b[8:], h.view, h.tail, h.msgs, h.head, h.nextTag, h.logSize, h.maxMembers)
	return b
}

// member is one decoded member slot.
type member struct {
	slot                    int
	tag, inc, joinedView    uint64
	qMemnode, qAddr, qLen   uint64
	dLog, dMsg              uint64
	stStatus                uint64
	stMemnode, stAddr, stLn uint64
	retiredAt               uint64
	name                    string
}

func (m member) active() bool { return m.tag != 0 && m.retiredAt == 0 }

// holds reports whether slot content m is member o's: its tag and queue
// (a tag is placed once, with its queue).
func (m member) holds(o member) bool {
	return m.tag == o.tag && m.qMemnode == o.qMemnode && m.qAddr == o.qAddr
}

func decodeMember(slot int, b []byte) member {
	m := member{slot: slot, tag: u64(b, 0), inc: u64(b, 8), joinedView: u64(b, 16),
		qMemnode: u64(b, 24), qAddr: u64(b, 32), qLen: u64(b, 40), dLog: u64(b, 48), dMsg: u64(b, 56),
		stStatus: u64(b, 64), stMemnode: u64(b, 72), stAddr: u64(b, 80), stLn: u64(b, 88), retiredAt: u64(b, 96)}
	n := min(int(u64(b, 104)), memberSize-memberNameOff)
	m.name = string(b[memberNameOff : memberNameOff+n])
	return m
}

func (m member) encode() []byte {
	b := make([]byte, memberSize)
	putU64s(b, m.tag, m.inc, m.joinedView, m.qMemnode, m.qAddr, m.qLen, m.dLog, m.dMsg,
		m.stStatus, m.stMemnode, m.stAddr, m.stLn, m.retiredAt, uint64(len(m.name)))
	copy(b[memberNameOff:], m.name)
	return b
}

// rankLess orders members oldest first: by the view that admitted them,
// then by slot.
func rankLess(a, b member) bool {
	if a.joinedView != b.joinedView {
		return a.joinedView < b.joinedView
	}
	return a.slot < b.slot
}

// metaState is a decoded metadata read: header and member slots.
type metaState struct {
	h       header
	members []member
}

func decodeMeta(b []byte) (metaState, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return metaState{}, err
	}
	if uint64(len(b)) < metaHeader+h.maxMembers*memberSize {
		return metaState{}, fmt.Errorf("%w: short metadata read", ErrCorrupt)
	}
	ms := metaState{h: h}
	for i := 0; i < int(h.maxMembers); i++ {
		off := metaHeader + i*memberSize
		ms.members = append(ms.members, decodeMember(i, b[off:off+memberSize]))
	}
	return ms, nil
}

// active returns the current members in rank order.
func (ms metaState) active() []member {
	var out []member
	for _, m := range ms.members {
		if m.active() {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return rankLess(out[i], out[j]) })
	return out
}

func (ms metaState) byTag(tag uint64) (member, bool) {
	for _, m := range ms.members {
		if m.tag == tag && tag != 0 {
			return m, true
		}
	}
	return member{}, false
}

// record is one decoded order record.
type record struct {
	pos      uint64
	size     int
	kind     byte
	slot     int
	view     uint64
	msgBase  uint64
	tag      uint64
	firstSeq uint64
	count    int
	body     []byte
}

func (r record) encode() []byte {
	size := align8(recHeader + len(r.body))
	b := make([]byte, size)
	putU64s(b, r.pos)
	le.PutUint32(b[8:], uint32(size))
	b[12] = r.kind
	le.PutUint16(b[14:], uint16(r.slot))
	putU64s(b[16:], r.view, r.msgBase, r.tag, r.firstSeq)
	le.PutUint32(b[48:], uint32(r.count))
	le.PutUint32(b[52:], uint32(len(r.body)))
	copy(b[recHeader:], r.body)
	return b
}

var errShortRecord = errors.New("record continues past the bytes read")

// decodeRecord decodes the record at the start of b, expected at pos.
func decodeRecord(b []byte, pos uint64) (record, error) {
	if len(b) < recHeader {
		return record{}, errShortRecord
	}
	r := record{pos: u64(b, 0), size: int(le.Uint32(b[8:])), kind: b[12], slot: int(le.Uint16(b[14:])),
		view: u64(b, 16), msgBase: u64(b, 24), tag: u64(b, 32), firstSeq: u64(b, 40), count: int(le.Uint32(b[48:]))}
	if r.pos != pos {
		return record{}, fmt.Errorf("%w: log position %d holds a record of position %d (overwritten)", ErrCorrupt, pos, r.pos)
	}
	bl := int(le.Uint32(b[52:]))
	if r.size < recHeader || r.size%8 != 0 || recHeader+bl > r.size {
		return record{}, fmt.Errorf("%w: bad record at %d (size %d, body %d)", ErrCorrupt, pos, r.size, bl)
	}
	if len(b) < r.size {
		return record{}, errShortRecord
	}
	r.body = b[recHeader : recHeader+bl]
	return r, nil
}

// decodeMsgs decodes count messages of a batch body, each (u32 len,
// bytes), as encodeBatch writes them.
func decodeMsgs(b []byte, count int) ([][]byte, error) {
	out := make([][]byte, 0, count)
	for i := 0; i < count; i++ {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: truncated batch", ErrCorrupt)
		}
		n := int(le.Uint32(b))
		if len(b) < 4+n {
			return nil, fmt.Errorf("%w: truncated message", ErrCorrupt)
		}
		out = append(out, b[4:4+n:4+n])
		b = b[4+n:]
	}
	return out, nil
}

// refBody is the body of a recRef record.
type refBody struct{ qMemnode, qAddr, qLen, qPos, bytes uint64 }

func (r refBody) encode() []byte {
	b := make([]byte, 40)
	putU64s(b, r.qMemnode, r.qAddr, r.qLen, r.qPos, r.bytes)
	return b
}

func decodeRef(b []byte) (refBody, error) {
	if len(b) < 40 {
		return refBody{}, fmt.Errorf("%w: short ref record", ErrCorrupt)
	}
	return refBody{u64(b, 0), u64(b, 8), u64(b, 16), u64(b, 24), u64(b, 32)}, nil
}

// viewBody is the body of a recView record.
type viewBody struct {
	members []viewMember // rank order
	joined  []string
	left    []string
	reason  string
	// provider is the tag of the member that transfers state to joiner
	// (0: no transfer).
	provider, joiner uint64
}

type viewMember struct {
	slot int
	tag  uint64
	name string
}

func appendStr(b []byte, s string) []byte {
	b = le.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func (v viewBody) encode() []byte {
	var b []byte
	b = le.AppendUint64(b, v.provider)
	b = le.AppendUint64(b, v.joiner)
	b = le.AppendUint16(b, uint16(len(v.members)))
	for _, m := range v.members {
		b = le.AppendUint16(b, uint16(m.slot))
		b = le.AppendUint64(b, m.tag)
		b = appendStr(b, m.name)
	}
	for _, l := range [][]string{v.joined, v.left} {
		b = le.AppendUint16(b, uint16(len(l)))
		for _, s := range l {
			b = appendStr(b, s)
		}
	}
	return appendStr(b, v.reason)
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) need(n int) bool {
	if d.err == nil && len(d.b) < n {
		d.err = fmt.Errorf("%w: truncated view record", ErrCorrupt)
	}
	return d.err == nil
}

func (d *decoder) u16() int {
	if !d.need(2) {
		return 0
	}
	v := le.Uint16(d.b)
	d.b = d.b[2:]
	return int(v)
}

func (d *decoder) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	v := le.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) str() string {
	n := d.u16()
	if !d.need(n) {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func decodeView(b []byte) (viewBody, error) {
	d := &decoder{b: b}
	v := viewBody{provider: d.u64(), joiner: d.u64()}
	n := d.u16()
	for i := 0; i < n && d.err == nil; i++ {
		v.members = append(v.members, viewMember{slot: d.u16(), tag: d.u64(), name: d.str()})
	}
	for _, l := range []*[]string{&v.joined, &v.left} {
		n := d.u16()
		for i := 0; i < n && d.err == nil; i++ {
			*l = append(*l, d.str())
		}
	}
	v.reason = d.str()
	return v, d.err
}

// ringItem is one contiguous piece of a ring access.
type ringItem struct{ addr, n uint64 }

// ringSplit splits [pos, pos+n) of a ring of size bytes at base into at
// most two contiguous pieces.
func ringSplit(base, size, pos, n uint64) []ringItem {
	off := pos % size
	if off+n <= size {
		return []ringItem{{base + off, n}}
	}
	first := size - off
	return []ringItem{{base + off, first}, {base, n - first}}
}

// chunkItems splits items into pieces of at most limit bytes: the
// cluster's limit on one read or write item (Node.itemMax).
func chunkItems(items []ringItem, limit uint64) []ringItem {
	var out []ringItem
	for _, it := range items {
		for it.n > limit {
			out = append(out, ringItem{it.addr, limit})
			it.addr, it.n = it.addr+limit, it.n-limit
		}
		out = append(out, it)
	}
	return out
}

// joinReads concatenates the reads of one ring access (one copy only if
// it took several items).
func joinReads(rs [][]byte) []byte {
	if len(rs) == 1 {
		return rs[0]
	}
	return bytes.Join(rs, nil)
}
