package gcs_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// TestLinkInTransitWhenSettledIsOrderedOnce: a link's answer is lost while
// the request is still on its way to the home memnode's leader. The
// settling read, though logged, is then ordered before the link: it sees
// "not committed", the link arrives and commits right after it (nothing
// else moved the tail), and the sender, told "not committed", links the
// batch again: every member delivered it twice. The settling read now
// fences the attempt, which the memnode then refuses.
func TestLinkInTransitWhenSettledIsOrderedOnce(t *testing.T) {
	e := newEnv(t)
	// No housekeeping (it writes to the home memnode too): the request
	// taken aside is the link's.
	ms, transit := e.joinPairThroughTransit("g", gcs.Config{GCInterval: time.Hour})
	gi := describe(t, e.node("obs"), "g", "the group", func(gcs.GroupInfo) bool { return true })
	transit.Arm(gi.Home)
	fired, restore := gcs.UnknownWhen("link", func() error {
		if tid, ok := transit.Held(); ok {
			return &client.Error{Memnode: gi.Home, Err: client.ErrUnknownOutcome, Detail: "taken aside", TID: tid}
		}
		return nil
	})
	defer restore()
	var once sync.Once
	restoreRead := gcs.AfterSettleRead(func() {
		once.Do(func() {
			if err := transit.Release(); err != nil {
				t.Error(err)
			}
		})
	})
	defer restoreRead()
	e.linkOnceThrough(ms, fired, restore)
	if _, ok := transit.Held(); !ok {
		t.Fatal("no link was taken aside")
	}
}

// TestLinkSettledPastTheTrimOrderedOnce: a link's answer is lost after it
// committed, and by the time the sender settles it the log's head has
// passed the tail the sender knew before the link, though not the link's
// records: another member linked in between (the link went after its
// record) and every member delivered that record, the sender's own
// delivery too, but the sender's application has not taken the sender's
// own message yet. The sender took "head passed the tail I knew and my
// delivery did too" for "my delivery passed my record", found its own
// message not delivered, called the link not committed and linked the
// batch again: every member delivered it twice.
func TestLinkSettledPastTheTrimOrderedOnce(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAllWith(2, "g", gcs.Config{GCInterval: 5 * time.Millisecond})
	a, b := ms[0], ms[1]
	obs := e.node("obs")
	info := func() (gcs.GroupInfo, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return obs.Describe(ctx, "g")
	}
	var known uint64
	held := false
	fired, restore := gcs.UnknownAfterCommitAround(t, "link", func() {
		// a's sender built its link: the tail it knows is the group's.
		gi, err := info()
		if err != nil {
			t.Errorf("describe: %v", err)
			return
		}
		known = gi.Tail
		// a's application stops taking events (after the next one), and
		// b links first.
		a.mu.Lock()
		held = true
		if err := b.send(1, 10); err != nil {
			t.Errorf("b's multicast: %v", err)
		}
	}, func() {
		// Every member delivers b's record and head passes it; a's
		// delivery waits for its application with a's own message.
		for deadline := time.Now().Add(20 * time.Second); ; {
			if gi, err := info(); err == nil && gi.Head > known {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("head did not pass %d", known)
				return
			}
			time.Sleep(time.Millisecond) // polling a condition, bounded
		}
	})
	defer restore()
	err := a.send(1, 10)
	if held {
		a.mu.Unlock()
	}
	if err != nil {
		t.Fatalf("multicast whose link's outcome was unknown: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	sendAll(t, ms, 3, 10)
	deliveredInOrder(t, ms, 8)
	e.leaveAll(ms) // no duplicates, same order, everything sent delivered
}

// TestLinkSettledByDeliveryKeepsItsBlob: a queued batch's link answers
// ErrUnknownOutcome after it committed, and by the time the sender settles
// it head passed the tail the sender knew and the sender's own delivery
// delivered the batch, but another member has not read the blob yet. The
// sender took head as the end of the link's records and reused the blob's
// queue space at once: the other member then found the blob overwritten
// and was evicted. The blob must stay until head passes the link.
func TestLinkSettledByDeliveryKeepsItsBlob(t *testing.T) {
	e := newEnv(t)
	a := e.join(e.nodeWith("a", gcs.Config{GCInterval: 5 * time.Millisecond, InlineBytes: -1,
		QueueCapacity: 16 << 10, MaxBatchBytes: 4 << 10}), "g")
	b := e.join(e.nodeWith("b", gcs.Config{GCInterval: 5 * time.Millisecond}), "g") // inline
	ms := []*member{a, b}
	waitUntil(t, 20*time.Second, "both in the view", func() bool { return a.viewSize() == 2 && b.viewSize() == 2 })
	obs := e.node("obs")
	info := func() (gcs.GroupInfo, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return obs.Describe(ctx, "g")
	}
	// b cannot read a's blobs: its delivery stops at a's first batch.
	_, restoreBlobs := gcs.FailAt(gcs.SiteBlob, 1<<30)
	defer restoreBlobs()
	var known uint64
	fired, restore := gcs.UnknownAfterCommitAround(t, "link", func() {
		gi, err := info()
		if err != nil {
			t.Errorf("describe: %v", err)
			return
		}
		known = gi.Tail
		if err := b.send(1, 10); err != nil { // linked before a's batch
			t.Errorf("b's multicast: %v", err)
		}
	}, func() {
		// Head passes b's record and a's delivery passes its own batch.
		for deadline := time.Now().Add(20 * time.Second); ; {
			if gi, err := info(); err == nil && gi.Head > known && gi.Members[0].DeliveredLog == gi.Tail && gi.Tail > gi.Head {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("head did not pass %d, or a did not deliver its batch", known)
				return
			}
			time.Sleep(time.Millisecond) // polling a condition, bounded
		}
	})
	defer restore()
	if err := a.send(1, 1000); err != nil {
		t.Fatalf("multicast whose link's outcome was unknown: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	// a fills its queue while b waits for the first blob: more than a
	// queue's worth if the first blob's space was taken back.
	var pending chan error
	sent := 1
	for ; sent < 20; sent++ {
		done := make(chan error, 1)
		go func() { done <- a.send(1, 1000) }()
		full := gcs.QueueFullWaits(a.g)
		var err error
		waitUntil(t, 20*time.Second, "the multicast linked or the queue full", func() bool {
			select {
			case err = <-done:
				return true
			default:
				return gcs.QueueFullWaits(a.g) > full
			}
		})
		if err != nil {
			t.Fatalf("multicast %d: %v", sent+1, err)
		}
		if gcs.QueueFullWaits(a.g) > full {
			pending = done
			sent++
			break
		}
	}
	restoreBlobs()
	waitUntil(t, 30*time.Second, "all delivered", func() bool {
		b.mu.Lock()
		ev := b.evicted
		b.mu.Unlock()
		if ev != nil {
			t.Fatalf("%s evicted: %+v", b.name, ev)
		}
		if pending != nil {
			select {
			case err := <-pending:
				if err != nil {
					t.Fatalf("multicast %d: %v", sent, err)
				}
				pending = nil
			default:
				return false
			}
		}
		return a.delivered() == sent+1 && b.delivered() == sent+1
	})
	sameOrder(t, a, b)
	e.leaveAll(ms)
}
