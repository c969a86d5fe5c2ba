package replication

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// faultQueueLimit bounds the number of messages waiting for delivery to one
// host of a FaultNetwork; a message sent to a full queue is dropped.
const faultQueueLimit = 8192

// faultMaxPass bounds how many queued items one delivery pass hands over, so
// that reports and messages interleave under load.
const faultMaxPass = 4096

// FaultNetwork is an in-memory network of Transports, one per host, for
// tests. It can partition hosts, isolate one, cut a link in one direction,
// drop messages at random and delay them. Randomness comes from one RNG
// seeded by NewFaultNetwork and guarded by the network's mutex, so a run
// with the same seed and the same sequence of Sends makes the same choices.
//
// Delivery is asynchronous: each started host has one goroutine that drains
// a bounded queue and calls its Handler, so handlers of one host are never
// called concurrently. Messages between a pair of hosts keep their order
// while no delay is set. Messages are deep-copied on Send; sender and
// receiver never share memory.
//
// Link faults are checked when a message is sent and again when it is
// delivered, so a partition also stops messages already in flight.
//
// All methods are safe for concurrent use.
type FaultNetwork struct {
	delivered atomic.Uint64
	dropped   atomic.Uint64

	mu struct {
		sync.Mutex
		rng *rand.Rand
		// eps holds the started, not yet closed endpoint of each host.
		eps map[uint64]*faultEndpoint
		// partition maps a host to 1 + the index of its set in the last
		// Partition call; hosts not named are 0. nil when not partitioned.
		partition map[uint64]int
		isolated  map[uint64]bool
		// cut holds one-way cuts, {from, to}.
		cut      map[[2]uint64]bool
		dropRate float64
		minDelay time.Duration
		maxDelay time.Duration
		// seq orders queued items with the same delivery time.
		seq uint64
	}
}

// NewFaultNetwork returns a fully connected, reliable network whose random
// choices are drawn from an RNG seeded with seed.
func NewFaultNetwork(seed int64) *FaultNetwork {
	n := &FaultNetwork{}
	n.mu.rng = rand.New(rand.NewPCG(uint64(seed), 0x7475747469))
	n.mu.eps = make(map[uint64]*faultEndpoint)
	n.mu.isolated = make(map[uint64]bool)
	n.mu.cut = make(map[[2]uint64]bool)
	return n
}

// Transport returns a new Transport for host. Start registers it as the
// host's endpoint; Close unregisters it, discards what is queued for it and
// stops delivery of messages it sent that are still in flight. A host may
// get a new Transport after closing the old one (a restart).
func (n *FaultNetwork) Transport(host uint64) Transport {
	return &faultEndpoint{
		net:     n,
		id:      host,
		unreach: make(map[[2]uint64]bool),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Partition splits the hosts into the given sets: hosts in different sets
// cannot talk. Hosts named in no set form one more set of their own. It
// replaces any earlier partition; Partition() with no sets removes it.
func (n *FaultNetwork) Partition(sets ...[]uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(sets) == 0 {
		n.mu.partition = nil
		return
	}
	n.mu.partition = make(map[uint64]int)
	for i, set := range sets {
		for _, h := range set {
			n.mu.partition[h] = i + 1
		}
	}
}

// Isolate cuts every link to and from host until Heal.
func (n *FaultNetwork) Isolate(host uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mu.isolated[host] = true
}

// Cut stops messages from host from to host to (one way) until Heal.
func (n *FaultNetwork) Cut(from, to uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mu.cut[[2]uint64{from, to}] = true
}

// Heal restores a fully connected, reliable network: it removes the
// partition, isolations and cuts, and resets the drop rate and delay to 0.
func (n *FaultNetwork) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mu.partition = nil
	clear(n.mu.isolated)
	clear(n.mu.cut)
	n.mu.dropRate = 0
	n.mu.minDelay, n.mu.maxDelay = 0, 0
}

// SetDropRate makes each message sent afterwards be dropped with probability
// p, clamped to [0, 1].
func (n *FaultNetwork) SetDropRate(p float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mu.dropRate = min(max(p, 0), 1)
}

// SetDelay delays each message sent afterwards by a uniformly random duration
// in [minDelay, maxDelay]. Delayed messages may be reordered. SetDelay(0, 0)
// removes the delay. A maxDelay below minDelay is raised to minDelay.
func (n *FaultNetwork) SetDelay(minDelay, maxDelay time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	minDelay = max(minDelay, 0)
	n.mu.minDelay, n.mu.maxDelay = minDelay, max(maxDelay, minDelay)
}

// Stats returns how many messages were handed to a receiver's handler and how
// many were dropped (by faults, full queues, unknown or closed hosts) so far.
func (n *FaultNetwork) Stats() (delivered, dropped uint64) {
	return n.delivered.Load(), n.dropped.Load()
}

// linkUpLocked says whether a message from from to to may pass now.
func (n *FaultNetwork) linkUpLocked(from, to uint64) bool {
	if from == to {
		return true
	}
	if n.mu.isolated[from] || n.mu.isolated[to] || n.mu.cut[[2]uint64{from, to}] {
		return false
	}
	if n.mu.partition != nil && n.mu.partition[from] != n.mu.partition[to] {
		return false
	}
	return true
}

// delayLocked draws the delivery time of a message sent at now; the zero
// time means as soon as possible.
func (n *FaultNetwork) delayLocked(now time.Time) time.Time {
	if n.mu.maxDelay <= 0 {
		return time.Time{}
	}
	d := n.mu.minDelay
	if spread := n.mu.maxDelay - n.mu.minDelay; spread > 0 {
		d += time.Duration(n.mu.rng.Int64N(int64(spread) + 1))
	}
	return now.Add(d)
}

// reportLocked queues a report for src's handler. Reports are not bounded by
// faultQueueLimit: snapshot reports are at most one per MsgSnap and
// unreachable reports are coalesced per (group, to) until delivered.
func (n *FaultNetwork) reportLocked(src *faultEndpoint, it faultItem) {
	if src.state != faultStarted {
		return
	}
	if it.kind == faultUnreachable {
		key := [2]uint64{it.group, it.to}
		if src.unreach[key] {
			return
		}
		src.unreach[key] = true
	}
	n.pushLocked(src, it)
}

// pushLocked queues it on dst and wakes dst's delivery goroutine.
func (n *FaultNetwork) pushLocked(dst *faultEndpoint, it faultItem) {
	n.mu.seq++
	it.seq = n.mu.seq
	heap.Push(&dst.queue, it)
	if it.kind == faultMsg {
		dst.queued++
	}
	select {
	case dst.wake <- struct{}{}:
	default:
	}
}

// dropLocked counts a dropped message and, for a MsgSnap, reports the failure
// to the sender.
func (n *FaultNetwork) dropLocked(src *faultEndpoint, m GroupMessage) {
	n.dropped.Add(1)
	if m.Msg.GetType() == raftpb.MsgSnap {
		n.reportLocked(src, faultItem{kind: faultSnapReport, group: m.Group, to: m.Msg.GetTo()})
	}
}

type faultState int

const (
	faultNew faultState = iota
	faultStarted
	faultClosed
)

type faultKind int

const (
	faultMsg         faultKind = iota // deliver msg from src
	faultSnapReport                   // ReportSnapshot(group, to, ok)
	faultUnreachable                  // ReportUnreachable(group, to)
)

// faultItem is one queued delivery or report.
type faultItem struct {
	at    time.Time // deliver at or after; zero: at once
	seq   uint64
	kind  faultKind
	src   *faultEndpoint // faultMsg: the sender
	msg   GroupMessage   // faultMsg: a private copy
	group uint64         // reports
	to    uint64         // reports
	ok    bool           // faultSnapReport
}

// faultQueue is a min-heap of items by (at, seq).
type faultQueue []faultItem

func (q faultQueue) Len() int { return len(q) }
func (q faultQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q faultQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *faultQueue) Push(x any)   { *q = append(*q, x.(faultItem)) }
func (q *faultQueue) Pop() any {
	old := *q
	it := old[len(old)-1]
	old[len(old)-1] = faultItem{}
	*q = old[:len(old)-1]
	return it
}

// faultEndpoint is one host's Transport on a FaultNetwork.
type faultEndpoint struct {
	net  *FaultNetwork
	id   uint64
	wake chan struct{} // capacity 1
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the delivery goroutine exits

	// Guarded by net.mu.
	state   faultState
	h       Handler
	queue   faultQueue
	queued  int                // faultMsg items in queue
	unreach map[[2]uint64]bool // unreachable reports queued, by {group, to}
}

var errFaultStarted = errors.New("replication: fault transport already started or closed")

// Start registers the endpoint as its host's and starts delivery to h.
func (e *faultEndpoint) Start(h Handler) error {
	if h == nil {
		return errors.New("replication: nil handler")
	}
	n := e.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if e.state != faultNew {
		return errFaultStarted
	}
	if _, taken := n.mu.eps[e.id]; taken {
		return fmt.Errorf("replication: host %d already has a started fault transport", e.id)
	}
	e.state = faultStarted
	e.h = h
	n.mu.eps[e.id] = e
	go e.run()
	return nil
}

// Send queues copies of msgs for their destinations. It never blocks on a
// receiver. Messages sent before Start or after Close are dropped.
func (e *faultEndpoint) Send(msgs []GroupMessage) {
	if len(msgs) == 0 {
		return
	}
	copies := make([]GroupMessage, 0, len(msgs))
	for _, m := range msgs {
		if m.Msg == nil {
			continue
		}
		copies = append(copies, GroupMessage{Group: m.Group, Msg: proto.Clone(m.Msg).(*raftpb.Message)})
	}
	n := e.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if e.state != faultStarted {
		n.dropped.Add(uint64(len(copies)))
		return
	}
	now := time.Now()
	for _, m := range copies {
		to := m.Msg.GetTo()
		dst := n.mu.eps[to]
		switch {
		case dst == nil:
			n.dropLocked(e, m)
			n.reportLocked(e, faultItem{kind: faultUnreachable, group: m.Group, to: to})
		case !n.linkUpLocked(e.id, to),
			n.mu.dropRate > 0 && n.mu.rng.Float64() < n.mu.dropRate,
			dst.queued >= faultQueueLimit:
			n.dropLocked(e, m)
		default:
			n.pushLocked(dst, faultItem{at: n.delayLocked(now), kind: faultMsg, src: e, msg: m})
		}
	}
}

// Close unregisters the endpoint, drops what is queued for it, and waits for
// its delivery goroutine, including a handler call in progress (so the
// handler must not wait for Close). Safe to call more than once.
func (e *faultEndpoint) Close() error {
	n := e.net
	n.mu.Lock()
	if e.state != faultStarted {
		e.state = faultClosed
		n.mu.Unlock()
		return nil
	}
	e.state = faultClosed
	if n.mu.eps[e.id] == e {
		delete(n.mu.eps, e.id)
	}
	for _, it := range e.queue {
		if it.kind == faultMsg {
			n.dropLocked(it.src, it.msg)
		}
	}
	e.queue, e.queued = nil, 0
	clear(e.unreach)
	n.mu.Unlock()
	close(e.stop)
	<-e.done
	return nil
}

// run is the endpoint's delivery goroutine.
func (e *faultEndpoint) run() {
	defer close(e.done)
	n := e.net
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	type snapSent struct {
		src   *faultEndpoint
		group uint64
	}
	var (
		batch   []GroupMessage
		snaps   []snapSent
		reports []faultItem
	)
	for {
		batch, snaps, reports = batch[:0], snaps[:0], reports[:0]
		wait := time.Duration(-1)
		n.mu.Lock()
		if e.state != faultStarted {
			n.mu.Unlock()
			return
		}
		h := e.h
		now := time.Now()
		popped := 0
		for ; len(e.queue) > 0 && popped < faultMaxPass; popped++ {
			if at := e.queue[0].at; at.After(now) {
				wait = at.Sub(now)
				break
			}
			it := heap.Pop(&e.queue).(faultItem)
			switch it.kind {
			case faultMsg:
				e.queued--
				if it.src.state != faultStarted || !n.linkUpLocked(it.src.id, e.id) {
					n.dropLocked(it.src, it.msg)
					continue
				}
				batch = append(batch, it.msg)
				if it.msg.Msg.GetType() == raftpb.MsgSnap {
					snaps = append(snaps, snapSent{src: it.src, group: it.msg.Group})
				}
			case faultUnreachable:
				delete(e.unreach, [2]uint64{it.group, it.to})
				reports = append(reports, it)
			default:
				reports = append(reports, it)
			}
		}
		n.mu.Unlock()

		if len(batch) > 0 {
			n.delivered.Add(uint64(len(batch)))
			h.HandleMessages(batch)
			// The handler owns the delivered messages now.
			clear(batch)
		}
		if len(snaps) > 0 {
			n.mu.Lock()
			for _, s := range snaps {
				n.reportLocked(s.src, faultItem{kind: faultSnapReport, group: s.group, to: e.id, ok: true})
			}
			n.mu.Unlock()
		}
		for _, r := range reports {
			if r.kind == faultUnreachable {
				h.ReportUnreachable(r.group, r.to)
			} else {
				h.ReportSnapshot(r.group, r.to, r.ok)
			}
		}
		if popped > 0 {
			continue // more may be due
		}
		if wait >= 0 {
			timer.Reset(wait)
		} else {
			timer.Stop()
		}
		select {
		case <-e.stop:
			return
		case <-e.wake:
		case <-timer.C:
		}
	}
}
