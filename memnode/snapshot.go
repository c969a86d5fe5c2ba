package memnode

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Snapshot format, version 1. Every version starts with the magic and a
// version byte and ends with the CRC-32C (Castagnoli) of all preceding
// bytes, little-endian. Collections are sorted (pages by number, tids by
// TID.Compare), so equal states have equal snapshots.
//
//	snapshot = "tMNs" 0x01 clock:varint lastSweep:varint
//	           pages:(number:uvarint contents:[4096]byte)*
//	           indoubt:(tid preparedAt:varint participants:uvarint*
//	                    compares:(addr:uvarint len:uvarint)*
//	                    reads:(addr:uvarint len:uvarint)*
//	                    writes:(addr:uvarint data:bytes)*)*
//	           forced:tid* decided:(tid outcome:byte)* crc:[4]byte
//
// Varints and x* are as in encoding.go. Locks are not listed: they are the
// in-doubt transactions' compare, read (shared) and write (exclusive) items.
const (
	snapshotMagic   = "tMNs"
	snapshotVersion = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot encodes the whole state: address space, in-doubt transactions
// (hence locks), forced-abort and decided tids, and the clock.
func (m *Memnode) Snapshot() []byte { return m.AppendSnapshot(nil) }

// AppendSnapshot appends Snapshot() to dst, growing it once if needed: a
// caller that keeps its buffer between snapshots (tens of MiB for a gcs
// memnode) spares allocating, and the kernel's zeroing the pages of, a
// fresh one each time.
func (m *Memnode) AppendSnapshot(dst []byte) []byte {
	b := dst
	if bound := m.snapshotBound(); cap(b)-len(b) < bound {
		b = append(make([]byte, 0, len(b)+bound), b...)
	}
	b = append(b, snapshotMagic...)
	b = append(b, snapshotVersion)
	b = binary.AppendVarint(b, m.clock)
	b = binary.AppendVarint(b, m.lastSweep)

	b = binary.AppendUvarint(b, uint64(m.mem.npages))
	m.mem.eachPage(func(pn uint64, p *page) {
		b = binary.AppendUvarint(b, pn)
		b = append(b, p[:]...)
	})

	b = binary.AppendUvarint(b, uint64(m.inDoubt.len()))
	for _, tid := range sortedTIDs(m.inDoubt.tids) {
		t := m.inDoubt.get(tid)
		b = appendTID(b, tid)
		b = binary.AppendVarint(b, t.preparedAt)
		b = binary.AppendUvarint(b, uint64(len(t.participants)))
		for _, p := range t.participants {
			b = binary.AppendUvarint(b, p)
		}
		b = binary.AppendUvarint(b, uint64(len(t.compares)))
		for _, s := range t.compares {
			b = binary.AppendUvarint(b, s.addr)
			b = binary.AppendUvarint(b, s.n)
		}
		b = binary.AppendUvarint(b, uint64(len(t.reads)))
		for _, r := range t.reads {
			b = binary.AppendUvarint(b, r.Addr)
			b = binary.AppendUvarint(b, uint64(r.Len))
		}
		b = binary.AppendUvarint(b, uint64(len(t.writes)))
		for _, w := range t.writes {
			b = binary.AppendUvarint(b, w.Addr)
			b = appendBytes(b, w.Data)
		}
	}

	b = binary.AppendUvarint(b, uint64(m.recorded.len(recForced)))
	m.recorded.each(func(tid TID, v uint8) {
		if v == recForced {
			b = appendTID(b, tid)
		}
	})

	b = binary.AppendUvarint(b, uint64(m.recorded.len(recCommitted)+m.recorded.len(recAborted)))
	m.recorded.each(func(tid TID, v uint8) {
		if v != recForced {
			b = appendTID(b, tid)
			b = append(b, v)
		}
	})
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// Restore replaces the whole state with a snapshot taken by Snapshot (of a
// Memnode with a compatible Config). On error, which wraps ErrCorrupt or
// ErrVersion, the state is unchanged. Restore keeps no reference to b.
func (m *Memnode) Restore(b []byte) error {
	const minLen = len(snapshotMagic) + 1 + 4
	if len(b) < minLen || string(b[:len(snapshotMagic)]) != snapshotMagic {
		return fmt.Errorf("%w: snapshot: missing header", ErrCorrupt)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return fmt.Errorf("%w: snapshot: checksum 0x%08x, want 0x%08x", ErrCorrupt, got, sum)
	}
	if v := body[len(snapshotMagic)]; v != snapshotVersion {
		return fmt.Errorf("%w: snapshot version %d, want %d", ErrVersion, v, snapshotVersion)
	}
	n, err := New(m.cfg)
	if err != nil {
		return err
	}
	d := decoder{b: body[len(snapshotMagic)+1:], off: len(snapshotMagic) + 1, what: "snapshot"}
	n.decodeState(&d)
	if err := d.finish(); err != nil {
		return err
	}
	*m = *n
	return nil
}

// decodeState fills an empty n from d, checking that the state is one a
// Memnode with n's Config could reach: sorted unique keys, valid ranges,
// non-conflicting locks, disjoint tid sets.
func (n *Memnode) decodeState(d *decoder) {
	n.clock = d.varint()
	n.lastSweep = d.varint()
	if n.lastSweep > n.clock {
		d.fail("last sweep %d after clock %d", n.lastSweep, n.clock)
	}

	if c := d.count(1 + pageSize); c > 0 {
		var prev uint64
		for i := range c {
			pn := d.uvarint()
			switch {
			case i > 0 && pn <= prev:
				d.fail("page %d out of order", pn)
			case pn > (n.cfg.Size-1)>>pageShift:
				d.fail("page %d beyond memnode size 0x%x", pn, n.cfg.Size)
			}
			if d.err != nil {
				return
			}
			p := new(page)
			d.copyPage(p)
			n.mem.setPage(pn, p)
			prev = pn
		}
	}

	var prev TID
	c := d.count(8)
	for i := range c {
		t := n.decodeTxn(d)
		switch {
		case d.err != nil:
			return
		case i > 0 && t.tid.Compare(prev) <= 0:
			d.fail("in-doubt tid %v out of order", t.tid)
			return
		case n.locks.txnConflicts(t):
			d.fail("in-doubt tid %v holds a lock conflicting with another's", t.tid)
			return
		}
		prev = t.tid
		n.locks.acquire(t)
		n.inDoubt.put(t)
	}

	c = d.count(3)
	for i := range c {
		tid := d.tid()
		switch {
		case d.err != nil:
		case i > 0 && tid.Compare(prev) <= 0:
			d.fail("forced-abort tid %v out of order", tid)
		case n.inDoubt.get(tid) != nil:
			d.fail("forced-abort tid %v is in doubt", tid)
		}
		if d.err != nil {
			return
		}
		prev = tid
		n.recorded.set(tid, recForced)
	}

	c = d.count(4)
	for i := range c {
		tid := d.tid()
		o := Outcome(d.byte())
		forced := n.recorded.get(tid) == recForced
		switch {
		case d.err != nil:
		case i > 0 && tid.Compare(prev) <= 0:
			d.fail("decided tid %v out of order", tid)
		case n.inDoubt.get(tid) != nil || forced:
			d.fail("decided tid %v is also in doubt or forced", tid)
		case o != OutcomeCommitted && o != OutcomeAborted:
			d.fail("decided tid %v has outcome %d", tid, o)
		}
		if d.err != nil {
			return
		}
		prev = tid
		n.recorded.set(tid, uint8(o))
	}
}

// decodeTxn reads one in-doubt transaction, copying its write data, and
// checks its items against n's Config.
func (n *Memnode) decodeTxn(d *decoder) *txn {
	t := &txn{tid: d.tid(), preparedAt: d.varint()}
	if c := d.count(1); c > 0 {
		t.participants = make([]uint64, c)
		for i := range t.participants {
			t.participants[i] = d.uvarint()
		}
	}
	if c := d.count(2); c > 0 {
		t.compares = make([]span, c)
		for i := range t.compares {
			t.compares[i] = span{addr: d.uvarint(), n: d.uvarint()}
		}
	}
	t.reads = d.reads()
	t.writes = cloneWrites(d.writes())
	if d.err != nil {
		return nil
	}
	if k := t.itemCount(); k > n.cfg.MaxItems {
		d.fail("in-doubt tid %v: %d items exceed the limit of %d", t.tid, k, n.cfg.MaxItems)
		return nil
	}
	for i, s := range t.compares {
		if err := n.cfg.checkItem("compare", i, s.addr, s.n); err != nil {
			d.fail("in-doubt tid %v: %v", t.tid, err)
			return nil
		}
	}
	if err := n.cfg.ValidateOp(KindPrepare, &Op{Reads: t.reads, Writes: t.writes}); err != nil {
		d.fail("in-doubt tid %v: %v", t.tid, err)
		return nil
	}
	t.locks = txnLocks(nil, t.compares, t.reads, t.writes)
	return t
}

// copyPage copies the next pageSize bytes into p.
func (d *decoder) copyPage(p *page) {
	if len(d.b) < pageSize {
		d.fail("truncated page")
		return
	}
	copy(p[:], d.b)
	d.skip(pageSize)
}

// snapshotBound is an upper bound of len(Snapshot()): the buffer is sized
// once. (It used to count the pages only, so the in-doubt and decided
// sets that follow them made append copy the whole memnode, tens of MiB
// for a gcs memnode, into a buffer a quarter larger, once per snapshot.)
func (m *Memnode) snapshotBound() int {
	const v = binary.MaxVarintLen64
	n := len(snapshotMagic) + 1 + 3*v + m.mem.npages*(pageSize+v)
	n += v
	m.inDoubt.each(func(t *txn) {
		n += 5*v + len(t.participants)*v + 3*v + (len(t.compares)+len(t.reads))*2*v
		for _, w := range t.writes {
			n += 2*v + len(w.Data)
		}
	})
	forced := m.recorded.len(recForced)
	decided := m.recorded.len(recCommitted) + m.recorded.len(recAborted)
	n += v + forced*3*v + v + decided*(3*v+1)
	return n + 4
}
