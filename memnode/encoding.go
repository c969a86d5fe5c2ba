package memnode

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

// Wire formats of entries (the Raft log), queries and results. Each starts
// with a version byte; integers are uvarints (signed ones zig-zag varints);
// byte strings are a uvarint length then the bytes. Decoders accept only the
// canonical encoding (minimal varints, no trailing bytes), so
// Append(Decode(b)) == b whenever Decode succeeds.
//
//	entry  = 0x01 kind:byte now:varint tid participants:uvarint* op
//	       | 0x02 kind:byte now:varint tid participants:uvarint* op more:tid*   (more non-empty)
//	       | 0x03 kind:byte now:varint tid participants:uvarint* op more:tid*
//	              commits:tid* aborts:tid*                          (commits or aborts non-empty)
//	       | 0x04 ... as 0x03 ... fences:tid*                       (fences non-empty)
//	       | 0x05 ... as 0x04 ... fences:tid* appends:append* relocs:reloc*
//	                                                                (appends or relocs non-empty)
//	query  = 0x01 now:varint op
//	result = 0x01 vote:byte failed:varint outcome:byte err reads:bytes*
//	       | 0x02 vote:byte failed:varint outcome:byte err reads:bytes*
//	              appended:(tail:uvarint count:uvarint)*            (appended non-empty)
//	append = tail:uvarint head:uvarint limit:uvarint ring:uvarint size:uvarint
//	         count:uvarint add:uvarint data:bytes
//	reloc  = append:uvarint flags:byte item:uvarint off:uvarint    (flags: 1 count, 2 write)
//	tid    = client:uvarint seq:uvarint time:varint
//	op     = compares:(addr:uvarint data:bytes)* reads:(addr:uvarint len:uvarint)* writes:(addr:uvarint data:bytes)*
//	err    = 0x00 | 0x01 message:bytes
//
// where x* is a uvarint count followed by that many x.
const (
	entryVersion   = 1
	entryVersion2  = 2 // entryVersion with Entry.More
	entryVersion3  = 3 // entryVersion2 with Entry.Commits and Entry.Aborts
	entryVersion4  = 4 // entryVersion3 with Entry.Fences
	entryVersion5  = 5 // entryVersion4 with Op.Appends and Op.Relocs
	queryVersion   = 1
	resultVersion  = 1
	resultVersion2 = 2 // resultVersion with Result.Appended
)

// EntrySizeBound bounds the length of e's encoding (AppendEntry): with
// that much room in dst, AppendEntry allocates nothing.
func EntrySizeBound(e *Entry) int {
	return 3 + 3*binary.MaxVarintLen64 + len(e.Participants)*binary.MaxVarintLen64 + opSize(&e.Op) +
		(4+(len(e.More)+len(e.Commits)+len(e.Aborts)+len(e.Fences))*3)*binary.MaxVarintLen64 +
		appendsSize(&e.Op)
}

// AppendEntry appends the encoding of e to dst.
func AppendEntry(dst []byte, e *Entry) []byte {
	dst = slices.Grow(dst, EntrySizeBound(e))
	v := byte(entryVersion)
	switch {
	case len(e.Op.Appends) > 0 || len(e.Op.Relocs) > 0:
		v = entryVersion5
	case len(e.Fences) > 0:
		v = entryVersion4
	case len(e.Commits) > 0 || len(e.Aborts) > 0:
		v = entryVersion3
	case len(e.More) > 0:
		v = entryVersion2
	}
	dst = append(dst, v, byte(e.Kind))
	dst = binary.AppendVarint(dst, e.Now)
	dst = appendTID(dst, e.TID)
	dst = binary.AppendUvarint(dst, uint64(len(e.Participants)))
	for _, p := range e.Participants {
		dst = binary.AppendUvarint(dst, p)
	}
	dst = appendOp(dst, &e.Op)
	if v >= entryVersion2 {
		dst = appendTIDs(dst, e.More)
	}
	if v >= entryVersion3 {
		dst = appendTIDs(dst, e.Commits)
		dst = appendTIDs(dst, e.Aborts)
	}
	if v >= entryVersion4 {
		dst = appendTIDs(dst, e.Fences)
	}
	if v >= entryVersion5 {
		dst = binary.AppendUvarint(dst, uint64(len(e.Op.Appends)))
		for i := range e.Op.Appends {
			a := &e.Op.Appends[i]
			for _, x := range [...]uint64{a.Tail, a.Head, a.Limit, a.Ring, a.Size, a.Count, a.Add} {
				dst = binary.AppendUvarint(dst, x)
			}
			dst = appendBytes(dst, a.Data)
		}
		dst = binary.AppendUvarint(dst, uint64(len(e.Op.Relocs)))
		for _, r := range e.Op.Relocs {
			var flags byte
			if r.Count {
				flags |= relocCount
			}
			if r.Write {
				flags |= relocWrite
			}
			dst = binary.AppendUvarint(dst, uint64(r.Append))
			dst = append(dst, flags)
			dst = binary.AppendUvarint(dst, uint64(r.Item))
			dst = binary.AppendUvarint(dst, uint64(r.Off))
		}
	}
	return dst
}

// Reloc flags in the entry encoding.
const (
	relocCount = 1
	relocWrite = 2
)

// appendsSize bounds the encoded size of op's appends and relocs.
func appendsSize(op *Op) int {
	n := 2*binary.MaxVarintLen64 + len(op.Relocs)*(1+3*binary.MaxVarintLen64)
	for i := range op.Appends {
		n += 8*binary.MaxVarintLen64 + len(op.Appends[i].Data)
	}
	return n
}

func appendTIDs(dst []byte, ts []TID) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(ts)))
	for _, t := range ts {
		dst = appendTID(dst, t)
	}
	return dst
}

// DecodeEntry decodes an entry encoded by AppendEntry. The entry's byte
// slices alias b. Errors wrap ErrCorrupt or ErrVersion.
func DecodeEntry(b []byte) (Entry, error) {
	var e Entry
	if err := DecodeEntryReuse(&e, b); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// DecodeEntryReuse is DecodeEntry into *e, reusing the capacity of e's
// slices: an apply loop that decodes every entry into the same Entry
// allocates nothing for it in the steady state. What e held before is
// overwritten (its slices' elements too); on error e is unspecified.
func DecodeEntryReuse(e *Entry, b []byte) error {
	d := decoder{b: b, what: "entry"}
	*e = Entry{Participants: e.Participants[:0], Op: Op{Compares: e.Op.Compares[:0], Reads: e.Op.Reads[:0],
		Writes: e.Op.Writes[:0], Appends: e.Op.Appends[:0], Relocs: e.Op.Relocs[:0]}, More: e.More[:0], Commits: e.Commits[:0], Aborts: e.Aborts[:0],
		Fences: e.Fences[:0]}
	v := byte(entryVersion)
	if len(b) > 0 && b[0] >= entryVersion2 && b[0] <= entryVersion5 {
		v = b[0]
	}
	if d.version(v) {
		e.Kind = Kind(d.byte())
		e.Now = d.varint()
		e.TID = d.tid()
		if n := d.count(1); n > 0 {
			e.Participants = resize(e.Participants, n)
			for i := range e.Participants {
				e.Participants[i] = d.uvarint()
			}
		}
		d.op(&e.Op)
		if v >= entryVersion2 {
			e.More = d.tidsInto(e.More)
			if v == entryVersion2 && len(e.More) == 0 && d.err == nil {
				d.fail("version 2 without more tids")
			}
		}
		if v >= entryVersion3 {
			e.Commits = d.tidsInto(e.Commits)
			e.Aborts = d.tidsInto(e.Aborts)
			if v == entryVersion3 && len(e.Commits) == 0 && len(e.Aborts) == 0 && d.err == nil {
				d.fail("version 3 without commits or aborts")
			}
		}
		if v >= entryVersion4 {
			e.Fences = d.tidsInto(e.Fences)
			if v == entryVersion4 && len(e.Fences) == 0 && d.err == nil {
				d.fail("version 4 without fences")
			}
		}
		if v >= entryVersion5 {
			d.appends(&e.Op)
			if len(e.Op.Appends) == 0 && len(e.Op.Relocs) == 0 && d.err == nil {
				d.fail("version 5 without appends or relocs")
			}
		}
	}
	return d.finish()
}

// resize returns s with length n, reallocated only if its capacity is short.
func resize[T any](s []T, n int) []T {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]T, n)
}

// AppendQuery appends the encoding of a read-only request at the reader's
// clock now.
func AppendQuery(dst []byte, now int64, op *Op) []byte {
	dst = slices.Grow(dst, 1+binary.MaxVarintLen64+opSize(op))
	dst = append(dst, queryVersion)
	dst = binary.AppendVarint(dst, now)
	return appendOp(dst, op)
}

// DecodeQuery decodes what AppendQuery encoded. The op's byte slices alias
// b. Errors wrap ErrCorrupt or ErrVersion.
func DecodeQuery(b []byte) (now int64, op Op, err error) {
	d := decoder{b: b, what: "query"}
	if d.version(queryVersion) {
		now = d.varint()
		d.op(&op)
	}
	if err := d.finish(); err != nil {
		return 0, Op{}, err
	}
	return now, op, nil
}

// AppendResult appends the encoding of r. Result.Err crosses as its
// message.
func AppendResult(dst []byte, r *Result) []byte {
	n := 4 + binary.MaxVarintLen64*(3+len(r.Reads)+2*len(r.Appended))
	for _, rd := range r.Reads {
		n += len(rd)
	}
	dst = slices.Grow(dst, n)
	dst = appendResultHead(dst, r)
	dst = binary.AppendUvarint(dst, uint64(len(r.Reads)))
	for _, rd := range r.Reads {
		dst = appendBytes(dst, rd)
	}
	if len(r.Appended) > 0 {
		dst = binary.AppendUvarint(dst, uint64(len(r.Appended)))
		for _, a := range r.Appended {
			dst = binary.AppendUvarint(dst, a.Tail)
			dst = binary.AppendUvarint(dst, a.Count)
		}
	}
	return dst
}

// appendResultHead appends what AppendResult writes before the reads.
func appendResultHead(dst []byte, r *Result) []byte {
	v := byte(resultVersion)
	if len(r.Appended) > 0 {
		v = resultVersion2
	}
	dst = append(dst, v, byte(r.Vote))
	dst = binary.AppendVarint(dst, int64(r.FailedCompare))
	dst = append(dst, byte(r.Outcome))
	if r.Err != nil {
		dst = append(dst, 1)
		dst = appendBytes(dst, []byte(r.Err.Error()))
	} else {
		dst = append(dst, 0)
	}
	return dst
}

// DecodeResult decodes what AppendResult encoded. Reads alias b. A
// decoded Err has the original message and satisfies
// errors.Is(err, ErrInvalid). Errors wrap ErrCorrupt or ErrVersion.
func DecodeResult(b []byte) (Result, error) {
	d := decoder{b: b, what: "result"}
	var r Result
	v := byte(resultVersion)
	if len(b) > 0 && b[0] == resultVersion2 {
		v = resultVersion2
	}
	if d.version(v) {
		r.Vote = Vote(d.byte())
		fc := d.varint()
		if fc < math.MinInt32 || fc > math.MaxInt32 {
			d.fail("failed compare index %d out of range", fc)
		}
		r.FailedCompare = int(fc)
		r.Outcome = Outcome(d.byte())
		switch d.byte() {
		case 0:
		case 1:
			r.Err = &remoteError{msg: string(d.bytes())}
		default:
			d.fail("bad error flag")
		}
		if n := d.count(1); n > 0 {
			r.Reads = make([][]byte, n)
			for i := range r.Reads {
				r.Reads[i] = d.bytes()
			}
		}
		if v == resultVersion2 {
			if n := d.count(2); n > 0 {
				r.Appended = make([]Appended, n)
				for i := range r.Appended {
					r.Appended[i] = Appended{Tail: d.uvarint(), Count: d.uvarint()}
				}
			} else if d.err == nil {
				d.fail("version 2 without appended")
			}
		}
	}
	if err := d.finish(); err != nil {
		return Result{}, err
	}
	return r, nil
}

// remoteError is a Result.Err that crossed an encoding. Apply reports only
// invalid requests, so it matches ErrInvalid.
type remoteError struct{ msg string }

func (e *remoteError) Error() string        { return e.msg }
func (e *remoteError) Is(target error) bool { return target == ErrInvalid }

func opSize(op *Op) int {
	n := 3 + (len(op.Compares)+len(op.Reads)+len(op.Writes))*2*binary.MaxVarintLen64
	for _, c := range op.Compares {
		n += len(c.Data)
	}
	for _, w := range op.Writes {
		n += len(w.Data)
	}
	return n
}

func appendTID(dst []byte, t TID) []byte {
	dst = binary.AppendUvarint(dst, t.Client)
	dst = binary.AppendUvarint(dst, t.Seq)
	return binary.AppendVarint(dst, t.Time)
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func appendOp(dst []byte, op *Op) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(op.Compares)))
	for _, c := range op.Compares {
		dst = binary.AppendUvarint(dst, c.Addr)
		dst = appendBytes(dst, c.Data)
	}
	dst = binary.AppendUvarint(dst, uint64(len(op.Reads)))
	for _, r := range op.Reads {
		dst = binary.AppendUvarint(dst, r.Addr)
		dst = binary.AppendUvarint(dst, uint64(r.Len))
	}
	dst = binary.AppendUvarint(dst, uint64(len(op.Writes)))
	for _, w := range op.Writes {
		dst = binary.AppendUvarint(dst, w.Addr)
		dst = appendBytes(dst, w.Data)
	}
	return dst
}

// decoder reads a canonical encoding. After the first error every read
// returns a zero value, so callers check once, at finish.
type decoder struct {
	b    []byte
	off  int
	what string
	err  error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at byte %d: %s", ErrCorrupt, d.what, d.off, fmt.Sprintf(format, args...))
	}
	d.b = nil
}

// version reads the leading version byte and reports whether it is want.
func (d *decoder) version(want byte) bool {
	if len(d.b) == 0 {
		d.fail("empty")
		return false
	}
	if v := d.b[0]; v != want {
		d.err = fmt.Errorf("%w: %s version %d, want %d", ErrVersion, d.what, v, want)
		d.b = nil
		return false
	}
	d.skip(1)
	return true
}

func (d *decoder) skip(n int) {
	d.b = d.b[n:]
	d.off += n
}

// finish reports the first error, or trailing bytes.
func (d *decoder) finish() error {
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	v := d.b[0]
	d.skip(1)
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	switch {
	case n == 0:
		d.fail("truncated varint")
		return 0
	case n < 0:
		d.fail("varint overflows 64 bits")
		return 0
	case n > 1 && d.b[n-1] == 0:
		d.fail("non-minimal varint")
		return 0
	}
	d.skip(n)
	return v
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

func (d *decoder) tid() TID {
	return TID{Client: d.uvarint(), Seq: d.uvarint(), Time: d.varint()}
}

// tids reads a counted list of tids; nil if empty.
// tidsInto decodes a tid list into dst's capacity (dst[:0] if empty).
func (d *decoder) tidsInto(dst []TID) []TID {
	n := d.count(3)
	if n == 0 {
		return dst[:0]
	}
	ts := resize(dst, n)
	for i := range ts {
		ts[i] = d.tid()
	}
	return ts
}

// count reads an element count; each element takes at least minBytes, so a
// count the remaining input cannot hold is corrupt (and never allocated).
func (d *decoder) count(minBytes int) int {
	n := d.uvarint()
	if n > uint64(len(d.b)/minBytes) {
		d.fail("count %d exceeds the remaining %d bytes", n, len(d.b))
		return 0
	}
	return int(n)
}

// bytes reads a length-prefixed byte string, aliasing the input.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("length %d exceeds the remaining %d bytes", n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.skip(int(n))
	return v
}

// op decodes an Op into op, reusing the capacity of its slices.
func (d *decoder) op(op *Op) {
	if n := d.count(2); n > 0 {
		op.Compares = resize(op.Compares, n)
		for i := range op.Compares {
			op.Compares[i] = Compare{Addr: d.uvarint(), Data: d.bytes()}
		}
	} else {
		op.Compares = op.Compares[:0]
	}
	op.Reads = d.readsInto(op.Reads)
	op.Writes = d.writesInto(op.Writes)
}

// appends decodes the appends and relocs of an entry of version 5 into
// op, reusing the capacity of its slices.
func (d *decoder) appends(op *Op) {
	if n := d.count(8); n > 0 {
		op.Appends = resize(op.Appends, n)
		for i := range op.Appends {
			op.Appends[i] = Append{Tail: d.uvarint(), Head: d.uvarint(), Limit: d.uvarint(), Ring: d.uvarint(),
				Size: d.uvarint(), Count: d.uvarint(), Add: d.uvarint(), Data: d.bytes()}
		}
	} else {
		op.Appends = op.Appends[:0]
	}
	if n := d.count(4); n > 0 {
		op.Relocs = resize(op.Relocs, n)
		for i := range op.Relocs {
			a := d.uvarint()
			flags := d.byte()
			item, off := d.uvarint(), d.uvarint()
			if flags&^(relocCount|relocWrite) != 0 {
				d.fail("reloc %d: bad flags 0x%x", i, flags)
			}
			if a > math.MaxUint32 || item > math.MaxUint32 || off > math.MaxUint32 {
				d.fail("reloc %d: field exceeds 32 bits", i)
			}
			op.Relocs[i] = Reloc{Append: uint32(a), Count: flags&relocCount != 0, Write: flags&relocWrite != 0,
				Item: uint32(item), Off: uint32(off)}
		}
	} else {
		op.Relocs = op.Relocs[:0]
	}
}

func (d *decoder) reads() []Read { return d.readsInto(nil) }

func (d *decoder) readsInto(dst []Read) []Read {
	n := d.count(2)
	if n == 0 {
		return dst[:0]
	}
	rs := resize(dst, n)
	for i := range rs {
		addr := d.uvarint()
		l := d.uvarint()
		if l > math.MaxUint32 {
			d.fail("read length %d exceeds 32 bits", l)
		}
		rs[i] = Read{Addr: addr, Len: uint32(l)}
	}
	return rs
}

func (d *decoder) writes() []Write { return d.writesInto(nil) }

func (d *decoder) writesInto(dst []Write) []Write {
	n := d.count(2)
	if n == 0 {
		return dst[:0]
	}
	ws := resize(dst, n)
	for i := range ws {
		ws[i] = Write{Addr: d.uvarint(), Data: d.bytes()}
	}
	return ws
}
