package gcs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// Event is what Events delivers: *View, *Message or *Evicted.
type Event interface{ isEvent() }

// Message is one multicast message, delivered in the group's total order.
type Message struct {
	// View is the id of the view the message was ordered (and is delivered)
	// in.
	View uint64
	// Sender is the sending member's name, "ID#incarnation".
	Sender string
	// Seq is the sender's sequence number (1, 2, ... per member life):
	// per-sender FIFO means increasing Seq.
	Seq uint64
	// Pos is the message's position in the group's total order (1, 2, ...
	// over the group's whole history): every member delivers a message
	// with the same Pos, and Pos grows along Events.
	Pos uint64
	// Payload is the application's bytes (do not modify).
	Payload []byte
}

// View is a membership view. Every member that installs views v and v+1
// delivered the same messages in view v.
type View struct {
	ID uint64
	// Members in rank order: the oldest member first.
	Members []string
	// Joined and Left are the differences from the previous view.
	Joined, Left []string
	// Reason: "join", "left", "failed" (confirmed by Membership),
	// "removed by NAME" (Group.Remove), or a combination ("join" that also
	// removed members found dead).
	Reason string
}

// Evicted is the last event of a member removed while alive. The Group is
// then dead; Join again for a new membership.
type Evicted struct {
	View   uint64 // the view that does not include this member
	Reason string
}

func (*Message) isEvent() {}
func (*View) isEvent()    {}
func (*Evicted) isEvent() {}

// Stability reports what every member of the current view has delivered.
type Stability struct {
	// Pos: every current member has delivered the messages with
	// Message.Pos <= Pos (as published and read by this member's
	// housekeeping: at most GCInterval old while this member delivers
	// messages, up to IdleGCInterval otherwise).
	Pos uint64
}

// Group is one membership of one group. It is safe for concurrent use.
type Group struct {
	n    *Node
	ref  groupRef
	self member
	opts JoinOptions

	ctx    context.Context
	cancel context.CancelFunc
	events chan Event
	wake   chan struct{} // pokes the delivery loop
	hkWake chan struct{} // pokes an idle housekeeping (pokeHousekeeping)
	sendCh chan struct{} // pokes the sender
	wg     sync.WaitGroup
	done   chan struct{} // closed when the delivery loop ended
	start0 uint64        // log position of the view record that admitted us

	leaving   atomic.Bool
	leftView  atomic.Bool            // our Leave's view change committed
	emptied   atomic.Bool            // delivery saw the view our removal left empty
	finishing atomic.Bool            // finishLeave started (finishOnce)
	finished  chan struct{}          // closed when finishLeave returned
	later     sync.Once              // finishLater started
	provided  atomic.Int64           // state transfers this member provided (settled)
	ownSeq    atomic.Uint64          // the last of its own messages delivery handed over
	dLog      atomic.Uint64          // delivered order-log position
	dMsg      atomic.Uint64          // delivered message position
	head      atomic.Uint64          // last head seen
	inView    atomic.Uint64          // the newest view delivery found us in (the sender links in it)
	pubLog    atomic.Uint64          // the delivered position our links and housekeeping last published
	pubAt     atomic.Int64           // when a link last published it (Config.Now, Unix ns)
	seen      atomic.Pointer[header] // the newest header read (largest tail)
	stability atomic.Uint64
	stopOnce  sync.Once

	mu struct {
		sync.Mutex
		pending []*sendReq
		err     error // once set, Multicast fails with it
	}

	// hand is what the sender learned from its last committed link: the
	// order log from the delivered position through its own records, and
	// the header after it (see handoff).
	hand struct {
		sync.Mutex
		from uint64
		b    []byte
		h    header
	}
	// blobs are our batches in the queue, by queue position, until
	// delivery takes them (ownBlob): it need not read them back.
	blobs struct {
		sync.Mutex
		m map[uint64][]byte
	}
	// evDelivered counts deliveries of log records from watch event data
	// (fromEvent), logReads delivery's reads of the log; for tests.
	evDelivered, logReads atomic.Int64
	hkRounds, hkPublishes atomic.Int64  // housekeeping rounds run, and those that published
	links, lostRaces      atomic.Uint64 // SendStats
	fullWaits             atomic.Int64  // links that found the log full (tests)
	queueFullWaits        atomic.Int64  // waits of the sender for room in its queue (tests)
	// own is the log ranges of our latest committed links (ownOnly).
	own struct {
		sync.Mutex
		ws []ringItem // position, bytes
	}
}

type sendReq struct {
	payload []byte
	done    chan error  // capacity 1 (Multicast)
	cb      func(error) // or this (MulticastAsync)
	taken   bool
}

// complete hands the request its outcome, once.
func (r *sendReq) complete(err error) {
	if r.cb != nil {
		r.cb(err)
		return
	}
	r.done <- err
}

func newGroup(n *Node, ref groupRef, self member, opts JoinOptions, pos uint64) *Group {
	g := &Group{n: n, ref: ref, self: self, opts: opts, events: make(chan Event), wake: make(chan struct{}, 1),
		hkWake: make(chan struct{}, 1), sendCh: make(chan struct{}, 1), done: make(chan struct{}), finished: make(chan struct{}), start0: pos}
	g.ctx, g.cancel = context.WithCancel(n.ctx)
	g.dLog.Store(pos)
	g.pubLog.Store(pos) // the join wrote it into our slot
	g.dMsg.Store(self.dMsg)
	return g
}

func (g *Group) start() {
	g.wg.Add(3)
	go g.deliverLoop()
	go g.sendLoop()
	go g.housekeep()
}

// Name returns this member's name in views ("ID#incarnation").
func (g *Group) Name() string { return g.self.name }

// Events returns the ordered events of this membership: the *View that
// admitted it first, then messages and views in the group's total order;
// the channel is closed after an *Evicted, after Leave, on Node.Close, or
// when the group fails locally (logged; Multicast returns the error).
// The channel is unbuffered: delivery waits for the application (and
// flow control throttles the group's senders once the log is full).
func (g *Group) Events() <-chan Event { return g.events }

func (g *Group) pokeSender() {
	select {
	case g.sendCh <- struct{}{}:
	default:
	}
}

// Stability returns the last computed stability (see Stability).
func (g *Group) Stability() Stability { return Stability{Pos: g.stability.Load()} }

// SendStats counts this membership's link attempts: each links staged
// batches into the order log with one minitransaction that compares the
// view and appends the records at the tail (see the package doc,
// Protocol). Links of several members do not conflict; an attempt fails
// its compare only when the view changed since the sender last read it.
type SendStats struct {
	Links uint64 // link attempts that committed
	// LostRaces counts link attempts refused because the view had
	// changed (the sender reads the view and links again). Before links
	// appended, every concurrent link by another member cost one.
	LostRaces uint64
}

// SendStats returns this membership's counts so far.
func (g *Group) SendStats() SendStats {
	return SendStats{Links: g.links.Load(), LostRaces: g.lostRaces.Load()}
}

func (g *Group) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *Group) fail(err error) {
	g.mu.Lock()
	// The first error stays, except that a sender's failure (the member
	// is still in the view) gives way to the end of the membership.
	if g.mu.err == nil || errors.As(g.mu.err, new(senderDead)) && (errors.Is(err, ErrNotMember) || errors.Is(err, ErrEvicted)) {
		g.mu.err = err
	}
	pend := g.mu.pending
	g.mu.pending = nil
	g.mu.Unlock()
	for _, r := range pend {
		r.complete(err)
	}
}

func (g *Group) termErr() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.err
}

// stop ends the goroutines without leaving; Multicast then fails with err.
func (g *Group) stop(err error) {
	g.stopOnce.Do(func() {
		g.fail(err)
		g.cancel()
		g.wg.Wait()
		g.fail(err) // requests the sender took and did not finish
		g.n.unregister(g)
	})
}

// Multicast orders payload in the group and returns once it is ordered:
// linked into the order log (durable on a majority of the home memnode's
// replicas). Every member of the view it was ordered in, including this
// one, delivers it unless it crashes. Errors: ErrNotMember after Leave,
// ErrEvicted, ErrClosed, ErrTooLarge, or ctx's error — after which the
// message may or may not be ordered, like any request whose answer was
// lost.
func (g *Group) Multicast(ctx context.Context, payload []byte) error {
	return g.multicast(ctx, payload, nil)
}

// MulticastAsync is Multicast without the wait: it queues payload and
// returns at once; done is called exactly once, with nil when the message
// is ordered or with the error Multicast would have returned (never ctx's:
// a queued message is not withdrawn). Messages queued by one goroutine are
// ordered, and delivered, in the order of its calls, as with Multicast.
// done runs on one of the Group's goroutines, or on the goroutine of a
// call that ends the Group (Leave, Node.Close), never on the caller's
// before MulticastAsync returns: it must not block (hand the outcome to a
// channel or a goroutine), and it must not call into the Group or its
// Node. payload must not change until done is called. Nothing bounds how
// many messages wait: an application that queues faster than the group
// orders bounds the calls in flight itself, as Multicast's blocking does.
//
// It saves a goroutine, a channel and two context switches per message
// where an application keeps many messages in flight (tutti bench mcast
// --async; see the package doc, "Performance").
func (g *Group) MulticastAsync(payload []byte, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	if err := g.checkSize(payload); err != nil {
		go done(err)
		return
	}
	r := &sendReq{payload: payload, cb: done}
	g.mu.Lock()
	if err := g.mu.err; err != nil {
		g.mu.Unlock()
		go done(err)
		return
	}
	g.mu.pending = append(g.mu.pending, r)
	g.mu.Unlock()
	g.pokeSender()
}

// checkSize is ErrTooLarge for a payload no batch can hold.
func (g *Group) checkSize(payload []byte) error {
	if len(payload)+4 > g.n.cfg.MaxBatchBytes && (len(payload)+4 > MaxBatchBytesLimit || uint64(len(payload)+blobHeader+blobTrailer+4) > g.self.qLen/2) {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(payload))
	}
	return nil
}

// multicast is Multicast; queued, if not nil, runs once the message has
// its place in the send queue (its sequence number is then decided by the
// calls queued before it), or before an error return if it got none.
func (g *Group) multicast(ctx context.Context, payload []byte, queued func()) error {
	if queued == nil {
		queued = func() {}
	}
	if err := g.checkSize(payload); err != nil {
		queued()
		return err
	}
	r := &sendReq{payload: payload, done: make(chan error, 1)}
	g.mu.Lock()
	if err := g.mu.err; err != nil {
		g.mu.Unlock()
		queued()
		return err
	}
	g.mu.pending = append(g.mu.pending, r)
	g.mu.Unlock()
	queued()
	g.pokeSender()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		g.mu.Lock()
		for i, p := range g.mu.pending {
			if p == r {
				g.mu.pending = append(g.mu.pending[:i:i], g.mu.pending[i+1:]...)
				break
			}
		}
		g.mu.Unlock()
		return ctx.Err()
	}
}

// Leave removes this member from the view (a view change with reason
// "left"), delivers everything ordered before that view and closes Events
// without delivering the new view. Pending and later Multicasts fail with
// ErrNotMember. A member that another removed first (Remove, or a
// removal Membership caused) is evicted instead: *Evicted, and Leave
// returns ErrEvicted. The Events channel must be drained for Leave to
// finish.
// If ctx ends first, Leave returns its error after the view change; what
// is left (publishing the final position, and reclaiming the group's
// members if ours was the last membership) is done once delivery ends,
// whether the application drains Events later or calls Leave again (which
// waits for that work only as long as its own ctx allows).
func (g *Group) Leave(ctx context.Context) error {
	if !g.leftView.Load() {
		if err := g.termErr(); err != nil && !errors.As(err, new(senderDead)) {
			if errors.Is(err, ErrNotMember) {
				return nil
			}
			return err
		}
		g.leaving.Store(true)
		err := g.n.viewChange(ctx, g.ref, func(ms metaState) (*change, error) {
			if m := ms.members[g.self.slot]; m.tag == g.self.tag && m.active() {
				return &change{remove: []member{m}, reason: reasonLeft, graceful: true}, nil
			}
			return nil, nil
		}, nil)
		if err != nil {
			g.leaving.Store(false)
			// An unsettled outcome may have removed us: delivery then
			// ends at our leave record, and its work must follow.
			g.finishLater()
			return fmt.Errorf("gcs: leave %s: %w", g.ref.name, err)
		}
		g.leftView.Store(true)
	}
	g.poke()
	select {
	case <-g.done:
	case <-ctx.Done():
		g.finishLater()
		return fmt.Errorf("gcs: leave %s: left the view, delivery not finished: %w", g.ref.name, ctx.Err())
	}
	if err := g.finishOnce(ctx); err != nil {
		return fmt.Errorf("gcs: leave %s: left the view, still finishing: %w", g.ref.name, err)
	}
	if err := g.termErr(); errors.Is(err, ErrEvicted) {
		return err
	}
	return nil
}

// finishOnce runs finishLeave unless it already ran or runs: then it waits
// for it, but not past ctx (the background finisher of finishLater may be
// the one running, on the Node's context).
func (g *Group) finishOnce(ctx context.Context) error {
	if g.finishing.CompareAndSwap(false, true) {
		defer close(g.finished)
		g.finishLeave(ctx)
		return nil
	}
	select {
	case <-g.finished:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// finishLeave is what follows the end of a leaver's delivery: publish the
// final position (trimming no longer waits for us: retiredLeft), stop, and
// if our removal left the view empty do the last member's work (gc.go,
// The last member out): nobody else will.
func (g *Group) finishLeave(ctx context.Context) {
	g.publishFinal(ctx)
	g.stop(ErrNotMember)
	if g.emptied.Load() {
		g.reclaimAfterLeave(ctx)
	}
}

// finishLater runs finishLeave once delivery ends, on the Node's context,
// for a Leave that could not wait for it.
func (g *Group) finishLater() {
	g.later.Do(func() {
		n := g.n
		n.background(func() {
			select {
			case <-g.done:
			case <-n.ctx.Done():
				return
			}
			if n.ctx.Err() != nil {
				return
			}
			_ = g.finishOnce(n.ctx)
		})
	})
}

// Remove takes member (a name from a View) out of the view, as an
// administrator would after a failure that no Membership reports. A live
// member so removed gets *Evicted. Removing a name not in the view is a
// no-op.
func (g *Group) Remove(ctx context.Context, name string) error {
	if name == g.self.name {
		return fmt.Errorf("%w: use Leave to remove oneself", ErrInvalid)
	}
	if err := g.termErr(); err != nil {
		return err
	}
	err := g.n.viewChange(ctx, g.ref, func(ms metaState) (*change, error) {
		if m, ok := ms.byTag(g.self.tag); !ok || !m.active() {
			return nil, ErrEvicted
		}
		for _, m := range ms.active() {
			if m.name == name {
				return &change{remove: []member{m}, reason: "removed by " + g.self.name}, nil
			}
		}
		return nil, nil
	}, nil)
	if err != nil {
		return fmt.Errorf("gcs: remove %s from %s: %w", name, g.ref.name, err)
	}
	return nil
}

// linked remembers a batch in our queue until the log is trimmed past it
// (logEnd is ^0 while the batch is not linked yet).
type linked struct{ logEnd, qStart uint64 }

// staged is a batch on its way to the order log: its record is complete
// (inline body, or a reference to its blob) and it is ready to link once
// the blob is in the queue.
type staged struct {
	batch []*sendReq
	rec   record
	q     *linked // the blob's queue entry; nil for an inline batch
	ready bool
}

// Bounds of one send cycle: records linked by one minitransaction, blobs
// written by one queue minitransaction, and the bytes of one write item.
const (
	maxLinkRecords = 64
	maxWriteBlobs  = 64
	maxItemChunk   = 256 << 10
)

// sendLoop batches pending multicasts, writes the batches to our queue and
// links them into the order log. It pipelines: while one minitransaction
// links the batches whose blobs are in the queue, the next queue writes
// (of everything queued meanwhile, at most maxWrites, each at most
// maxTxWrite bytes) are in flight. The links stay one at a time,
// in sequence order, which keeps per-sender FIFO; one link carries every
// batch that is ready (coalesced threading, up to maxLinkRecords).
func (g *Group) sendLoop() {
	defer g.wg.Done()
	n := g.n
	var (
		seq      uint64 // last sequence number used
		sendView = g.self.joinedView
		qTail    uint64 // next queue position
		qLinks   []*linked
		ringBase = g.self.qAddr + 8
		ringLen  = g.self.qLen - 8
		fence    = queueFence(g.ref, g.self.tag)
		pipe     []*staged // taken batches not finished, in sequence order
		writing  int       // queue writes in flight (at most maxWrites)
		wrDone   = make(chan wrResult, maxWrites)
		roomWait = n.cfg.PollMin // backoff while the queue is full
	)
	// end finishes every batch taken with err (and fails the group with
	// fail, if set); the queue writes in flight are awaited first.
	end := func(err, fail error) {
		for ; writing > 0; writing-- {
			<-wrDone
		}
		for _, s := range pipe {
			g.finish(s.batch, err)
		}
		pipe = nil
		if fail != nil {
			g.fail(fail)
		}
	}
	// The sender's reads and queue writes wait out a memnode that is
	// unavailable for a while (persist), as its links do: giving up ended
	// the sender, and this member could multicast no more.
	// A header that says the group was deleted (Delete takes an empty
	// group only: this member was removed, or left, and its slot
	// reclaimed) ends the sender as the metadata read after a view change
	// does (link): persisting on it kept Multicast waiting for its ctx.
	readHdr := func() bool {
		err := n.persist(g.ctx, "sender: reading "+g.ref.name+"'s header", func() error {
			h, err := n.readHeader(g.ctx, g.ref)
			if err == nil {
				g.noteHeader(h)
			}
			return err
		})
		switch {
		case err == nil:
			return true
		case g.ctx.Err() != nil || errors.Is(err, client.ErrClosed):
			end(ErrClosed, ErrClosed)
		case errors.Is(err, ErrNoGroup):
			err := ErrEvicted
			if g.leaving.Load() {
				err = ErrNotMember
			}
			end(err, err)
		default:
			err = g.sendErr("reading the header", err)
			end(err, err)
		}
		return false
	}
	// mayWrite reports whether stage may start a queue write: with none in
	// flight, or for a full batch while fewer than maxWrites are (smaller
	// batches wait for the write in flight rather than fragment).
	mayWrite := func() bool {
		return writing == 0 || (writing < maxWrites && g.fullBatchPending())
	}
	// stage takes pending batches as the queue has room and starts one
	// queue write for those that do not travel inline. full reports that
	// requests are pending but the queue has no room.
	stage := func() (full bool) {
		head := g.head.Load()
		for len(qLinks) > 0 && qLinks[0].logEnd <= head {
			qLinks = qLinks[1:]
		}
		qHead := qTail
		if len(qLinks) > 0 {
			qHead = qLinks[0].qStart
		}
		var tx *client.Tx
		var blobs, txBytes int
		var wss []*staged // the batches tx writes
		for blobs < maxWriteBlobs && len(pipe) < 4*maxLinkRecords {
			room := int(min(ringLen-(qTail-qHead), 1<<30)) - blobHeader - blobTrailer - 8
			if tx != nil { // one queue write stays within maxTxWrite
				room = min(room, maxTxWrite-txBytes-blobHeader-blobTrailer-8)
			}
			inline := 0
			if n.cfg.InlineBytes > 0 {
				inline = min(n.cfg.InlineBytes, int(g.ref.logSize/8)) - recHeader
			}
			batch, size := g.takeBatch(max(room, inline))
			if len(batch) == 0 {
				full = size > 0
				break
			}
			first := seq + 1
			seq += uint64(len(batch))
			s := &staged{batch: batch, rec: record{kind: recInline, slot: g.self.slot, tag: g.self.tag, firstSeq: first, count: len(batch)}}
			pipe = append(pipe, s)
			if size <= inline {
				s.rec.body = encodeBatch(make([]byte, 0, size), batch)
				s.ready = true
				continue
			}
			blob := newBlob(qTail, g.self.tag, first, batch, size)
			if tx == nil {
				tx = client.NewTx().Compare(g.self.qMemnode, g.self.qAddr, fence)
			}
			off := uint64(0)
			for _, it := range chunkItems(ringSplit(ringBase, ringLen, qTail, uint64(len(blob))), min(maxItemChunk, n.itemMax)) {
				tx.Write(g.self.qMemnode, it.addr, blob[off:off+it.n])
				off += it.n
			}
			s.rec.kind = recRef
			s.rec.body = refBody{qMemnode: g.self.qMemnode, qAddr: ringBase, qLen: ringLen, qPos: qTail, bytes: uint64(len(blob))}.encode()
			s.q = &linked{logEnd: ^uint64(0), qStart: qTail}
			wss = append(wss, s)
			g.keepBlob(qTail, blob)
			qLinks = append(qLinks, s.q)
			qTail += uint64(len(blob))
			blobs++
			txBytes += len(blob)
		}
		if tx != nil {
			writing++
			go func() {
				var res *client.Result
				err := n.persist(g.ctx, "sender: writing to the queue of "+g.ref.name, func() error {
					var err error
					res, err = n.execAt(g.ctx, siteQueue, tx) // idempotent: an unknown outcome is redone
					return err
				})
				if err == nil && !res.Committed {
					err = ErrEvicted // the fence is gone: we were removed
				}
				wrDone <- wrResult{err, wss}
			}()
		}
		return full
	}
	// written marks the batches of the finished queue write ready.
	written := func(r wrResult) bool {
		writing--
		switch err := r.err; {
		case errors.Is(err, ErrEvicted):
			end(ErrEvicted, ErrEvicted)
			return false
		case err != nil:
			err = g.sendErr("queue write", err)
			end(err, err)
			return false
		}
		for _, s := range r.ss {
			s.ready = true
		}
		return true
	}
	// readyPrefix returns the batches at the front of pipe that are ready
	// to link, at most maxLinkRecords.
	readyPrefix := func() []*staged {
		k := 0
		for k < len(pipe) && k < maxLinkRecords && pipe[k].ready {
			k++
		}
		return pipe[:k]
	}
	// link orders the ready batches at the front of pipe with one
	// minitransaction on the home memnode: compare the view, append the
	// records (the memnode places them at the tail and stamps their
	// positions and message bases; see appendRecords). Links of several
	// members never conflict: the home memnode's Raft log orders them.
	// A failed view compare (a view change since) re-reads the metadata:
	// this member was removed, or it links again in the new view.
	known := g.start0 // a tail this member knew before its next link (a record boundary)
	link := func(ready []*staged) bool {
		wait := n.cfg.PollMin
		for {
			if s := g.seen.Load(); s != nil && s.tail > known {
				known = s.tail
			}
			// Delivery found us in a newer view than we last linked in:
			// link in it rather than fail the compare first.
			if !noViewFromDelivery.Load() {
				sendView = max(sendView, g.inView.Load())
			}
			var buf []byte
			msgs := uint64(0)
			k := 0
			for _, s := range ready {
				s.rec.pos, s.rec.view, s.rec.msgBase = uint64(len(buf)), sendView, msgs
				b := s.rec.encode()
				if k > 0 && (k >= n.linkRecs || uint64(len(buf)+len(b)) > min(g.ref.logSize/4, maxTxWrite, uint64(n.itemMax))) {
					break
				}
				buf = append(buf, b...)
				msgs += uint64(s.rec.count)
				k++
			}
			tx := client.NewTx().Compare(g.ref.home, g.ref.meta+offView, le.AppendUint64(nil, sendView))
			g.ref.appendRecords(tx, buf, msgs, false)
			// Publish our delivered position with the link (housekeeping
			// then needs no Raft entry of its own for it): the view
			// compare keeps our slot ours.
			pubD, pubM := g.dLog.Load(), g.dMsg.Load()
			pub := pubD > g.pubLog.Load()
			if pub {
				w := make([]byte, 16)
				putU64s(w, pubD, pubM)
				tx.Write(g.ref.home, g.ref.slotAddr(g.self.slot)+offDLog, w)
			}
			from := known
			var (
				answered  = true  // res is the link's answer (else a settle's)
				delivered = false // settled by our delivery: position unknown
				bound     uint64  // then a tail at or past its records
			)
			res, err := n.execAt(g.ctx, siteLink, tx)
			if err != nil && errors.Is(err, client.ErrUnknownOutcome) {
				// Never link again before knowing: a link that committed
				// and is linked again orders its messages twice.
				first := ready[0].rec.firstSeq
				match := func(r record) bool {
					return r.kind != recView && r.tag == g.self.tag && r.firstSeq == first
				}
				got, found, serr := n.settleAppend(g.ctx, g.ref, from, err, nil, match)
				for try := 0; errors.Is(serr, errTrimmed) && try < 16; try++ {
					// Head passed from, not necessarily the link's
					// records: the link went wherever the tail was when
					// it applied. Our delivery tells below the position
					// d it reached (it sets ownSeq before d passes our
					// record): it delivered this link's first message
					// iff it committed there (later batches wait for
					// this link). At or past d the log still holds the
					// record if head has not passed d (head passes a
					// position only after every member's delivery did,
					// ours included while we are in the view): scan
					// from d. Head past d and our delivery no further
					// than from: we cannot tell.
					d := g.dLog.Load()
					if g.ownSeq.Load() >= first {
						found, serr, delivered = true, nil, true
						// Delivery noted a header showing the record
						// (seen) before delivering it, and the link's
						// records went in one step.
						if s := g.seen.Load(); s != nil {
							bound = s.tail
						}
						break
					}
					if d <= from {
						break
					}
					from = d
					got, found, serr = n.settleAppend(g.ctx, g.ref, from, err, nil, match)
				}
				if serr != nil {
					if g.ctx.Err() != nil {
						end(ErrClosed, nil)
						return false
					}
					serr = g.sendErr("link of unknown outcome", serr)
					end(serr, serr)
					return false
				}
				if !found {
					continue // fenced: it never applies; link again
				}
				answered, res, err = false, &client.Result{Committed: true, Appended: []client.Appended{{Tail: got.pos}}}, nil
			}
			if err != nil {
				if g.ctx.Err() != nil {
					end(ErrClosed, nil)
					return false
				}
				if errors.Is(err, client.ErrInvalid) { // retrying cannot help
					err = g.sendErr("link", err)
					end(err, err)
					return false
				}
				n.log.Debug().Err(err).Msg("link")
				if sleepCtx(g.ctx, wait) != nil {
					end(ErrClosed, nil)
					return false
				}
				wait = min(2*wait, 100*time.Millisecond)
				continue
			}
			if !res.Committed && res.FailedCompare == 1 {
				// The log is full: its head moves as every member
				// delivers and the oldest trims.
				g.fullWaits.Add(1)
				if sleepCtx(g.ctx, wait) != nil {
					end(ErrClosed, nil)
					return false
				}
				wait = min(2*wait, n.cfg.PollMax)
				continue
			}
			if !res.Committed {
				// The view changed: are we still in it?
				g.lostRaces.Add(1)
				ms, err := n.readMetaBy(g.ref, func(tx *client.Tx) (*client.Result, error) { return n.execAt(g.ctx, siteSenderMeta, tx) })
				switch {
				case err == nil:
				case g.ctx.Err() != nil:
					end(ErrClosed, nil)
					return false
				case errors.Is(err, ErrNoGroup):
					// Delete takes an empty group only: this member was
					// removed (or left) and its slot reclaimed before.
					err := ErrEvicted
					if g.leaving.Load() {
						err = ErrNotMember
					}
					end(err, err)
					return false
				case errors.Is(err, client.ErrInvalid) || errors.Is(err, ErrCorrupt):
					// Retrying cannot help (and used to spin, without a
					// pause, as long as the group was open).
					err = g.sendErr("reading the view", err)
					end(err, err)
					return false
				default:
					n.log.Debug().Err(err).Msg("sender: reading the view")
					if sleepCtx(g.ctx, wait) != nil {
						end(ErrClosed, nil)
						return false
					}
					wait = min(2*wait, 100*time.Millisecond)
					continue
				}
				if m := ms.members[g.self.slot]; m.tag != g.self.tag || !m.active() {
					// Our own Leave marks the slot graceful (retiredLeft),
					// also one whose outcome it could not settle ('leaving'
					// is then false again): not an eviction. A removal by
					// another is one, even while we are leaving. A slot
					// reclaimed since does not tell: then 'leaving' does.
					err := ErrEvicted
					if m.tag == g.self.tag && m.retiredAt&retiredLeft != 0 || m.tag != g.self.tag && g.leaving.Load() {
						err = ErrNotMember
					}
					end(err, err)
					return false
				}
				g.noteHeader(ms.h)
				sendView = ms.h.view
				// Retry with whatever was multicast meanwhile. Writes
				// that finished meanwhile join the retry.
				for more := true; more; {
					select {
					case r := <-wrDone:
						if !written(r) {
							return false
						}
					default:
						more = false
					}
				}
				if mayWrite() {
					stage()
				}
				ready = readyPrefix()
				continue
			}
			g.links.Add(1)
			at := res.Appended[0]
			lend := bound
			if !delivered {
				lend = at.Tail + uint64(len(buf))
				known = max(known, lend)
			}
			if answered {
				if pub { // a settled attempt's publication may be an older one's
					raise(&g.pubLog, pubD)
					g.pubAt.Store(n.cfg.Now().UnixNano())
				}
				// Our records as the memnode wrote them: delivery takes
				// them from here if it reaches their position first
				// (handoff).
				stampRecords(buf, at.Tail, at.Count)
				g.addOwn(at.Tail, uint64(len(buf)))
				h := header{view: sendView, tail: lend, msgs: at.Count + msgs, head: g.head.Load()}
				if s := g.seen.Load(); s != nil {
					h.nextTag, h.logSize, h.maxMembers = s.nextTag, s.logSize, s.maxMembers
				}
				g.handoff(at.Tail, buf, h)
			}
			for _, s := range ready[:k] {
				if s.q != nil {
					s.q.logEnd = lend
				}
			}
			n.wakeLocal(g.ref.name)
			for _, s := range ready[:k] {
				g.finish(s.batch, nil)
			}
			pipe = pipe[k:]
			return true
		}
	}
	for {
		full := false
		if mayWrite() {
			full = stage()
		}
		ready := readyPrefix()
		if len(ready) > 0 {
			if !link(ready) {
				return
			}
			roomWait = n.cfg.PollMin
			continue
		}
		var timer <-chan time.Time
		var t *time.Timer
		if full && writing == 0 {
			// The queue is full: its room comes back as the log's head
			// passes our batches (housekeeping trims the log).
			g.queueFullWaits.Add(1)
			t = time.NewTimer(roomWait)
			timer = t.C
		}
		select {
		case <-g.ctx.Done():
			end(ErrClosed, nil)
			return
		case <-g.done:
			end(ErrClosed, nil)
			return
		case r := <-wrDone:
			if !written(r) {
				return
			}
		case <-g.sendCh:
		case <-timer:
			if !readHdr() {
				return
			}
			roomWait = min(2*roomWait, n.cfg.PollMax)
		}
		if t != nil {
			t.Stop()
		}
	}
}

// noViewFromDelivery makes senders link in the view they last linked or
// read (tests: a view change then fails the next link's compare).
var noViewFromDelivery atomic.Bool

// maxWrites bounds the queue writes in flight: while the link of the
// batches of one write commits, the next writes proceed.
const maxWrites = 2

// wrResult is the outcome of one queue write and the batches it wrote.
type wrResult struct {
	err error
	ss  []*staged
}

// handoff hands delivery the order log from position from, recs (our
// committed link's records), and h, the header right after the link.
func (g *Group) handoff(from uint64, recs []byte, h header) {
	g.hand.Lock()
	g.hand.from, g.hand.b, g.hand.h = from, recs, h
	g.hand.Unlock()
	g.noteHeader(h)
}

// takeHandoff returns the handed-off log from pos and the header after it,
// if the last handoff covers pos; a handoff delivery has passed is
// dropped, and passed reports it (with the handoff's header: delivery
// got past the link's records some other way, e.g. from a watch event).
func (g *Group) takeHandoff(pos uint64) (h header, b []byte, ok, passed bool) {
	g.hand.Lock()
	defer g.hand.Unlock()
	from, hb := g.hand.from, g.hand.b
	if hb == nil || pos < from {
		return header{}, nil, false, false
	}
	g.hand.b = nil
	if pos >= from+uint64(len(hb)) {
		return g.hand.h, nil, false, true
	}
	return g.hand.h, hb[pos-from:], true, false
}

// keepBlob keeps our blob written at queue position q for delivery.
func (g *Group) keepBlob(q uint64, blob []byte) {
	g.blobs.Lock()
	if g.blobs.m == nil {
		g.blobs.m = map[uint64][]byte{}
	}
	g.blobs.m[q] = blob
	g.blobs.Unlock()
}

// ownBlob returns (and forgets) the batch body of rec if it references a
// blob this member wrote and kept: exactly the bytes its committed queue
// write holds, so delivery skips the read. Kept blobs below the one taken
// were linked and delivered already, or never linked (the sender failed):
// they are dropped with it.
func (g *Group) ownBlob(rec record) ([]byte, bool) {
	if rec.kind != recRef || rec.slot != g.self.slot || rec.tag != g.self.tag {
		return nil, false
	}
	ref, err := decodeRef(rec.body)
	if err != nil {
		return nil, false
	}
	g.blobs.Lock()
	defer g.blobs.Unlock()
	b, ok := g.blobs.m[ref.qPos]
	if !ok || uint64(len(b)) != ref.bytes || u64(b, 0) != ref.qPos || u64(b, 24) != rec.firstSeq {
		return nil, false
	}
	for q := range g.blobs.m {
		if q <= ref.qPos {
			delete(g.blobs.m, q)
		}
	}
	return b[blobHeader:], true
}

// maxOwn bounds the links ownOnly remembers.
const maxOwn = 32

// addOwn remembers that our link wrote the log at [pos, pos+n).
func (g *Group) addOwn(pos, n uint64) {
	g.own.Lock()
	defer g.own.Unlock()
	if len(g.own.ws) >= maxOwn {
		g.own.ws = append(g.own.ws[:0], g.own.ws[1:]...)
	}
	g.own.ws = append(g.own.ws, ringItem{pos, n})
}

// ownOnly reports that a watch event's ranges show nothing delivery (at
// pos, caught up with the tail it last read) has to read: every written
// range of the order log lies within records our own links wrote below
// pos, which delivery already has (handoff). Ring offsets are ambiguous
// modulo the log size, so only our links within half a log below pos
// count: the next record, at pos, can never look like one of them, and a
// watch event that carries it is never skipped. Events without log ranges
// are not skipped either.
func (g *Group) ownOnly(rs []client.Range, pos uint64) bool {
	base, size := g.ref.logBase(), g.ref.logSize
	g.own.Lock()
	var have []ringItem // address intervals, sorted and merged below
	for _, w := range g.own.ws {
		if w.addr+w.n <= pos && w.addr+size/2 >= pos {
			have = append(have, ringSplit(base, size, w.addr, w.n)...)
		}
	}
	g.own.Unlock()
	sort.Slice(have, func(i, j int) bool { return have[i].addr < have[j].addr })
	var merged []ringItem // as [addr, end)
	for _, h := range have {
		if k := len(merged) - 1; k >= 0 && h.addr <= merged[k].n {
			merged[k].n = max(merged[k].n, h.addr+h.n)
			continue
		}
		merged = append(merged, ringItem{h.addr, h.addr + h.n})
	}
	logRanges := 0
	for _, r := range rs {
		if r.Addr >= base+size || r.Addr+r.Len <= base {
			continue // the header: it changes with every record
		}
		logRanges++
		i := sort.Search(len(merged), func(i int) bool { return merged[i].n >= r.Addr+r.Len })
		if i == len(merged) || merged[i].addr > r.Addr {
			return false
		}
	}
	return logRanges > 0
}

// noteHeader records h as seen (if its tail is the newest) and its head.
func (g *Group) noteHeader(h header) {
	for {
		cur := g.seen.Load()
		if cur != nil && cur.tail >= h.tail {
			break
		}
		if g.seen.CompareAndSwap(cur, &h) {
			break
		}
	}
	raise(&g.head, h.head)
}

// raise sets a to v unless a holds more already.
func raise(a *atomic.Uint64, v uint64) {
	for cur := a.Load(); cur < v && !a.CompareAndSwap(cur, v); cur = a.Load() {
	}
}

// takeBatch takes the oldest pending requests as one batch of at most
// MaxBatch messages and MaxBatchBytes payload bytes (a larger single
// message goes alone) whose encoding (u32 length, payload each) is at
// most limit bytes. It returns the batch and its encoded size; with no
// batch, size > 0 means requests are pending that did not fit limit.
func (g *Group) takeBatch(limit int) ([]*sendReq, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*sendReq
	size := 0
	for len(g.mu.pending) > 0 && len(out) < g.n.cfg.MaxBatch {
		r := g.mu.pending[0]
		if len(out) > 0 && size+4+len(r.payload) > g.n.cfg.MaxBatchBytes {
			break
		}
		if size+4+len(r.payload) > limit {
			if len(out) == 0 {
				return nil, 4 + len(r.payload)
			}
			break
		}
		size += 4 + len(r.payload)
		r.taken = true
		out = append(out, r)
		g.mu.pending[0] = nil
		g.mu.pending = g.mu.pending[1:]
	}
	return out, size
}

// fullBatchPending reports that a full batch (MaxBatch messages or
// MaxBatchBytes) is pending.
func (g *Group) fullBatchPending() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	size := 0
	for i, r := range g.mu.pending {
		if i == g.n.cfg.MaxBatch {
			return true
		}
		if size += 4 + len(r.payload); size >= g.n.cfg.MaxBatchBytes {
			return true
		}
	}
	return false
}

// encodeBatch appends the payloads of batch as (u32 len, bytes), the batch
// body decodeMsgs reads.
func encodeBatch(dst []byte, batch []*sendReq) []byte {
	for _, r := range batch {
		dst = le.AppendUint32(dst, uint32(len(r.payload)))
		dst = append(dst, r.payload...)
	}
	return dst
}

// sendErr is the error the group fails with when the sender gives up
// on op: ErrClosed (as when the node closes) wrapping the cause, or, if
// the memnodes rejected the request as invalid (a bug of this package,
// not a membership change), that error alone.
func (g *Group) sendErr(op string, err error) error {
	if g.ctx.Err() != nil {
		return ErrClosed
	}
	if errors.Is(err, client.ErrInvalid) {
		err = fmt.Errorf("gcs: group %s: %s: %w", g.ref.name, op, err)
	} else {
		err = fmt.Errorf("%w: group %s: %s: %w", ErrClosed, g.ref.name, op, err)
	}
	g.n.log.Error().Err(err).Msg("sender failed: the group is dead")
	return senderDead{err}
}

// senderDead marks the error of a sender that ended on its own (sendErr):
// this member can no longer multicast, but it is still in the view, its
// delivery runs, and Leave must still take it out.
type senderDead struct{ error }

func (e senderDead) Unwrap() error { return e.error }

func (g *Group) finish(batch []*sendReq, err error) {
	for _, r := range batch {
		r.complete(err)
	}
}
