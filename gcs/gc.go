package gcs

import (
	"context"
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
func (g *Group) housekeep() {
	defer g.wg.Done()
	n := g.n
	tick := time.NewTicker(n.cfg.GCInterval)
	defer tick.Stop()
	var published uint64 = ^uint64(0)
	suspectSince := map[uint64]time.Time{}
	leavers := map[uint64]leaverProgress{}
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-g.done:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(g.ctx, 5*n.cfg.GCInterval+time.Second)
		g.housekeepOnce(ctx, &published, suspectSince, leavers)
		cancel()
	}
}

func (g *Group) housekeepOnce(ctx context.Context, published *uint64, suspectSince map[uint64]time.Time, leavers map[uint64]leaverProgress) {
	n := g.n
	slot := g.ref.slotAddr(g.self.slot)
	tagB := le.AppendUint64(nil, g.self.tag)
	// Publish and read the metadata in one minitransaction (a read alone
	// when there is nothing new to publish).
	var ms metaState
	var err error
	if d := g.dLog.Load(); d != *published {
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
			*published = d
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
		return
	}
	g.head.Store(max(g.head.Load(), ms.h.head))
	act := ms.active()
	if len(act) == 0 {
		return
	}
	minLog, minMsg := act[0].dLog, act[0].dMsg
	for _, m := range act {
		minLog, minMsg = min(minLog, m.dLog), min(minMsg, m.dMsg)
	}
	g.stability.Store(max(g.stability.Load(), minMsg))

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

	if act[0].tag != g.self.tag {
		return
	}
	// Trim, also waiting for members that are leaving gracefully.
	minLog = g.holdForLeavers(ms, minLog, leavers, now)
	if minLog > ms.h.head {
		res, err := n.exec(ctx, client.NewTx().
			Compare(g.ref.home, g.ref.meta+offHead, le.AppendUint64(nil, ms.h.head)).
			Write(g.ref.home, g.ref.meta+offHead, le.AppendUint64(nil, minLog)))
		if err == nil && res.Committed {
			ms.h.head = minLog
			g.head.Store(max(g.head.Load(), minLog))
		}
	}
	// Reclaim removed members.
	for _, m := range ms.members {
		if m.tag == 0 || m.retiredAt == 0 || retiredPos(m) >= ms.h.head {
			continue
		}
		g.reclaim(ctx, m)
	}
}

// reclaim frees a removed member's slot and regions: one minitransaction
// zeroes the slot (comparing it) and the queue's fence word, so a removed
// member still writing its queue fails its fence compare; then the regions
// are freed.
func (g *Group) reclaim(ctx context.Context, m member) {
	n := g.n
	tx := client.NewTx().Compare(g.ref.home, g.ref.slotAddr(m.slot), m.encode()).
		Write(g.ref.home, g.ref.slotAddr(m.slot), make([]byte, memberSize))
	a := n.allocs[m.qMemnode]
	if a != nil && m.qLen >= 8 {
		tx.Write(m.qMemnode, m.qAddr, make([]byte, 8))
	}
	res, err := n.exec(ctx, tx)
	if err != nil || !res.Committed {
		return
	}
	if a != nil && m.qLen >= 8 {
		if err := a.Free(ctx, client.Region{Memnode: m.qMemnode, Addr: m.qAddr, Len: m.qLen}); err != nil {
			n.log.Debug().Err(err).Str("member", m.name).Msg("freeing a removed member's queue")
		}
	}
	if a := n.allocs[m.stMemnode]; a != nil && m.stStatus == stReady {
		if err := a.Free(ctx, client.Region{Memnode: m.stMemnode, Addr: m.stAddr, Len: m.stLn}); err != nil {
			n.log.Debug().Err(err).Str("member", m.name).Msg("freeing unclaimed state")
		}
	}
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
// 8-aligned): the member was removed by its own Leave.
const retiredLeft = 1

// retiredPos is the log position of the view record that removed m.
func retiredPos(m member) uint64 { return m.retiredAt &^ 7 }

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
		if m.tag == 0 || m.retiredAt&retiredLeft == 0 || m.dLog >= retiredPos(m) || m.dLog < ms.h.head {
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
// Leave: it is this member's leave record, so the trimmer stops waiting.
func (g *Group) publishFinal(ctx context.Context) {
	w := make([]byte, 16)
	putU64s(w, g.dLog.Load(), g.dMsg.Load())
	slot := g.ref.slotAddr(g.self.slot)
	if _, err := g.n.exec(ctx, client.NewTx().Compare(g.ref.home, slot, le.AppendUint64(nil, g.self.tag)).Write(g.ref.home, slot+offDLog, w)); err != nil {
		g.n.log.Debug().Err(err).Msg("publishing the final position")
	}
}
