package gcs

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// housekeep runs every GCInterval until the membership ends:
//
//  1. publish the delivered position in our slot (compare our tag);
//  2. read the metadata; Stability = min delivered over the view;
//  3. the oldest member trims: head = min delivered log position over the
//     view (compare head), then reclaims the slots of removed members
//     whose removal record is below head: zero the queue's fence, zero
//     the slot (compare it), free the queue (and an unclaimed state);
//  4. with Membership: members the process table declares gone are
//     removed — at once by the oldest live member, after
//     p×TakeoverTimeout by the member at live rank position p.
//
// A round that found nothing to do — nothing to publish, the metadata as
// the round before read it, nobody dead, leaving or left to reclaim,
// nothing to trim, and for the trimmer every member's published position
// at the tail — doubles the wait before the next, up to IdleGCInterval:
// an idle group's members read its metadata about once a second instead
// of twenty times (measured in doc.go, "Idle groups"). Delivery progress
// and the process table's changes (with Membership) poke it back to
// GCInterval at once.
func (g *Group) housekeep() {
	defer g.wg.Done()
	n := g.n
	wait := n.cfg.GCInterval
	timer := time.NewTimer(wait)
	defer timer.Stop()
	last := time.Now()
	var prev metaState
	suspectSince := map[uint64]time.Time{}
	leavers := map[uint64]leaverProgress{}
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-g.done:
			return
		case <-g.hkWake:
			if wait > n.cfg.GCInterval {
				// Idle until now: the next round within GCInterval of
				// the last.
				wait = n.cfg.GCInterval
				timer.Reset(time.Until(last.Add(wait)))
			}
			continue
		case <-timer.C:
		}
		last = time.Now()
		g.hkRounds.Add(1)
		ctx, cancel := context.WithTimeout(g.ctx, 5*n.cfg.GCInterval+time.Second)
		busy := g.housekeepOnce(ctx, &prev, suspectSince, leavers)
		cancel()
		if busy {
			wait = n.cfg.GCInterval
		} else {
			wait = min(2*wait, max(n.cfg.IdleGCInterval, n.cfg.GCInterval))
		}
		timer.Reset(wait)
	}
}

// pokeHousekeeping ends an idle housekeeping wait (see housekeep).
func (g *Group) pokeHousekeeping() {
	select {
	case g.hkWake <- struct{}{}:
	default:
	}
}

// housekeepOnce runs one round; it reports whether the round found work
// (see housekeep): false only when nothing was published, the metadata is
// what prev holds (it is updated), and nothing waits on time or on the
// trimmer.
func (g *Group) housekeepOnce(ctx context.Context, prev *metaState, suspectSince map[uint64]time.Time, leavers map[uint64]leaverProgress) bool {
	n := g.n
	slot := g.ref.slotAddr(g.self.slot)
	tagB := le.AppendUint64(nil, g.self.tag)
	// Publish and read the metadata in one minitransaction (a read alone
	// when there is nothing new to publish).
	var ms metaState
	var err error
	busy := false
	// A link published our position less than a GCInterval ago: it is
	// as fresh as a round's publication would be (links publish for us
	// while we send).
	linked := n.cfg.Now().UnixNano()-g.pubAt.Load() < int64(n.cfg.GCInterval)
	if d := g.dLog.Load(); d != g.pubLog.Load() && !linked {
		busy = true
		dm := g.dMsg.Load()
		w := make([]byte, 16)
		putU64s(w, d, dm)
		var res *client.Result
		res, err = n.exec(ctx, client.NewTx().Compare(g.ref.home, slot, tagB).Write(g.ref.home, slot+offDLog, w).
			Read(g.ref.home, g.ref.meta, g.ref.metaLen()))
		switch {
		case err != nil:
			ms, err = n.readMeta(ctx, g.ref)
		case res.Committed:
			g.hkPublishes.Add(1)
			raise(&g.pubLog, d)
			// The reads precede the writes: our slot as just published.
			if ms, err = decodeMeta(res.Reads[0]); err == nil {
				ms.members[g.self.slot].dLog, ms.members[g.self.slot].dMsg = d, dm
			}
		default: // our slot is no longer ours: read what happened
			ms, err = n.readMeta(ctx, g.ref)
		}
	} else {
		ms, err = n.readMeta(ctx, g.ref)
	}
	if err != nil {
		return true
	}
	if !sameMeta(ms, *prev) {
		busy = true
		*prev = ms
	}
	raise(&g.head, ms.h.head)
	act := ms.active()
	if len(act) == 0 {
		return busy
	}
	minLog, minMsg := act[0].dLog, act[0].dMsg
	for _, m := range act {
		minLog, minMsg = min(minLog, m.dLog), min(minMsg, m.dMsg)
	}
	raise(&g.stability, minMsg)

	// Failures confirmed by the process table.
	dead := n.confirmedDead(act)
	now := n.cfg.Now()
	for tag := range suspectSince {
		if !containsTag(dead, tag) {
			delete(suspectSince, tag)
		}
	}
	var live []member
	for _, m := range act {
		if !containsTag(dead, m.tag) {
			live = append(live, m)
		}
	}
	rank := -1
	for i, m := range live {
		if m.tag == g.self.tag {
			rank = i
		}
	}
	if len(dead) > 0 && rank >= 0 {
		oldest := now
		for _, m := range dead {
			if _, ok := suspectSince[m.tag]; !ok {
				suspectSince[m.tag] = now
			}
			oldest = minTime(oldest, suspectSince[m.tag])
		}
		if rank == 0 || now.Sub(oldest) >= time.Duration(rank)*n.cfg.TakeoverTimeout {
			err := n.viewChange(ctx, g.ref, func(ms metaState) (*change, error) {
				return &change{remove: n.confirmedDead(ms.active()), reason: "failed"}, nil
			}, nil)
			if err != nil {
				n.log.Debug().Err(err).Msg("removing failed members")
			}
		}
	}

	if len(dead) > 0 {
		busy = true
	}
	if act[0].tag != g.self.tag {
		return busy
	}
	// Trim, also waiting for members that are leaving gracefully.
	bound := g.holdForLeavers(ms, minLog, leavers, now)
	if len(leavers) > 0 || bound > ms.h.head || bound < ms.h.tail {
		// Also while a member has not delivered (or published) what is
		// ordered: senders may be waiting for log or queue room (a full
		// queue's references take little of the log), and the members
		// that free it publish without poking the trimmer.
		busy = true
	}
	if !g.trimAndReclaim(ctx, ms, bound) {
		busy = true // removed members left to reclaim
	}
	return busy
}

// sameMeta reports whether two reads of a group's metadata are equal.
func sameMeta(a, b metaState) bool {
	return a.h == b.h && slices.Equal(a.members, b.members)
}

// trimAndReclaim moves head up to minLog (comparing the head ms read) and
// reclaims the removed members whose removal record is below head. It
// reports whether no removed member is left to reclaim.
func (g *Group) trimAndReclaim(ctx context.Context, ms metaState, minLog uint64) bool {
	n := g.n
	if minLog > ms.h.head {
		res, err := n.exec(ctx, client.NewTx().
			Compare(g.ref.home, g.ref.meta+offHead, le.AppendUint64(nil, ms.h.head)).
			Write(g.ref.home, g.ref.meta+offHead, le.AppendUint64(nil, minLog)))
		if err == nil && res.Committed {
			ms.h.head = minLog
			raise(&g.head, minLog)
		}
	}
	done := true
	for _, m := range ms.members {
		if m.tag == 0 || m.retiredAt == 0 {
			continue
		}
		if retiredPos(m) >= ms.h.head || !g.reclaim(ctx, m) {
			done = false
		}
	}
	return done
}

// failReclaimFrees is a failpoint for tests: while positive, a reclaim
// round decrements it and its frees fail (their context is cancelled)
// after the slot was marked.
var failReclaimFrees atomic.Int32

// reclaim frees a removed member's slot and regions. Each region is freed
// in three steps, so that a step that fails or is cut short leaves the slot
// saying what is left for the next round (or the next oldest member), and
// nothing is freed twice or lost: (1) one minitransaction marks the slot
// (state: stFreeing; queue: retiredFreeing) and writes freeMarker into the
// region's first word (for the queue, its fence: a removed member still
// writing its queue fails its fence compare); (2) the region is freed by a
// minitransaction on its own memnode guarded by that marker, which it
// zeroes (client.Allocator.FreeWith: the allocator's header never waits on
// another memnode's vote); a guard that fails means an earlier round freed
// it; (3) the slot is updated (state: stConsumed) or, after the queue,
// zeroed. It reports whether this call reclaimed the slot.
func (g *Group) reclaim(ctx context.Context, m member) bool {
	n := g.n
	home, slot := g.ref.home, g.ref.slotAddr(m.slot)
	freeCtx := ctx
	if failReclaimFrees.Load() > 0 && failReclaimFrees.Add(-1) >= 0 {
		c, cancel := context.WithCancel(ctx)
		cancel()
		freeCtx = c // a test's failpoint: this round's frees (step 2) fail
	}
	cur := m.encode() // the slot as the memnode holds it
	mark := func(next member, mn, addr uint64) bool {
		res, err := n.exec(ctx, client.NewTx().Compare(home, slot, cur).Write(home, slot, next.encode()).Write(mn, addr, freeMarker(m.tag)))
		if err != nil || !res.Committed {
			return false // the slot changed (published, reclaimed): next round
		}
		cur = next.encode()
		return true
	}
	if sa := n.allocs[m.stMemnode]; sa != nil && (m.stStatus == stReady || m.stStatus == stFreeing) {
		if m.stStatus == stReady {
			next := m
			next.stStatus = stFreeing
			if !mark(next, m.stMemnode, m.stAddr) {
				return false
			}
			m = next
		}
		if err := n.freeMarked(freeCtx, sa, client.Region{Memnode: m.stMemnode, Addr: m.stAddr, Len: m.stLn}, m.tag); err != nil {
			n.log.Debug().Err(err).Str("member", m.name).Msg("freeing unclaimed state (next round)")
			return false
		}
		m.stStatus = stConsumed // written with the slot below
	}
	qa := n.allocs[m.qMemnode]
	if qa != nil && m.qLen >= 8 {
		if m.retiredAt&retiredFreeing == 0 {
			next := m
			next.retiredAt |= retiredFreeing
			if !mark(next, m.qMemnode, m.qAddr) {
				return false
			}
			m = next
		}
		if err := n.freeMarked(freeCtx, qa, client.Region{Memnode: m.qMemnode, Addr: m.qAddr, Len: m.qLen}, m.tag); err != nil {
			n.log.Debug().Err(err).Str("member", m.name).Msg("freeing a removed member's queue (next round)")
			return false
		}
	}
	res, err := n.exec(ctx, client.NewTx().Compare(home, slot, cur).Write(home, slot, make([]byte, memberSize)))
	return err == nil && res.Committed
}

// freeMarked frees r if its first word still holds tag's freeMarker (step
// 2 of reclaim), zeroing the word in the same minitransaction, on r's
// memnode alone. A marker no longer there means r was freed already: done.
func (n *Node) freeMarked(ctx context.Context, a *client.Allocator, r client.Region, tag uint64) error {
	guard := client.NewTx().Compare(r.Memnode, r.Addr, freeMarker(tag)).Write(r.Memnode, r.Addr, make([]byte, 8))
	err := a.FreeWith(ctx, r, guard)
	if errors.Is(err, client.ErrGuardFailed) || errors.Is(err, client.ErrInvalid) {
		// ErrInvalid: not allocated any more (freed, not reallocated).
		return nil
	}
	return err
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Graceful leaves and trimming.
//
// A member that calls Leave is removed from the view at once, but it still
// delivers everything ordered before its leave record. The trimming minimum
// used to be taken over the new view only, so the oldest member could
// reclaim (and senders overwrite) log positions the leaver had not read
// yet: the leaver was then evicted ("fell behind the order log") and lost
// messages of its last view. Now a Leave writes retiredAt with the
// retiredLeft bit, and the trimmer also waits for such a member while its
// published position is below its leave record, unless the process table
// confirms its process dead or it made no progress for leaveGrace (a
// leaver that crashed without Membership must not stall trimming, and
// thereby senders, forever). At the end of Leave the member publishes its
// final position (publishFinal), so trimming resumes at once.

// retiredLeft is the low bit of a slot's retiredAt (positions are
// 8-aligned): the member was removed by its own Leave. retiredFreeing, the
// next: its queue is being freed (reclaim).
const (
	retiredLeft    = 1
	retiredFreeing = 2
)

// retiredPos is the log position of the view record that removed m.
func retiredPos(m member) uint64 { return m.retiredAt &^ 7 }

// leaverDone reports whether a leaver's published position is past its
// leave record: it read that record too, and needs nothing of the log any
// more. A position equal to retiredPos(m) is not done: the member has
// delivered everything before its leave record but must still read the
// record itself (trimmed past it, it was evicted, "fell behind the order
// log", and its Leave failed with ErrEvicted).
func leaverDone(m member) bool { return m.dLog > retiredPos(m) }

// leaverProgress is the trimmer's memory of a leaver's published position.
type leaverProgress struct {
	dLog  uint64
	since time.Time
}

// leaveGrace is how long the trimmer waits for a leaver that makes no
// delivery progress.
func (n *Node) leaveGrace() time.Duration {
	return max(5*n.cfg.TakeoverTimeout, 100*n.cfg.GCInterval)
}

// holdForLeavers lowers minLog to the published position of every member
// still delivering up to its graceful leave (see above); leavers tracks
// their progress between rounds.
func (g *Group) holdForLeavers(ms metaState, minLog uint64, leavers map[uint64]leaverProgress, now time.Time) uint64 {
	n := g.n
	seen := map[uint64]bool{}
	for _, m := range ms.members {
		if m.tag == 0 || m.retiredAt&retiredLeft == 0 || leaverDone(m) || m.dLog < ms.h.head {
			continue
		}
		p, ok := leavers[m.tag]
		if !ok || p.dLog != m.dLog {
			p = leaverProgress{dLog: m.dLog, since: now}
			leavers[m.tag] = p
		}
		seen[m.tag] = true
		if now.Sub(p.since) > n.leaveGrace() {
			continue // stuck: give it up (it will be evicted)
		}
		if len(n.confirmedDead([]member{m})) > 0 {
			continue
		}
		minLog = min(minLog, m.dLog)
	}
	for tag := range leavers {
		if !seen[tag] {
			delete(leavers, tag)
		}
	}
	return minLog
}

// publishFinal publishes the delivered position once more at the end of
// Leave: the end of this member's leave record (delivery stores it once
// the record is read), so the trimmer stops waiting.
func (g *Group) publishFinal(ctx context.Context) {
	w := make([]byte, 16)
	putU64s(w, g.dLog.Load(), g.dMsg.Load())
	slot := g.ref.slotAddr(g.self.slot)
	// Retried (the write is idempotent; a failed compare means the slot
	// was reclaimed): given up, the trimmer would wait leaveGrace.
	if err := g.n.retry(ctx, func() error {
		tx := client.NewTx().Compare(g.ref.home, slot, le.AppendUint64(nil, g.self.tag)).Write(g.ref.home, slot+offDLog, w)
		_, err := g.n.execAt(ctx, siteFinal, tx)
		return err
	}); err != nil {
		g.n.log.Info().Err(err).Str("group", g.ref.name).Msg("could not publish the final position: trimming waits leaveGrace for it")
	}
}

// The last member out.
//
// Trimming and reclaiming are the oldest member's job (housekeepOnce), so a
// group whose last member left had nobody to do them: the slots and queues
// of its last members (QueueCapacity each) stayed allocated until someone
// joined again, and for good if nobody did. A member whose Leave empties
// the view therefore does the oldest member's work for the empty view once
// its own delivery is done: head moves to the tail (held, as the trimmer
// holds it, for other leavers still delivering up to their leave record)
// and every removed member is reclaimed, itself included. It tries once
// within Leave and, if a leaver is still delivering, goes on in the
// background every GCInterval until nothing is left, a member joins (whose
// housekeeping takes over), leaveGrace plus a few rounds have passed, or
// the Node is closed. Several processes doing this at once is as safe as
// two trimmers: head moves by compare and slots are reclaimed by compare.
// What stays is the group's metadata (64 + MaxMembers×256 bytes and the
// LogCapacity log on its home memnode) and its index slot, until
// Node.Delete (which needs this reclaiming done). A group whose
// last member crashed keeps that member's slot and queue until someone
// joins and, as the oldest member, removes and reclaims it.

// reclaimAfterLeave runs the last leaver's work (see above).
func (g *Group) reclaimAfterLeave(ctx context.Context) {
	n := g.n
	leavers := map[uint64]leaverProgress{}
	if g.reclaimEmpty(ctx, leavers) {
		return
	}
	n.background(func() {
		ctx, cancel := context.WithTimeout(n.ctx, n.leaveGrace()+20*n.cfg.GCInterval)
		defer cancel()
		tick := time.NewTicker(n.cfg.GCInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				n.log.Debug().Str("group", g.ref.name).Msg("gave up reclaiming the empty group's members")
				return
			case <-tick.C:
			}
			rctx, rcancel := context.WithTimeout(ctx, 5*n.cfg.GCInterval+time.Second)
			done := g.reclaimEmpty(rctx, leavers)
			rcancel()
			if done {
				return
			}
		}
	})
}

// reclaimEmpty is one round of the last leaver's work; it reports whether
// nothing is left to do.
func (g *Group) reclaimEmpty(ctx context.Context, leavers map[uint64]leaverProgress) bool {
	ms, err := g.n.readMeta(ctx, g.ref)
	if errors.Is(err, ErrNoGroup) {
		return true // deleted: nothing of it is left to reclaim
	}
	if err != nil {
		return false
	}
	if len(ms.active()) > 0 {
		return true
	}
	// Our delivery is done whatever our slot says (publishFinal may have
	// failed): hold for the others only.
	held := ms
	held.members = slices.Clone(ms.members)
	if m, ok := held.byTag(g.self.tag); ok {
		held.members[m.slot].dLog = max(m.dLog, retiredPos(m)+1) // done (leaverDone)
	}
	return g.trimAndReclaim(ctx, ms, g.holdForLeavers(held, ms.h.tail, leavers, g.n.cfg.Now()))
}
