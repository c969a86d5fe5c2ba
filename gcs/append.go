package gcs

import (
	"context"
	"errors"
	"fmt"

	"github.com/tutti-gcs/tutti/client"
)

// appendRecords adds to tx the append of records (encoded, consecutive,
// each with its position and message base relative to the first: 0 and
// the messages of the records before it) at the tail of ref's order log:
// the home memnode places them at the tail as it applies the link, adds
// the tail and the message counter to every record's position and base
// (relocations), and advances the tail by len(records) and the counter by
// msgs. It refuses (as a failed compare at index compares+0) when the log
// lacks room: more than logRoom(removal) bytes between head and the new
// tail. The append is the first of tx, as relocations of write items
// (relocTail, relocMsgs) assume.
func (r groupRef) appendRecords(tx *client.Tx, records []byte, msgs uint64, removal bool) {
	var relocs []client.Reloc
	eachRecord(records, func(off int) {
		relocs = append(relocs, relocTail(uint32(off)), relocMsgs(uint32(off+24)))
	})
	tx.Append(r.home, client.Append{
		Tail: r.meta + offTail, Count: r.meta + offMsgs, Add: msgs,
		Head: r.meta + offHead, Limit: r.logRoom(removal),
		Ring: r.logBase(), Size: r.logSize,
		Data: records, Relocs: relocs,
	})
}

// Relocations of a write item by the append of appendRecords: the u64 at
// Off gets the tail (the first record's position) or the message counter
// (its message base) added.
func relocTail(off uint32) client.Reloc { return client.Reloc{Off: off} }
func relocMsgs(off uint32) client.Reloc { return client.Reloc{Off: off, Count: true} }

// stampRecords does to records what the memnode did when it appended them
// at pos with msgBase messages before them: adds both to every record's
// relative position and message base.
func stampRecords(records []byte, pos, msgBase uint64) {
	eachRecord(records, func(off int) {
		le.PutUint64(records[off:], le.Uint64(records[off:])+pos)
		le.PutUint64(records[off+24:], le.Uint64(records[off+24:])+msgBase)
	})
}

// eachRecord calls f with the offset of every record of records (encoded,
// consecutive).
func eachRecord(records []byte, f func(off int)) {
	for off := 0; off+recHeader <= len(records); {
		f(off)
		size := int(le.Uint32(records[off+8:]))
		if size <= 0 {
			return
		}
		off += size
	}
}

// settleAppend settles an append of records whose answer was lost
// (attempt, an ErrUnknownOutcome): one logged read of the header that
// also fences the attempt (client.Tx.Fence: an attempt still on its way
// to the leader is refused when it arrives), then the order log from
// from (a tail known before the attempt was sent: a record boundary at
// or below wherever the append went) up to that header's tail, scanned
// for the record match picks. found reports that the attempt committed
// (got is its record, at got.pos); not found, it did not and never will.
// errTrimmed: head had passed from and the log from head on does not
// hold the record: it may be below head, gone from the log. fenced, if
// not nil, receives the header the fenced read returned (after the
// attempt, if it ever applied): a view change that finds the view it
// compared there did not commit.
func (n *Node) settleAppend(ctx context.Context, ref groupRef, from uint64, attempt error, fenced *header, match func(record) bool) (got record, found bool, err error) {
	if settleGivesUp.Load() {
		return record{}, false, fmt.Errorf("failpoint: %w", errUnsettled)
	}
	for range 16 {
		var settled, trimmed bool
		err = n.retry(ctx, func() error {
			if failSettleReads.Load() > 0 && failSettleReads.Add(-1) >= 0 {
				return fmt.Errorf("failpoint: settle read: %w", client.ErrUnavailable)
			}
			res, err := n.settle(ctx, client.NewTx().Read(ref.home, ref.meta, metaHeader), attempt)
			if err != nil {
				return err
			}
			settleReads.Add(1)
			if f := afterSettleRead.Load(); f != nil {
				(*f)()
			}
			h, err := decodeHeader(res.Reads[0])
			if err != nil {
				return fmt.Errorf("%w: %w", client.ErrInvalid, err) // not retried
			}
			if fenced != nil {
				*fenced = h
			}
			// What the log holds in [from, h.tail) stays until head
			// passes it; the records' positions tell if it did. If head
			// passed from already, the log from head on (a record
			// boundary: a delivered position) may still hold it.
			at, partial := from, false
			if h.head > from {
				at, partial = h.head, true
			}
			need := 0 // a record longer than what the last read got: read it whole
			for at < h.tail {
				b, err := n.readRing(ctx, ref, at, max(int(min(h.tail-at, uint64(n.cfg.ReadChunk))), need))
				if err != nil {
					return err
				}
				need = 0
				for len(b) > 0 && at < h.tail {
					rec, err := decodeRecord(b, at)
					if errors.Is(err, errShortRecord) {
						need = recHeader
						if len(b) >= recHeader {
							need = int(le.Uint32(b[8:]))
						}
						if at+uint64(need) <= h.tail {
							break // read on from at
						}
						err = fmt.Errorf("%w: the record at %d runs past the tail %d", ErrCorrupt, at, h.tail)
					}
					if err != nil {
						if cur, herr := n.readHeader(ctx, ref); herr == nil && cur.head > at {
							trimmed = true
							return nil
						}
						return fmt.Errorf("%w: %w", client.ErrInvalid, err)
					}
					if match(rec) {
						got, found, settled = rec, true, true
						return nil
					}
					at += uint64(rec.size)
					b = b[rec.size:]
				}
			}
			settled, trimmed = !partial, partial
			return nil
		})
		switch {
		case err == nil && settled:
			return got, found, nil
		case err == nil && trimmed:
			return record{}, false, fmt.Errorf("%w: %w (position %d)", errUnsettled, errTrimmed, from)
		case ctx.Err() != nil || errors.Is(err, client.ErrInvalid) || errors.Is(err, client.ErrClosed):
			return record{}, false, err
		}
	}
	return record{}, false, fmt.Errorf("%w: %w", errUnsettled, err)
}
