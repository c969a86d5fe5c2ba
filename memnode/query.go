package memnode

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Inspection queries: read-only questions about the participant's state
// (not about its address space), answered like a read-only minitransaction
// after a Raft ReadIndex, so the answer is linearizable. Recovery uses them
// to find in-doubt tids; operators and tests use them to watch the sets'
// sizes.
//
// A query starts with a tag byte. Tag 0x01 is a read-only minitransaction
// (AppendQuery; the tag doubles as its format version, so existing queries
// decode unchanged); tag 0x02 is an inspection:
//
//	query   = 0x01 now:varint op            read-only minitransaction
//	        | 0x02 what:byte                inspection (Inspect)
//	indoubt = 0x02 0x01 clock:varint (tid participants:uvarint* preparedAt:varint)*
//	stats   = 0x02 0x02 pages:uvarint locks:uvarint indoubt:uvarint forced:uvarint decided:uvarint now:varint
//
// An inspection's answer starts with the same two bytes as its query; a
// query that cannot be answered gets an ordinary result (leading 0x01) with
// Err set, which the Decode functions below return as their error. Tags and
// Inspect values are append-only.
const (
	queryTagTx      = queryVersion // 0x01: read-only minitransaction
	queryTagInspect = 2            // 0x02: inspection
)

// Inspect names an inspection query.
type Inspect uint8

const (
	// InspectInDoubt lists the in-doubt transactions (Memnode.InDoubt) and
	// the memnode clock.
	InspectInDoubt Inspect = 1
	// InspectStats returns Memnode.Stats.
	InspectStats Inspect = 2
)

// AppendInspect appends the encoding of inspection query what.
func AppendInspect(dst []byte, what Inspect) []byte {
	return append(dst, queryTagInspect, byte(what))
}

// Answer answers any encoded query (AppendQuery or AppendInspect) against
// the current state and returns the encoded answer: an encoded Result for a
// read-only minitransaction or an undecodable query, the inspection's
// encoding otherwise. It changes nothing and never panics.
func (m *Memnode) Answer(q []byte) []byte { return m.AnswerInto(q, nil) }

// AnswerInto is Answer with the buffer of an answer that carries read data
// from alloc (if not nil): alloc(n) returns an empty slice of capacity at
// least n, e.g. from a pool, so the read data is not first zeroed in a
// fresh allocation. Once done with the answer, the caller may recycle it.
func (m *Memnode) AnswerInto(q []byte, alloc func(n int) []byte) []byte {
	if len(q) == 2 && q[0] == queryTagInspect {
		switch Inspect(q[1]) {
		case InspectInDoubt:
			return AppendInDoubt(nil, m.clock, m.InDoubt())
		case InspectStats:
			return AppendStats(nil, m.Stats())
		}
		r := invalid(fmt.Errorf("%w: unknown inspection %d", ErrInvalid, q[1]))
		return AppendResult(nil, &r)
	}
	now, op, err := DecodeQuery(q)
	if err != nil {
		r := invalid(fmt.Errorf("%w: %v", ErrInvalid, err))
		return AppendResult(nil, &r)
	}
	return m.appendQuery(nil, now, &op, alloc)
}

// appendQuery appends AppendResult(Query(now, op)), reading the read items
// from memory straight into the encoding: a read (a gcs blob, up to
// megabytes) is copied once here, not into Result.Reads and then again.
// If dst lacks room for them, the room comes from alloc (nil: a fresh
// allocation).
func (m *Memnode) appendQuery(dst []byte, now int64, op *Op, alloc func(n int) []byte) []byte {
	r := m.queryVote(now, op)
	if !queryReads(&r) || len(op.Reads) == 0 {
		return AppendResult(dst, &r)
	}
	n := 4 + binary.MaxVarintLen64*(2+len(op.Reads))
	for _, rd := range op.Reads {
		n += int(rd.Len)
	}
	if alloc != nil && cap(dst)-len(dst) < n {
		dst = append(alloc(len(dst)+n), dst...)
	}
	dst = slices.Grow(dst, n) // a no-op if alloc gave the room
	dst = appendResultHead(dst, &r)
	dst = binary.AppendUvarint(dst, uint64(len(op.Reads)))
	for _, rd := range op.Reads {
		dst = binary.AppendUvarint(dst, uint64(rd.Len))
		at := len(dst)
		dst = dst[:at+int(rd.Len)] // within the capacity grown above
		m.mem.readInto(dst[at:], rd.Addr)
	}
	return dst
}

// AppendInDoubt appends the answer to InspectInDoubt.
func AppendInDoubt(dst []byte, clock int64, txs []InDoubtTx) []byte {
	dst = append(dst, queryTagInspect, byte(InspectInDoubt))
	dst = binary.AppendVarint(dst, clock)
	dst = binary.AppendUvarint(dst, uint64(len(txs)))
	for _, t := range txs {
		dst = appendTID(dst, t.TID)
		dst = binary.AppendUvarint(dst, uint64(len(t.Participants)))
		for _, p := range t.Participants {
			dst = binary.AppendUvarint(dst, p)
		}
		dst = binary.AppendVarint(dst, t.PreparedAt)
	}
	return dst
}

// DecodeInDoubt decodes an answer to InspectInDoubt: the memnode clock and
// the in-doubt transactions. An answer that is an error result returns that
// error (wrapping ErrInvalid). Other errors wrap ErrCorrupt or ErrVersion.
// The result does not alias b.
func DecodeInDoubt(b []byte) (clock int64, txs []InDoubtTx, err error) {
	d, err := inspectDecoder(b, InspectInDoubt, "in-doubt listing")
	if d == nil {
		return 0, nil, err
	}
	clock = d.varint()
	// A transaction takes at least 5 bytes: tid (3), count (1), time (1).
	if n := d.count(5); n > 0 {
		txs = make([]InDoubtTx, n)
		for i := range txs {
			txs[i].TID = d.tid()
			if np := d.count(1); np > 0 {
				txs[i].Participants = make([]uint64, np)
				for j := range txs[i].Participants {
					txs[i].Participants[j] = d.uvarint()
				}
			}
			txs[i].PreparedAt = d.varint()
		}
	}
	if err := d.finish(); err != nil {
		return 0, nil, err
	}
	return clock, txs, nil
}

// AppendStats appends the answer to InspectStats.
func AppendStats(dst []byte, s Stats) []byte {
	dst = slices.Grow(dst, 2+6*binary.MaxVarintLen64)
	dst = append(dst, queryTagInspect, byte(InspectStats))
	for _, v := range []int{s.Pages, s.Locks, s.InDoubt, s.ForcedAbort, s.Decided} {
		dst = binary.AppendUvarint(dst, uint64(v))
	}
	return binary.AppendVarint(dst, s.Now)
}

// DecodeStats decodes an answer to InspectStats, with DecodeInDoubt's error
// rules.
func DecodeStats(b []byte) (Stats, error) {
	d, err := inspectDecoder(b, InspectStats, "stats")
	if d == nil {
		return Stats{}, err
	}
	var s Stats
	for _, p := range []*int{&s.Pages, &s.Locks, &s.InDoubt, &s.ForcedAbort, &s.Decided} {
		v := d.uvarint()
		if v > uint64(int(^uint(0)>>1)) {
			d.fail("count %d overflows int", v)
		}
		*p = int(v)
	}
	s.Now = d.varint()
	if err := d.finish(); err != nil {
		return Stats{}, err
	}
	return s, nil
}

// inspectDecoder checks an inspection answer's two leading bytes and
// returns a decoder positioned after them, or nil and the error (an error
// result's own error, or a corrupt or version error).
func inspectDecoder(b []byte, what Inspect, name string) (*decoder, error) {
	if len(b) > 0 && b[0] == resultVersion {
		r, err := DecodeResult(b)
		if err != nil {
			return nil, err
		}
		if r.Err != nil {
			return nil, r.Err
		}
		return nil, fmt.Errorf("%w: %s: got a result without error", ErrCorrupt, name)
	}
	d := &decoder{b: b, what: name}
	if !d.version(queryTagInspect) {
		return nil, d.finish()
	}
	if k := d.byte(); d.err == nil && Inspect(k) != what {
		d.fail("answer to inspection %d, want %d", k, what)
	}
	if d.err != nil {
		return nil, d.err
	}
	return d, nil
}
