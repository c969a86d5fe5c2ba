package gcs

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// DeliveryCounts returns how often g's delivery took order-log records
// from watch event data (without a read) and how often it read the log.
func DeliveryCounts(g *Group) (fromEvents, logReads int64) {
	return g.evDelivered.Load(), g.logReads.Load()
}

// SetWatchData sets whether groups joined from now on ask their watch for
// the written bytes, and returns a function restoring the previous value.
func SetWatchData(on bool) (restore func()) {
	old := noWatchData.Swap(!on)
	return func() { noWatchData.Store(old) }
}

// SetLinkViewFromDelivery turns off (false) or on senders taking the view
// to link in from their delivery, and returns a function restoring it.
func SetLinkViewFromDelivery(on bool) (restore func()) {
	old := noViewFromDelivery.Swap(!on)
	return func() { noViewFromDelivery.Store(old) }
}

// HousekeepingPublishes returns how many of g's housekeeping rounds
// published its delivered position.
func HousekeepingPublishes(g *Group) int64 { return g.hkPublishes.Load() }

// HousekeepingRounds returns how many housekeeping rounds g ran.
func HousekeepingRounds(g *Group) int64 { return g.hkRounds.Load() }

// CreateGroup creates group (as Join's lookup does) without joining it and
// returns its metadata address.
func CreateGroup(ctx context.Context, n *Node, group string) (uint64, error) {
	ref, err := n.lookup(ctx, group, true)
	return ref.meta, err
}

// StaleRef looks group up and returns a function that reads its metadata
// through that reference later, as a process that looked the group up
// before a Delete would.
func StaleRef(ctx context.Context, n *Node, group string) (read func(context.Context) error, err error) {
	ref, err := n.lookup(ctx, group, false)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		_, err := n.readMeta(ctx, ref)
		return err
	}, nil
}

// FailReclaimFrees makes the next n reclaim rounds' frees fail; restore
// clears what is left.
func FailReclaimFrees(n int32) (restore func()) {
	failReclaimFrees.Store(n)
	return func() { failReclaimFrees.Store(0) }
}

// StateConsumed is a member slot's state-transfer status once the joiner
// restored the state and freed its region.
const StateConsumed = stConsumed

// StateOf returns the state-transfer status and region in the slot of
// group's member named name.
func StateOf(ctx context.Context, n *Node, group, name string) (status uint64, r client.Region, err error) {
	ref, err := n.lookup(ctx, group, false)
	if err != nil {
		return 0, client.Region{}, err
	}
	ms, err := n.readMeta(ctx, ref)
	if err != nil {
		return 0, client.Region{}, err
	}
	for _, m := range ms.members {
		if m.tag != 0 && m.name == name {
			return m.stStatus, client.Region{Memnode: m.stMemnode, Addr: m.stAddr, Len: m.stLn}, nil
		}
	}
	return 0, client.Region{}, ErrNotMember
}

// UnknownAfterCommit makes the next minitransaction at site (one of the
// execAt sites of node.go: "delete", "claim", "link", "publish", "view",
// "final") commit, then runs between
// (other processes' steps), then report client.ErrUnknownOutcome to its
// caller, as a connection lost after the commit would. fired tells
// whether it happened; restore removes the failpoint.
func UnknownAfterCommit(t interface{ Errorf(string, ...any) }, site string, between func()) (fired func() bool, restore func()) {
	var done atomic.Bool
	f := func(s string, do func() (*client.Result, error)) (*client.Result, error) {
		if s != site || !done.CompareAndSwap(false, true) {
			return do()
		}
		res, err := do()
		if err != nil || !res.Committed {
			t.Errorf("failpoint at %s: the minitransaction did not commit: %+v %v", site, res, err)
			return res, err
		}
		between()
		return nil, fmt.Errorf("failpoint at %s: %w", site, client.ErrUnknownOutcome)
	}
	execFault.Store(&f)
	return done.Load, func() { execFault.Store(nil) }
}

// UnknownAfterCommitAround is UnknownAfterCommit that also runs before
// just before the minitransaction starts (after its caller built it). The
// failpoint installed before it (FailAt) goes on for every other step;
// restore reinstates it.
func UnknownAfterCommitAround(t interface{ Errorf(string, ...any) }, site string, before, between func()) (fired func() bool, restore func()) {
	var done atomic.Bool
	prev := execFault.Load()
	f := func(s string, do func() (*client.Result, error)) (*client.Result, error) {
		if s != site || !done.CompareAndSwap(false, true) {
			if prev != nil {
				return (*prev)(s, do)
			}
			return do()
		}
		before()
		res, err := do()
		if err != nil || !res.Committed {
			t.Errorf("failpoint at %s: the minitransaction did not commit: %+v %v", site, res, err)
			return res, err
		}
		between()
		return nil, fmt.Errorf("failpoint at %s: %w", site, client.ErrUnknownOutcome)
	}
	execFault.Store(&f)
	return done.Load, func() { execFault.CompareAndSwap(&f, prev) }
}

// FailSettleReads makes the next n reads that settle a link of unknown
// outcome fail as if the home memnode were unavailable.
func FailSettleReads(n int32) (restore func()) {
	failSettleReads.Store(n)
	return func() { failSettleReads.Store(0) }
}

// Provided returns how many state transfers g provided and settled.
func Provided(g *Group) int64 { return g.provided.Load() }

// SettleGivesUp makes every settling of an unknown outcome of a link or
// view change give up at once (as after a minute of failed reads).
func SettleGivesUp() (restore func()) {
	settleGivesUp.Store(true)
	return func() { settleGivesUp.Store(false) }
}

// UnknownWithoutCommit makes the next minitransaction at site not run at
// all: between runs instead (other steps, e.g. a competing join), then the
// caller hears client.ErrUnknownOutcome, as if the request were lost.
func UnknownWithoutCommit(site string, between func()) (fired func() bool, restore func()) {
	var done atomic.Bool
	f := func(s string, do func() (*client.Result, error)) (*client.Result, error) {
		if s != site || !done.CompareAndSwap(false, true) {
			return do()
		}
		between()
		return nil, fmt.Errorf("failpoint at %s: %w", site, client.ErrUnknownOutcome)
	}
	execFault.Store(&f)
	return done.Load, func() { execFault.Store(nil) }
}

// LeftView reports whether g's Leave has its view change committed.
func LeftView(g *Group) bool { return g.leftView.Load() }

// SettleReads returns how many settling reads of links and view changes
// have returned.
func SettleReads() int64 { return settleReads.Load() }

// UnknownWhilePending makes the next minitransaction at site start and,
// once transit saw its request go by (Watch on memnode, the memnode the
// site writes: transit records the attempt's tid and sends it on) and
// pending reports true (say, the memnode's leader has it appended),
// report client.ErrUnknownOutcome naming the attempt (client.Error.TID)
// to its caller, as the client does, while the attempt goes on: it may
// still commit, as a request whose connection broke may. Without the tid
// the caller's settling step could not fence the attempt, and pending
// could come true while the attempt was still on its way. transit must be
// on the transport of the client of the node that runs site.
func UnknownWhilePending(site string, transit *cluster.Transit, memnode uint64, pending func() bool) (fired func() bool, restore func()) {
	return unknownWhen(site, func() { transit.Watch(memnode) }, func() error {
		if tid, seen := transit.Held(); seen && pending() {
			return &client.Error{Memnode: memnode, Err: client.ErrUnknownOutcome, Detail: "failpoint at " + site, TID: tid}
		}
		return nil
	})
}

// FailStateWrites makes the next n writes of a state provider's snapshot
// fail as if the memnode rejected them; restore clears what is left.
func FailStateWrites(n int32) (restore func()) {
	failStateWrites.Store(n)
	return func() { failStateWrites.Store(0) }
}

// BeforeStateRead makes joiners call f after they found their state
// published and before they read it; restore removes it.
func BeforeStateRead(f func()) (restore func()) {
	beforeStateRead.Store(&f)
	return func() { beforeStateRead.Store(nil) }
}

// UnknownWhen makes the next minitransaction at site start in the
// background (its answer is lost) and, once ready returns an error
// (polled for at most 10 s), report that error to its caller: say an
// ErrUnknownOutcome naming the attempt (client.Error.TID) once a test's
// transport has taken the request aside.
func UnknownWhen(site string, ready func() error) (fired func() bool, restore func()) {
	return unknownWhen(site, func() {}, ready)
}

// unknownWhen is UnknownWhen that calls before just before the
// minitransaction starts.
func unknownWhen(site string, before func(), ready func() error) (fired func() bool, restore func()) {
	var done atomic.Bool
	f := func(s string, do func() (*client.Result, error)) (*client.Result, error) {
		if s != site || !done.CompareAndSwap(false, true) {
			return do()
		}
		before()
		go func() { _, _ = do() }() // its answer is lost
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if err := ready(); err != nil {
				return nil, err
			}
			time.Sleep(time.Millisecond) // polling a condition, bounded
		}
		return nil, fmt.Errorf("failpoint at %s: nothing ready: %w", site, client.ErrUnknownOutcome)
	}
	execFault.Store(&f)
	return done.Load, func() { execFault.Store(nil) }
}

// AfterSettleRead makes every settling read of a link or view change call
// f once it returned, before the outcome is decided; restore removes it.
func AfterSettleRead(f func()) (restore func()) {
	afterSettleRead.Store(&f)
	return func() { afterSettleRead.Store(nil) }
}

// CreateMeta allocates and initialises a metadata region on home, as a new
// group's lookup does.
func CreateMeta(ctx context.Context, n *Node, home uint64) (client.Region, error) {
	return n.createMeta(ctx, home)
}

// AllocOn allocates size bytes with n's allocator of home (the one
// metadata regions come from).
func AllocOn(ctx context.Context, n *Node, home, size uint64) (client.Region, error) {
	return n.allocs[home].Alloc(ctx, size)
}

// MetaMagic starts every live group's metadata region.
const MetaMagic = metaMagic

// SettleRead reads l bytes at addr on memnode mn in a step that settles
// attempts, as lookup and a state provider do (settle).
func SettleRead(ctx context.Context, n *Node, mn, addr uint64, l uint32, attempts ...error) ([]byte, error) {
	return n.settleRead(ctx, mn, addr, l, attempts...)
}

// SettleLink settles attempt as a link appended at or after position from
// of g's order log, as a sender does after an unknown outcome
// (settleAppend), looking for a record no link writes.
func SettleLink(ctx context.Context, g *Group, from uint64, attempt error) (bool, error) {
	_, found, err := g.n.settleAppend(ctx, g.ref, from, attempt, nil, func(record) bool { return false })
	return found, err
}

// Sites of failpoints (FailAt).
const (
	SiteBlob  = siteBlob  // delivery's reads of batches from senders' queues
	SiteQueue = siteQueue // a sender's writes of batches to its queue
	SiteState = siteState // a joiner's reads of its slot and of its state
	// a sender's read of the metadata after the view changed
	SiteSenderMeta = siteSenderMeta
)

// FailAt makes the next n minitransactions at site fail as if their
// memnode were unavailable; failed counts them.
func FailAt(site string, n int32) (failed func() int32, restore func()) {
	return FailAtWith(site, n, &client.Error{Err: client.ErrUnavailable, Detail: "failpoint " + site})
}

// FailAtWith is FailAt with the error the steps fail with.
func FailAtWith(site string, n int32, failure error) (failed func() int32, restore func()) {
	var left, count atomic.Int32
	left.Store(n)
	f := func(s string, do func() (*client.Result, error)) (*client.Result, error) {
		if s != site || left.Add(-1) < 0 {
			return do()
		}
		count.Add(1)
		return nil, failure
	}
	execFault.Store(&f)
	return count.Load, func() { execFault.Store(nil) }
}

// LogFullWaits returns how often g's sender found the order log full and
// waited for a trim.
func LogFullWaits(g *Group) int64 { return g.fullWaits.Load() }

// QueueFullWaits returns how often g's sender found its queue full and
// waited for a trim.
func QueueFullWaits(g *Group) int64 { return g.queueFullWaits.Load() }

// MulticastQueued is Multicast calling queued once the message has its
// place in the send queue (or before an error return without one): tests
// with several goroutines sending on one member record the sequence
// number each message gets by ordering their calls up to that point.
func (g *Group) MulticastQueued(ctx context.Context, payload []byte, queued func()) error {
	return g.multicast(ctx, payload, queued)
}
