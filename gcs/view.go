package gcs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// reasonLeft is the reason of a member's own removal: its Leave, or the
// abandoning of a slot its failed Join may have placed. Nobody else removes
// a member for it, so a running member removed for it is leaving.
const reasonLeft = "left"

// change is one view change decided from the metadata: at most one joiner,
// any number of removals.
type change struct {
	add      *member
	remove   []member
	reason   string
	provider uint64 // tag of the state provider for add (0: none)
	// graceful marks the removals as Group.Leave: the leavers go on
	// delivering up to this view record, and trimming waits for them
	// (retiredLeft).
	graceful bool
}

// viewOutcome reports a committed view change.
type viewOutcome struct {
	pos, msgs, view, provider uint64 // msgs: messages ordered before the view record
}

// removalBound bounds the record of any later removal from the view a
// join makes (its record recLen bytes long); it must fit in the part of
// the order log kept for removals (logRoom). Multicasts and joins fill at most 7/8 of the log so
// that a removal can always be written, even while a member that stopped
// delivering pins head (only its removal unpins it); a removal record
// larger than that reserve would stall the group for good. A view's
// members are a subset of those of some join's view (removals only
// shrink it), and a removal's record is at most that join's record plus
// its reason ("removed by " and a member's name is the longest; "left"
// and "failed" are shorter): the join's record minus the joiner's entry
// in the joined list, with each removed member's entry (12 bytes and its
// name) replaced by its name in the left list (2 bytes and its name). So
// checking joins bounds every removal.
func removalBound(ms metaState, ch *change, recLen int) uint64 {
	longest := len(ch.add.name)
	for _, m := range ms.active() {
		longest = max(longest, len(m.name))
	}
	return uint64(recLen + len("removed by ") + longest)
}

// planView builds the minitransaction of ch against ms: compare the view,
// write view+1, the joiner's slot and the removed members' retiredAt, and
// append the view record at the tail (appendRecords: the memnode stamps
// its position and message base, and the joiner's delivered positions and
// the removed members' retiredAt, which name it, by relocation). The
// record and its bytes (b) come back relative to its position (pos 0,
// msgBase 0). It is a pure function of its inputs.
func planView(ref groupRef, ms metaState, ch *change) (*client.Tx, record, []byte) {
	h := ms.h
	var members []member
	for _, m := range ms.active() {
		if !containsTag(ch.remove, m.tag) {
			members = append(members, m)
		}
	}
	vb := viewBody{reason: ch.reason, provider: ch.provider}
	if ch.add != nil {
		a := *ch.add
		a.dLog, a.dMsg, a.joinedView = 0, 0, h.view+1 // relocated
		ch.add = &a
		members = append(members, a)
		vb.joined = []string{a.name}
		vb.joiner = a.tag
	}
	sort.Slice(members, func(i, j int) bool { return rankLess(members[i], members[j]) })
	for _, m := range members {
		vb.members = append(vb.members, viewMember{slot: m.slot, tag: m.tag, name: m.name})
	}
	for _, m := range ch.remove {
		vb.left = append(vb.left, m.name)
	}
	rec := record{kind: recView, view: h.view + 1, body: vb.encode()}
	b := rec.encode()
	tx := client.NewTx().Compare(ref.home, ref.meta+offView, le.AppendUint64(nil, h.view))
	ref.appendRecords(tx, b, 0, ch.add == nil)
	tx.Write(ref.home, ref.meta+offView, le.AppendUint64(nil, h.view+1))
	if ch.add != nil {
		tx.Write(ref.home, ref.meta+40, le.AppendUint64(nil, h.nextTag+1))
		tx.WriteReloc(ref.home, ref.slotAddr(ch.add.slot), ch.add.encode(), relocTail(offDLog), relocMsgs(offDLog+8))
	}
	retired := uint64(0)
	if ch.graceful {
		retired |= retiredLeft
	}
	for _, m := range ch.remove {
		tx.WriteReloc(ref.home, ref.slotAddr(m.slot)+offRetired, le.AppendUint64(nil, retired), relocTail(0))
	}
	return tx, rec, b
}

// viewChange reads the metadata, asks decide for a change and commits it,
// again and again until it commits, decide returns nil (nothing to do) or
// an error, or ctx ends. Concurrent view changes and multicasts make the
// compare fail; the loser re-reads and decides again.
func (n *Node) viewChange(ctx context.Context, ref groupRef, decide func(metaState) (*change, error), out *viewOutcome) error {
	wait := time.Millisecond
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		ms, err := n.readMeta(ctx, ref)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNoGroup) || attempt > 20 {
				return err
			}
			if err := sleepCtx(ctx, wait); err != nil {
				return err
			}
			continue
		}
		ch, err := decide(ms)
		if err != nil || ch == nil {
			return err
		}
		var rm []member
		for _, m := range ch.remove {
			if cur := ms.members[m.slot]; cur.tag == m.tag && cur.active() {
				rm = append(rm, cur)
			}
		}
		ch.remove = rm
		if ch.add == nil && len(ch.remove) == 0 {
			return nil
		}
		tx, rec, b := planView(ref, ms, ch)
		if ch.add != nil {
			if need := removalBound(ms, ch, len(b)); need > ref.logSize/8 {
				return fmt.Errorf("%w: with %s a removal from the view could take a %d-byte record, more than the %d bytes the order log keeps for removals (LogCapacity %d / 8): the group's LogCapacity is too small for this many members or names this long",
					ErrGroupFull, ch.add.name, need, ref.logSize/8, ref.logSize)
			}
		}
		res, err := n.execAt(ctx, siteView, tx)
		if err != nil && errors.Is(err, client.ErrUnknownOutcome) {
			// Never decide again before knowing: the change may be in.
			var fh header
			got, committed, serr := n.settleAppend(ctx, ref, ms.h.tail, err, &fh, func(r record) bool {
				return r.kind == recView && r.view == rec.view && bytes.Equal(r.body, rec.body)
			})
			if errors.Is(serr, errTrimmed) && fh.view == ms.h.view {
				// Not in the log from head on, and the view it compared
				// is still the memnode's (fenced): it did not commit.
				committed, serr = false, nil
			}
			if ch.add != nil && (serr == nil && committed || errors.Is(serr, errTrimmed)) {
				// A view record does not name the joiner's queue: two
				// joins from one Node deciding on one header write the
				// same bytes. The slot tells whose commit it was. It
				// also tells once head passed the record: a joiner's
				// slot holds head at its record until it is removed.
				var slot member
				if slot, serr = n.readSlot(ctx, ref, ch.add.slot); serr == nil {
					switch {
					case slot.holds(*ch.add):
						// Our join: the slot names its record (the
						// joiner has not published since).
						committed = true
						got.pos, got.msgBase = slot.dLog, slot.dMsg
					case slot.tag == ch.add.tag:
						// Another join that decided on the same header
						// (same slot and tag, another queue) was placed:
						// ours was not, and its queue is unreferenced.
						committed = false
					default:
						// Not placed, or placed, removed and reclaimed
						// since (its queue then freed): this attempt
						// must not go on with that queue.
						serr = errJoinLost
					}
				}
			}
			if errors.Is(serr, errTrimmed) && ch.add == nil && out == nil && attempt <= 20 {
				// A removal whose record head passed, the view moved
				// on: ours or another change removed them, or another
				// change came first and ours was refused. The caller
				// asks only that they be out of the view, and the
				// attempt is fenced (settleAppend), so deciding again
				// on fresh metadata is safe: it finds them gone, or
				// removes them once.
				n.log.Debug().Str("group", ref.name).Uint64("view", rec.view).Msg("removal of unknown outcome, trimmed: deciding again")
				continue
			}
			if serr != nil {
				return errors.Join(err, serr) // still ErrUnknownOutcome
			}
			res, err = &client.Result{Committed: committed}, nil
			if committed {
				res.Appended = []client.Appended{{Tail: got.pos, Count: got.msgBase}}
			}
		}
		if err != nil {
			if ctx.Err() != nil || attempt > 20 {
				return err
			}
			if err := sleepCtx(ctx, wait); err != nil {
				return err
			}
			continue
		}
		if res.Committed {
			if out != nil {
				*out = viewOutcome{pos: res.Appended[0].Tail, msgs: res.Appended[0].Count, view: rec.view, provider: ch.provider}
			}
			n.log.Debug().Str("group", ref.name).Uint64("view", rec.view).Str("reason", ch.reason).Msg("view change")
			n.wakeLocal(ref.name)
			return nil
		}
		if res.FailedCompare == 1 {
			// The log is full: wait for the members to deliver and the
			// oldest to trim. A removal may use the reserve that
			// multicasts and joins leave free (logRoom).
			if err := sleepCtx(ctx, wait); err != nil {
				return err
			}
			wait = min(2*wait, 20*time.Millisecond)
			continue
		}
		if attempt > 8 {
			if err := sleepCtx(ctx, time.Duration(attempt)*100*time.Microsecond); err != nil {
				return err
			}
		}
	}
}

// readRing reads n bytes of the order log from position pos.
func (n *Node) readRing(ctx context.Context, ref groupRef, pos uint64, l int) ([]byte, error) {
	tx := client.NewTx()
	for _, it := range n.ringItems(ref.logBase(), ref.logSize, pos, uint64(l)) {
		tx.Read(ref.home, it.addr, uint32(it.n))
	}
	res, err := n.exec(ctx, tx)
	if err != nil {
		return nil, err
	}
	return joinReads(res.Reads), nil
}

// readSlot reads member slot i (retrying transient failures).
func (n *Node) readSlot(ctx context.Context, ref groupRef, i int) (member, error) {
	var b []byte
	err := n.retry(ctx, func() error {
		var err error
		b, err = n.read(ctx, ref.home, ref.slotAddr(i), memberSize)
		return err
	})
	if err != nil {
		return member{}, err
	}
	return decodeMember(i, b), nil
}

// errUnsettled: an unknown outcome that reading back can no longer settle;
// errTrimmed when that is because head passed the position.
var (
	errUnsettled = errors.New("gcs: the outcome of a write is unknown and can no longer be read back")
	errTrimmed   = errors.New("the log was trimmed past it")
	// errJoinLost: a join of unknown outcome that did not place its slot
	// (or whose slot is gone): join again, with another queue.
	errJoinLost = errors.New("gcs: join lost: its outcome was unknown and its slot does not hold it")
)

// beforeStateRead is a failpoint for tests: the joiner calls it after it
// found the state published, before it reads it.
var beforeStateRead atomic.Pointer[func()]

// failStateWrites is a failpoint for tests: while positive, a provider's
// write of the state fails as if the memnode rejected it.
var failStateWrites atomic.Int32

// failSettleReads and settleGivesUp are failpoints for tests: while
// positive, settleAppend's reads fail as if the memnode were unavailable;
// while set, it gives up at once.
var (
	failSettleReads atomic.Int32
	settleGivesUp   atomic.Bool
	settleReads     atomic.Int64 // settling reads that returned (tests)
	afterSettleRead atomic.Pointer[func()]
)

// confirmedDead returns the members whose process the process table
// declares gone (membership.Table.Ended): its row is dead or left at the
// member's incarnation, a newer incarnation replaced it, or the row was
// reused by another process (only a dead or left row is). Without
// Membership, none.
func (n *Node) confirmedDead(active []member) []member {
	if n.cfg.Membership == nil {
		return nil
	}
	t := n.cfg.Membership.Known()
	var out []member
	for _, m := range active {
		if m.inc == 0 {
			continue
		}
		id, _, _ := strings.Cut(m.name, "#")
		if t.Ended(id, m.inc) {
			out = append(out, m)
		}
	}
	return out
}

// provide is the provider's side of state transfer, run on the delivery
// goroutine right after the view admitting the joiner was handed to the
// application: snapshot, write it into a region of this member's queue
// memnode, and publish the region in the joiner's slot (comparing the
// joiner's tag, so a joiner removed meanwhile gets nothing).
func (g *Group) provide(joiner viewMember) {
	n := g.n
	ctx := g.ctx
	status, data := uint64(stNone), []byte(nil)
	if g.opts.Snapshot != nil {
		d, err := g.opts.Snapshot()
		if err != nil {
			n.log.Warn().Err(err).Str("joiner", joiner.name).Msg("snapshot for state transfer failed")
			status = stFailed
		} else {
			status, data = stReady, d
		}
	}
	var region client.Region
	if status == stReady {
		mn := g.self.qMemnode
		var err error
		region, err = n.allocs[mn].Alloc(ctx, uint64(8+len(data)))
		if err != nil {
			n.log.Warn().Err(err).Msg("allocating the state transfer region")
			status = stFailed
		} else {
			buf := le.AppendUint64(make([]byte, 0, 8+len(data)), uint64(len(data)))
			buf = append(buf, data...)
			chunk := n.stateChunk()
			for off := 0; off < len(buf) && status == stReady; off += chunk {
				part := buf[off:min(off+chunk, len(buf))]
				addr := region.Addr + uint64(off)
				if err := n.retry(ctx, func() error {
					if failStateWrites.Load() > 0 && failStateWrites.Add(-1) >= 0 {
						return fmt.Errorf("failpoint: state write: %w", client.ErrInvalid)
					}
					_, err := n.exec(ctx, client.NewTx().Write(mn, addr, part))
					return err
				}); err != nil {
					n.log.Warn().Err(err).Msg("writing the state")
					status = stFailed
				}
			}
		}
	}
	slot := g.ref.slotAddr(joiner.slot)
	w := make([]byte, 32)
	if status == stReady {
		putU64s(w, status, region.Memnode, region.Addr, region.Len)
	} else {
		putU64s(w, status)
	}
	// Publish only over stPending: once the joiner consumed the state
	// (stConsumed, stFreeing) a retried publication must not put stReady
	// back over a region that is freed. An outcome that is unknown, now or
	// in an earlier attempt, is settled by the slot: stPending under the
	// joiner's tag means not published (publish again); stReady, stConsumed
	// or stFreeing mean published (the joiner, or the reclaim of its slot,
	// frees the region); a slot no longer the joiner's leaves it unsettled.
	var published, maybe bool // maybe: some attempt's outcome was unknown
	var unknown []error       // the attempts whose outcome was unknown
	err := n.retry(ctx, func() error {
		res, err := n.execAt(ctx, sitePublish, client.NewTx().
			Compare(g.ref.home, slot, le.AppendUint64(nil, joiner.tag)).
			Compare(g.ref.home, slot+offStState, le.AppendUint64(nil, stPending)).
			Write(g.ref.home, slot+offStState, w))
		switch {
		case err == nil && res.Committed:
			published = true
			return nil
		case err == nil && !maybe:
			return nil // the joiner's slot changed before we published
		case err != nil && !errors.Is(err, client.ErrUnknownOutcome):
			return err
		}
		maybe = true
		if err != nil {
			unknown = append(unknown, err)
		}
		b, rerr := n.settleRead(ctx, g.ref.home, slot, offStState+8, unknown...)
		if rerr != nil {
			return rerr
		}
		if u64(b, 0) != joiner.tag {
			return nil // the joiner is gone: unsettled
		}
		switch u64(b, offStState) {
		case stPending:
			return errRetry // not published: again
		case stReady, stConsumed, stFreeing:
			published = true
		}
		return nil
	})
	// A failed transfer publishes no region (stFailed alone): the region
	// is nobody's but ours, whatever the publication's outcome.
	if region.Len != 0 && (status != stReady || mayFreeUnpublished(published, maybe)) {
		if ferr := n.allocs[region.Memnode].Free(context.WithoutCancel(ctx), region); ferr != nil {
			n.log.Debug().Err(ferr).Msg("freeing unclaimed state")
		}
	}
	g.provided.Add(1)
	if err != nil {
		n.log.Warn().Err(err).Str("joiner", joiner.name).Msg("publishing the state")
	}
}

// mayFreeUnpublished reports whether the provider may free a state region
// after publishing it: only if the publication is known not to have
// committed, i.e. no attempt's outcome was unknown (maybe). An unsettled
// outcome may have published it; the joiner would then read a freed,
// perhaps reused, region, or free it a second time. So it is kept: if the
// publication did commit, the joiner frees it after Restore (or the reclaim
// of the joiner's slot does); if it did not, the region leaks.
func mayFreeUnpublished(published, maybe bool) bool { return !published && !maybe }

// errProviderGone wraps ErrStateTransfer: after the last of Join's
// attempts it is what Join returns, and callers test for ErrStateTransfer.
var errProviderGone = fmt.Errorf("%w: the state provider left the view (or its process died) before transferring", ErrStateTransfer)

// receiveState is the joiner's side: wait until the provider published the
// state in our slot, read it, Restore, free the region. retry is true when
// the provider was removed before publishing.
//
// Its reads persist (Node.persist) until Join's ctx ends: the joiner's view
// change has committed, so a read that fails while a memnode is unavailable
// (an election, a partition longer than the client's retries) is waited
// out, not taken as a failed join that leaves the group again.
func (g *Group) receiveState(ctx context.Context, provider uint64) (retry bool, err error) {
	n := g.n
	wait := time.Millisecond
	readMeta := func() (ms metaState, err error) {
		err = n.persist(ctx, "reading the joiner's slot", func() error {
			ms, err = n.readMetaBy(g.ref, func(tx *client.Tx) (*client.Result, error) { return n.execAt(ctx, siteState, tx) })
			return err
		})
		return ms, err
	}
	for {
		ms, err := readMeta()
		if err != nil {
			return false, err
		}
		me := ms.members[g.self.slot]
		if me.tag != g.self.tag || !me.active() {
			return false, ErrEvicted
		}
		switch me.stStatus {
		case stNone:
			return false, nil
		case stFailed:
			return false, fmt.Errorf("%w: the provider's snapshot failed", ErrStateTransfer)
		case stReady:
			if f := beforeStateRead.Load(); f != nil {
				(*f)()
			}
			data, err := g.readState(ctx, me)
			if err != nil {
				return false, err
			}
			// The region is freed only after the slot left stReady (the
			// reclaim of a removed joiner marks it stFreeing first), so
			// the slot still holding it now means the bytes read are the
			// state; otherwise they may be a freed region's.
			ms, err := readMeta()
			if err != nil {
				return false, err
			}
			if now := ms.members[g.self.slot]; now.tag != g.self.tag || !now.active() ||
				now.stStatus != stReady || now.stMemnode != me.stMemnode || now.stAddr != me.stAddr || now.stLn != me.stLn {
				return false, ErrEvicted
			}
			if err := g.opts.Restore(data); err != nil {
				return false, fmt.Errorf("%w: restore: %w", ErrStateTransfer, err)
			}
			// Freed as reclaim frees regions: mark (stFreeing, the
			// marker in the region's length word), free on the region's
			// memnode, mark consumed. A step that fails leaves the slot
			// saying so, and the slot's reclaim finishes the free.
			slot := g.ref.slotAddr(g.self.slot)
			r := client.Region{Memnode: me.stMemnode, Addr: me.stAddr, Len: me.stLn}
			status := func(st uint64) []byte { return le.AppendUint64(nil, st) }
			if a := n.allocs[r.Memnode]; a != nil {
				res, err := n.exec(ctx, client.NewTx().Compare(g.ref.home, slot, le.AppendUint64(nil, g.self.tag)).
					Compare(g.ref.home, slot+offStState, status(stReady)).
					Write(g.ref.home, slot+offStState, status(stFreeing)).
					Write(r.Memnode, r.Addr, freeMarker(g.self.tag)))
				if err == nil && res.Committed {
					err = n.freeMarked(ctx, a, r, g.self.tag)
				}
				if err == nil && res.Committed {
					_, err = n.exec(ctx, client.NewTx().Compare(g.ref.home, slot, le.AppendUint64(nil, g.self.tag)).
						Compare(g.ref.home, slot+offStState, status(stFreeing)).
						Write(g.ref.home, slot+offStState, status(stConsumed)))
				}
				if err != nil {
					n.log.Debug().Err(err).Msg("freeing the state region (left to the slot's reclaim)")
				}
			}
			return false, nil
		}
		p, ok := ms.byTag(provider)
		if !ok || !p.active() {
			return true, errProviderGone
		}
		// The provider is still in the view, but its process may be dead:
		// nobody else removes it if the joiner is the only other member
		// (our housekeeping has not started), and the other members remove
		// it only after the failure is confirmed. Once the process table
		// confirms it, give up this attempt: the next join's view change
		// removes the dead provider and names a live one (fix for a joiner
		// waiting forever for a crashed provider). Without Membership the
		// joiner waits until Join's ctx ends or someone removes the
		// provider (Group.Remove).
		if len(n.confirmedDead([]member{p})) > 0 {
			return true, errProviderGone
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return false, err
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// stateChunk is the bytes of the state one write or read of state
// transfer moves: 512 KiB, within the cluster's item limit.
func (n *Node) stateChunk() int { return int(min(512<<10, n.itemMax)) }

func (g *Group) readState(ctx context.Context, me member) ([]byte, error) {
	n := g.n
	if me.stLn < 8 || n.allocs[me.stMemnode] == nil {
		return nil, fmt.Errorf("%w: bad state region", ErrCorrupt)
	}
	read := func(addr uint64, l uint32) (b []byte, err error) {
		err = n.persist(ctx, "reading the state", func() error {
			res, err := n.execAt(ctx, siteState, client.NewTx().Read(me.stMemnode, addr, l))
			if err == nil {
				b = res.Reads[0]
			}
			return err
		})
		return b, err
	}
	hdr, err := read(me.stAddr, 8)
	if err != nil {
		return nil, err
	}
	l := u64(hdr, 0)
	if l > me.stLn-8 {
		return nil, fmt.Errorf("%w: state length %d exceeds its region", ErrCorrupt, l)
	}
	out := make([]byte, 0, l)
	chunk := uint64(n.stateChunk())
	for off := uint64(0); off < l; off += chunk {
		k := min(chunk, l-off)
		b, err := read(me.stAddr+8+off, uint32(k))
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
