package gcs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// viewState is the view a member delivers in.
type viewState struct {
	id    uint64
	slots map[int]viewMember
}

// viewID is v's id, 0 before the first view (a joiner).
func (v *viewState) viewID() uint64 {
	if v == nil {
		return 0
	}
	return v.id
}

// deliverLoop reads the order log from the position of the view record
// that admitted this member and delivers views and messages strictly in
// log order. Having delivered up to the tail it read, it waits for a
// signal before reading again: pokes from local links and view changes
// (a link also hands over the log it read, see handoff), and, when the
// cluster serves watch streams, client.Watch notifications of writes to
// the header's (view, tail, msgs) words and the log ring — except those
// showing only our own links, delivered already (ownOnly). The watch asks
// for the written bytes: an event whose data holds the header words and
// the log from pos up to its tail is delivered from without a read
// (fromEvent); otherwise delivery reads as without data. The poll
// (PollMin doubling to PollMax while nothing arrives) only backs the
// watch up (watchPoll, backing off to watchPollIdle).
func (g *Group) deliverLoop() {
	defer g.wg.Done()
	defer close(g.done)
	defer close(g.events)
	n := g.n
	var watchC <-chan client.WatchEvent
	wctx, wcancel := context.WithTimeout(g.ctx, 2*time.Second)
	w, werr := n.cl.WatchWith(wctx, g.ref.home, client.WatchOptions{Data: !noWatchData.Load()}, client.Range{Addr: g.ref.meta + offView, Len: 24},
		client.Range{Addr: g.ref.logBase(), Len: g.ref.logSize})
	wcancel()
	if werr == nil {
		defer w.Close()
		watchC = w.C()
	} else {
		n.log.Debug().Err(werr).Msg("no watch stream: polling the order log")
	}
	pos := g.start0
	var cur *viewState
	wait := n.cfg.PollMin
	want := 4096 // log bytes read with the header: what was there last time
	// evd is the latest watch event with data that delivery has not used
	// yet (a handoff may have come first).
	var evd *client.WatchEvent
	// awaitSignal waits for a reason to read the log again: a watch event
	// (not only about our own links), a poke, or the poll. False: stop.
	backup, backupPos := watchPoll, pos // the backup poll's wait, and pos when it was set
	awaitSignal := func() bool {
		if watchC != nil {
			// The watch notifies; the poll only backs it up, every
			// watchPoll while records arrive, backing off to
			// watchPollIdle while polls find nothing.
			if pos != backupPos {
				backup, backupPos = watchPoll, pos
			}
			wait = max(n.cfg.PollMax, backup)
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		for {
			select {
			case <-g.ctx.Done():
				return false
			case <-g.wake:
				wait = n.cfg.PollMin
			case ev, ok := <-watchC:
				if ok && !ev.Reset && g.ownOnly(ev.Ranges, pos) {
					continue // our own link, delivered already
				}
				if !ok {
					watchC = nil // the watch ended: poll only
				} else {
					evd = nil
					if ev.Data != nil {
						evd = &ev
					}
				}
				wait = n.cfg.PollMin
			case <-t.C:
				wait = min(2*wait, n.cfg.PollMax)
				backup = min(2*backup, watchPollIdle)
			}
			return true
		}
	}
	// awaitMore is awaitSignal unless an unused event shows records past
	// pos.
	awaitMore := func() bool {
		if evd != nil {
			if g.eventTail(evd) > pos {
				return true
			}
			evd = nil
		}
		return awaitSignal()
	}
	caughtUp := false // delivered everything up to the tail last read
	for {
		if g.ctx.Err() != nil {
			return
		}
		if caughtUp {
			caughtUp = false
			if !awaitMore() {
				return
			}
		}
		// The sender may have handed us the log (handoff), or a watch
		// event carried it; otherwise one read of the header and the log
		// from pos (a consistent snapshot of one memnode): no round trip
		// to learn the tail first.
		h, buf, handed, passed := g.takeHandoff(pos)
		if passed && watchC != nil {
			// The link's poke, but delivery has its records already (a
			// watch event came first): nothing new as of the link, and
			// any other change is notified by the watch.
			buf, handed = nil, true
		}
		if !handed && evd != nil {
			h, buf, handed = g.fromEvent(evd, pos)
			evd = nil
			if handed {
				g.evDelivered.Add(1)
			}
		}
		var err error
		if !handed {
			h, buf, err = n.readTail(g.ctx, g.ref, pos, want)
			if err == nil {
				g.logReads.Add(1)
			}
		}
		if err == nil {
			g.noteHeader(h)
		}
		if err != nil {
			if g.ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrNoGroup) {
				// Delete takes an empty group only: we were removed (or
				// left) and what we had not read of the log, our
				// removal included, is gone with it. No retry brings it
				// back.
				g.evict(cur.viewID(), "the group was deleted")
				return
			}
			if errors.Is(err, client.ErrClosed) {
				// The client was closed under the Node: no read will
				// answer again (evictOrFail closes the group).
				g.evictOrFail(cur.viewID(), err)
				return
			}
			n.log.Debug().Err(err).Msg("delivery: reading the header")
			if sleepCtx(g.ctx, 10*time.Millisecond) != nil {
				return
			}
			continue
		}
		if h.head > pos {
			g.evict(h.view, "fell behind the order log")
			return
		}
		if h.tail <= pos {
			want = 4096
			if !awaitMore() {
				return
			}
			continue
		}
		wait = n.cfg.PollMin
		avail := h.tail - pos
		want = int(min(max(avail, 4096), uint64(n.cfg.ReadChunk)))
		if uint64(len(buf)) > avail {
			buf = buf[:avail]
		}
		var recs []record
		at := pos
		for len(buf) > 0 {
			rec, err := decodeRecord(buf, at)
			if errors.Is(err, errShortRecord) {
				if len(recs) == 0 && len(buf) >= recHeader && uint64(le.Uint32(buf[8:])) <= avail {
					// A record longer than what was read: read it whole.
					b, rerr := n.readRing(g.ctx, g.ref, at, int(le.Uint32(buf[8:])))
					if rerr != nil {
						break
					}
					buf = b
					continue
				}
				break
			}
			if err != nil {
				if len(recs) > 0 {
					break // deliver what precedes it first
				}
				g.evict(h.view, err.Error())
				return
			}
			recs = append(recs, rec)
			at += uint64(rec.size)
			buf = buf[rec.size:]
		}
		var stop bool
		cur, pos, stop = g.deliverRecords(cur, pos, recs)
		if stop {
			return
		}
		// Signals that arrived meanwhile are pending: wait for one rather
		// than read again at once.
		caughtUp = pos >= h.tail
	}
}

// watchPoll is the backup poll of the order log while a watch stream
// notifies delivery; it backs off to watchPollIdle while polls find
// nothing new (an idle group), so an idle member reads about once a
// second, not ten times.
const (
	watchPoll     = 100 * time.Millisecond
	watchPollIdle = time.Second
)

// noWatchData turns off asking delivery's watch for the written bytes
// (tests, to exercise the reads).
var noWatchData atomic.Bool

// eventVTM returns the (view, tail, msgs) words of the group header as of
// a watch event, if its data holds them.
//
// A link appends (appendRecords) and writes only the tail and the message
// counter: its event lacks the view word, which then is that of the
// newest header seen (it names only the view in an eviction; delivery
// takes views from the records).
func (g *Group) eventVTM(ev *client.WatchEvent) (view, tail, msgs uint64, ok bool) {
	if b, ok := ev.Bytes(g.ref.meta+offView, 24); ok {
		return u64(b, 0), u64(b, 8), u64(b, 16), true
	}
	b, ok := ev.Bytes(g.ref.meta+offTail, 16)
	if !ok {
		return 0, 0, 0, false
	}
	tail, msgs = u64(b, 0), u64(b, 8)
	if s := g.seen.Load(); s != nil {
		view = s.view
	}
	return view, tail, msgs, true
}

// eventTail is the log tail as of a watch event, 0 if its data lacks it.
func (g *Group) eventTail(ev *client.WatchEvent) uint64 {
	_, tail, _, _ := g.eventVTM(ev)
	return tail
}

// fromEvent returns the header and the order log from pos up to the tail
// as of watch event ev, if ev's data holds them: the (view, tail, msgs)
// words and every log byte in [pos, tail). The data is the committed
// memory as of the event's index (client.WatchEvent.Data), so this is
// what a read at that index would return: tail only grows and positions
// [tail-logSize, tail) are the latest ones at their ring offsets, so the
// bytes at the offsets of [pos, tail) are those positions' records. The
// head is not watched: the header carries the newest head delivery knows
// (a lower bound; it only grows), and below pos delivery reads instead,
// so that a member that fell behind learns it as before. A tail at or
// below pos (the event is older than what delivery has) yields no bytes.
func (g *Group) fromEvent(ev *client.WatchEvent, pos uint64) (header, []byte, bool) {
	view, tail, msgs, ok := g.eventVTM(ev)
	if !ok {
		return header{}, nil, false
	}
	var h header
	if s := g.seen.Load(); s != nil {
		h = *s
	}
	h.view, h.tail, h.msgs, h.head = view, tail, msgs, g.head.Load()
	if h.head > pos || h.tail > pos+g.ref.logSize {
		return header{}, nil, false
	}
	if h.tail <= pos {
		return h, nil, true
	}
	var b []byte
	items := ringSplit(g.ref.logBase(), g.ref.logSize, pos, h.tail-pos)
	for _, it := range items {
		d, ok := ev.Bytes(it.addr, it.n)
		if !ok {
			return header{}, nil, false
		}
		if len(items) == 1 {
			b = d // shared with the event, read only
		} else {
			b = append(b, d...)
		}
	}
	return h, b, true
}

// blobFetch is the read of one batch blob, done ahead of delivery.
type blobFetch struct {
	done chan struct{}
	b    []byte
	err  error
}

// blobReaders bounds the concurrent blob reads of one member's delivery.
const blobReaders = 8

// deliverRecords delivers recs (consecutive, from pos) in order, reading
// the referenced blobs ahead, several at a time, while earlier records are
// delivered. It returns the view and position reached; stop reports the
// end of this membership.
func (g *Group) deliverRecords(cur *viewState, pos uint64, recs []record) (*viewState, uint64, bool) {
	fetches := make([]*blobFetch, len(recs))
	var refs []int
	for i, rec := range recs {
		if b, ok := g.ownBlob(rec); ok {
			fetches[i] = &blobFetch{done: make(chan struct{}), b: b}
			close(fetches[i].done)
		} else if rec.kind == recRef {
			fetches[i] = &blobFetch{done: make(chan struct{})}
			refs = append(refs, i)
		}
	}
	if len(refs) > 0 {
		ctx, cancel := context.WithCancel(g.ctx)
		var wg sync.WaitGroup
		var next atomic.Int64
		for range min(blobReaders, len(refs)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					j := int(next.Add(1)) - 1
					if j >= len(refs) {
						return
					}
					f := fetches[refs[j]]
					f.b, f.err = g.readBlob(ctx, recs[refs[j]])
					close(f.done)
				}
			}()
		}
		defer wg.Wait()
		defer cancel()
	}
	for i, rec := range recs {
		var stop bool
		cur, stop = g.deliverRecord(cur, rec, fetches[i])
		if stop {
			if rec.kind == recView {
				// The view record that ended the membership was read
				// and acted on: the final position is past it, so the
				// trimmer knows we no longer need it (holdForLeavers).
				g.dLog.Store(pos + uint64(rec.size))
			}
			return cur, pos, true
		}
		pos += uint64(rec.size)
		g.dLog.Store(pos)
	}
	if len(recs) > 0 {
		g.pokeHousekeeping() // a position to publish
	}
	return cur, pos, false
}

// readTail reads the header and l bytes of the log from pos in one
// minitransaction.
func (n *Node) readTail(ctx context.Context, ref groupRef, pos uint64, l int) (header, []byte, error) {
	tx := client.NewTx().Read(ref.home, ref.meta, metaHeader)
	for _, it := range n.ringItems(ref.logBase(), ref.logSize, pos, uint64(l)) {
		tx.Read(ref.home, it.addr, uint32(it.n))
	}
	res, err := n.exec(ctx, tx)
	if err != nil {
		return header{}, nil, err
	}
	h, err := decodeHeader(res.Reads[0])
	if err != nil {
		return header{}, nil, err
	}
	return h, joinReads(res.Reads[1:]), nil
}

// deliverRecord delivers one record; stop reports the end of this
// membership (left, evicted or closed).
func (g *Group) deliverRecord(cur *viewState, rec record, fetch *blobFetch) (*viewState, bool) {
	n := g.n
	switch rec.kind {
	case recView:
		vb, err := decodeView(rec.body)
		if err != nil {
			g.evict(rec.view, err.Error())
			return cur, true
		}
		in := false
		nv := &viewState{id: rec.view, slots: map[int]viewMember{}}
		v := &View{ID: rec.view, Joined: vb.joined, Left: vb.left, Reason: vb.reason}
		var joiner viewMember
		for _, m := range vb.members {
			nv.slots[m.slot] = m
			v.Members = append(v.Members, m.name)
			if m.tag == g.self.tag {
				in = true
			}
			if m.tag == vb.joiner {
				joiner = m
			}
		}
		if !in {
			if cur == nil {
				g.evict(rec.view, fmt.Sprintf("%s: not in the view that should admit it", ErrCorrupt))
				return cur, true
			}
			// Only our own leave can empty the view of a running member
			// (a removal is made by a member, who stays; abandon takes
			// only its own, never-started slot): its work falls to us
			// (finishLeave).
			g.emptied.Store(len(vb.members) == 0)
			// Our Leave, even one whose outcome it could not settle
			// (leaving is then false again): only a member's own Leave
			// removes a running member for reasonLeft. Any other reason
			// is an eviction, even while we are leaving: our Leave then
			// found us removed already and removed nothing.
			if vb.reason == reasonLeft {
				g.fail(ErrNotMember)
				return cur, true
			}
			g.evict(rec.view, vb.reason)
			return cur, true
		}
		raise(&g.inView, rec.view)
		if !g.send(v) {
			return cur, true
		}
		g.dMsg.Store(rec.msgBase)
		if vb.provider == g.self.tag && vb.joiner != 0 && cur != nil {
			g.provide(joiner)
		}
		return nv, false
	case recInline, recRef:
		if cur == nil || rec.view != cur.id {
			g.evict(rec.view, fmt.Sprintf("%s: batch of view %d outside the view", ErrCorrupt, rec.view))
			return cur, true
		}
		sender, ok := cur.slots[rec.slot]
		if !ok || sender.tag != rec.tag {
			g.evict(rec.view, fmt.Sprintf("%s: batch from slot %d not in view %d", ErrCorrupt, rec.slot, rec.view))
			return cur, true
		}
		body := rec.body
		if rec.kind == recRef {
			select {
			case <-fetch.done:
			case <-g.ctx.Done():
				return cur, true
			}
			b, err := fetch.b, fetch.err
			if err != nil {
				if g.ctx.Err() == nil {
					g.evictOrFail(rec.view, err)
				}
				return cur, true
			}
			body = b
		}
		payloads, err := decodeMsgs(body, rec.count)
		if err != nil {
			g.evict(rec.view, err.Error())
			return cur, true
		}
		for i, p := range payloads {
			m := &Message{View: rec.view, Sender: sender.name, Seq: rec.firstSeq + uint64(i), Pos: rec.msgBase + uint64(i) + 1, Payload: p}
			if !g.send(m) {
				return cur, true
			}
			g.dMsg.Store(m.Pos)
		}
		if rec.tag == g.self.tag && len(payloads) > 0 {
			g.ownSeq.Store(rec.firstSeq + uint64(len(payloads)) - 1) // before dLog moves past rec
		}
		return cur, false
	}
	n.log.Warn().Uint8("kind", rec.kind).Msg("unknown order record")
	g.evict(rec.view, fmt.Sprintf("%s: record kind %d", ErrCorrupt, rec.kind))
	return cur, true
}

// readBlob reads a batch from the sender's queue ring and checks it.
func (g *Group) readBlob(ctx context.Context, rec record) ([]byte, error) {
	ref, err := decodeRef(rec.body)
	if err != nil {
		return nil, err
	}
	n := g.n
	tx := client.NewTx()
	for _, it := range n.ringItems(ref.qAddr, ref.qLen, ref.qPos, ref.bytes) {
		tx.Read(ref.qMemnode, it.addr, uint32(it.n))
	}
	// Delivery cannot go on without this batch, and giving up would evict
	// this member from a group that still has it: a memnode unavailable
	// for a while (an election, a partition) is waited out, as a read of
	// the order log is. A blob overwritten since (this member fell behind)
	// fails checkBlob instead.
	var res *client.Result
	if err := n.persist(ctx, "delivery: reading a batch from "+g.ref.name+"'s queues", func() error {
		var err error
		res, err = n.execAt(ctx, siteBlob, tx)
		return err
	}); err != nil {
		return nil, err
	}
	return checkBlob(joinReads(res.Reads), ref.qPos, rec.tag, rec.firstSeq)
}

// send hands ev to the application; false if the group stopped.
func (g *Group) send(ev Event) bool {
	select {
	case g.events <- ev:
		return true
	case <-g.ctx.Done():
		return false
	}
}

// evictOrFail ends the membership after delivery could not read what
// it must deliver: a request the memnodes reject as invalid is a local
// failure (the group fails with that error, logged, and Events closes
// without *Evicted), a closed client closes the group (ErrClosed, no
// *Evicted); anything else evicts.
func (g *Group) evictOrFail(view uint64, err error) {
	if errors.Is(err, client.ErrClosed) {
		// The client was closed under the Node: not an eviction (the
		// group still has us). End as a closed Node ends the group
		// (Events closes; the sender fails with ErrClosed too).
		g.n.log.Warn().Str("group", g.ref.name).Msg("delivery: the client was closed: the group is closed")
		g.fail(ErrClosed)
		return
	}
	if !errors.Is(err, client.ErrInvalid) {
		g.evict(view, err.Error())
		return
	}
	err = fmt.Errorf("gcs: group %s: delivery: %w", g.ref.name, err)
	g.n.log.Error().Err(err).Msg("delivery failed: the group is dead")
	g.fail(err)
}

// evict delivers *Evicted (best effort) and fails later Multicasts.
func (g *Group) evict(view uint64, reason string) {
	g.fail(ErrEvicted)
	g.n.log.Info().Str("group", g.ref.name).Str("member", g.self.name).Uint64("view", view).Str("reason", reason).Msg("evicted")
	g.send(&Evicted{View: view, Reason: reason})
}
