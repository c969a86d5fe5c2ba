package gcs_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/vscheck"
)

// A view change whose answer is lost is settled by a fenced read of the
// header and a scan of the order log from the tail read before the change
// (from). Once head had passed from, the settle gave up at once (the
// record, if any, might be gone): a Leave or Remove of a busy group, its
// members delivering and trimming while the change's outcome was unknown,
// then failed with an unknown outcome though the log from head on still
// told, and so did the fenced header. The settle now scans from head, and
// a fenced header still showing the view the change compared says it did
// not commit.

// pollUntil polls cond every millisecond for at most d and reports
// whether it came true; for failpoints, which must not end the test's
// goroutine from inside the code they interrupt.
func pollUntil(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded
	}
	return true
}

// groupInfo reads group's metadata through n.
func groupInfo(n *gcs.Node, group string) (gcs.GroupInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.Describe(ctx, group)
}

// headPast waits (at most 20 s) until group's head is past pos, and
// reports whether it came.
func headPast(n *gcs.Node, group string, pos uint64) bool {
	return pollUntil(20*time.Second, func() bool {
		gi, err := groupInfo(n, group)
		return err == nil && gi.Head > pos
	})
}

// leaveErr is leave returning Leave's error (bookkeeping only on success).
func (m *member) leaveErr() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.g.Leave(ctx); err != nil {
		return err
	}
	<-m.done
	m.mu.Lock()
	m.ended = true
	m.add(vscheck.Event{Kind: vscheck.Leave})
	m.mu.Unlock()
	return nil
}

// oneViewLater checks that the group went through exactly one view change
// since before (a view change committed twice would show two) and that
// every member of stay installed it with want members.
func oneViewLater(t *testing.T, obs *gcs.Node, before gcs.GroupInfo, stay []*member, want int) {
	t.Helper()
	gi := describe(t, obs, "g", "the metadata", func(gcs.GroupInfo) bool { return true })
	if gi.View != before.View+1 || len(gi.Members) != want {
		t.Fatalf("after the change: view %d with %d members; want view %d (one change since %d) with %d", gi.View, len(gi.Members), before.View+1, before.View, want)
	}
	for _, m := range stay {
		waitUntil(t, 10*time.Second, m.name+" in the new view", func() bool {
			v := m.lastView()
			return v != nil && v.ID == gi.View && len(v.Members) == want
		})
	}
}

// TestLeaveLostWhileHeadPassedRetries: a Leave's view change is taken
// aside on its way (its answer lost); meanwhile the other member
// multicasts, both deliver, and head passes the tail the Leave read
// before the change. The settling read fences the attempt (released after
// it: refused) and finds the view it compared unchanged: not committed,
// and Leave changes the view again. Before, it returned an unknown
// outcome (head past the tail it knew).
func TestLeaveLostWhileHeadPassedRetries(t *testing.T) {
	e := newEnv(t)
	// The leaver (p0) is the oldest: its housekeeping trims.
	ms, transit := e.joinPairThroughTransit("g", gcs.Config{GCInterval: 5 * time.Millisecond})
	a, b := ms[0], ms[1]
	obs := e.node("obs")
	before := describe(t, obs, "g", "the group", func(gcs.GroupInfo) bool { return true })
	// The view change's request: an append with writes (a link has no
	// writes, housekeeping no append).
	transit.ArmFunc(before.Home, func(r *tuttipb.Request) bool {
		return len(r.GetAppends()) > 0 && len(r.GetWrites()) > 0
	})
	moved := false
	fired, restore := gcs.UnknownWhen("view", func() error {
		tid, held := transit.Held()
		if !held {
			return nil
		}
		if !moved {
			moved = true
			if err := b.send(1, 10); err != nil {
				t.Errorf("the other member's multicast: %v", err)
			}
			if !headPast(obs, "g", before.Tail) {
				t.Errorf("head did not pass %d", before.Tail)
			}
		}
		return &client.Error{Memnode: before.Home, Err: client.ErrUnknownOutcome, Detail: "taken aside", TID: tid}
	})
	defer restore()
	var once sync.Once
	restoreRead := gcs.AfterSettleRead(func() {
		once.Do(func() {
			if err := transit.Release(); err != nil { // fenced: refused
				t.Error(err)
			}
		})
	})
	defer restoreRead()
	if err := a.leaveErr(); err != nil {
		t.Fatalf("leave whose first view change was lost while head passed its tail: %v", err)
	}
	if !fired() || !moved {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	oneViewLater(t, obs, before, []*member{b}, 1)
	if err := b.send(2, 10); err != nil {
		t.Fatal(err)
	}
	e.leaveAll([]*member{b})
}

// TestRemoveLostWhileHeadPassedRetries: as TestLeaveLostWhileHeadPassed-
// Retries with Group.Remove, its request lost without running: the other
// member multicasts and head passes the tail Remove read before it. The
// settle finds the view it compared unchanged, and Remove changes the view
// again. Before, Remove returned an unknown outcome.
func TestRemoveLostWhileHeadPassedRetries(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAllWith(2, "g", gcs.Config{GCInterval: 5 * time.Millisecond})
	a, b := ms[0], ms[1]
	obs := e.node("obs")
	before := describe(t, obs, "g", "the group", func(gcs.GroupInfo) bool { return true })
	fired, restore := gcs.UnknownWithoutCommit("view", func() {
		if err := b.send(1, 10); err != nil {
			t.Errorf("the removed member's multicast: %v", err)
		}
		if !headPast(obs, "g", before.Tail) {
			t.Errorf("head did not pass %d", before.Tail)
		}
	})
	defer restore()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.g.Remove(ctx, b.name); err != nil {
		t.Fatalf("remove whose first view change was lost while head passed its tail: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	oneViewLater(t, obs, before, []*member{a}, 1)
	waitUntil(t, 10*time.Second, b.name+" told it was evicted", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.evicted != nil
	})
	<-b.done
	deliveredInOrder(t, ms, 1)
	e.leaveAll([]*member{a})
}

// TestLeaveCommittedAboveTheKnownTailSettlesFromHead: a Leave's view
// change commits above the tail it read before it (another member linked
// in between: the change went wherever the tail was when it applied) and
// its answer is lost; by the time it settles, head passed that tail,
// though not the change's record (a third member's application holds its
// delivery there). The settle finds the record scanning from head: Leave
// succeeds, with one view change. Before, it returned an unknown outcome.
func TestLeaveCommittedAboveTheKnownTailSettlesFromHead(t *testing.T) {
	e := newEnv(t)
	// The leaver (p0) is the oldest: its housekeeping trims until its
	// leave record, the next one's after.
	ms := e.joinAllWith(3, "g", gcs.Config{GCInterval: 5 * time.Millisecond})
	l, s, h := ms[0], ms[1], ms[2]
	obs := e.node("obs")
	before := describe(t, obs, "g", "the group", func(gcs.GroupInfo) bool { return true })
	held := false
	defer func() {
		if held {
			h.mu.Unlock()
		}
	}()
	var known, at uint64
	fired, restore := gcs.UnknownAfterCommitAround(t, "view", func() {
		// The leaver built its change on the tail known now. h's
		// application takes the next event (s's message) and stops: its
		// delivery waits at the view record, which head cannot pass.
		gi, err := groupInfo(obs, "g")
		if err != nil {
			t.Errorf("describe: %v", err)
			return
		}
		known = gi.Tail
		h.mu.Lock()
		held = true
		if err := s.send(1, 10); err != nil {
			t.Errorf("the other member's multicast: %v", err)
		}
		// Every member delivered s's record (before the leave record is
		// there: the leaver's delivery ends at it) and head passes it.
		if !headPast(obs, "g", known) {
			t.Errorf("head did not pass %d", known)
		}
		if gi, err = groupInfo(obs, "g"); err == nil {
			at = gi.Tail // where the leave record goes
		}
	}, func() {
		gi, err := groupInfo(obs, "g")
		if err != nil || gi.Head <= known || gi.Head > at || gi.Tail <= at {
			t.Errorf("after the leave committed: head %d, tail %d (%v); want head in (%d, %d], the leave record at %d below the tail", gi.Head, gi.Tail, err, known, at, at)
		}
	})
	defer restore()
	if err := l.leaveErr(); err != nil {
		t.Fatalf("leave committed above the tail it knew, head past that tail: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	h.mu.Unlock()
	held = false
	oneViewLater(t, obs, before, []*member{s, h}, 2)
	sendAll(t, []*member{s, h}, 2, 10)
	deliveredInOrder(t, []*member{s, h}, 5)
	e.leaveAll([]*member{s, h})
}

// TestRemoveCommittedAndTrimmedBeforeSettleSucceeds: a Remove's view
// change commits and its answer is lost; before it settles, the remaining
// member multicasts and delivers, and head passes the removal record. The
// settle finds neither the record (trimmed) nor the view it compared (the
// removal moved it on), so it cannot tell whose change removed the member.
// It need not: a removal only asks that the member be out of the view, so
// Remove decides again on the metadata it reads next, finds the member
// gone and succeeds, with one view change. Before, it returned an unknown
// outcome ("the log was trimmed past it").
func TestRemoveCommittedAndTrimmedBeforeSettleSucceeds(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAllWith(2, "g", gcs.Config{GCInterval: 5 * time.Millisecond})
	a, b := ms[0], ms[1]
	obs := e.node("obs")
	before := describe(t, obs, "g", "the group", func(gcs.GroupInfo) bool { return true })
	fired, restore := gcs.UnknownAfterCommit(t, "view", func() {
		// The removal record went at before.Tail; a's message after it.
		if err := a.send(1, 10); err != nil {
			t.Errorf("the remaining member's multicast: %v", err)
		}
		if !headPast(obs, "g", before.Tail) {
			t.Errorf("head did not pass the removal record at %d", before.Tail)
		}
	})
	defer restore()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.g.Remove(ctx, b.name); err != nil {
		t.Fatalf("remove that committed, its record trimmed before it settled: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	oneViewLater(t, obs, before, []*member{a}, 1)
	<-b.done
	e.leaveAll([]*member{a})
}

// TestLeaveCommittedAndTrimmedBeforeSettleSucceeds: as TestRemoveCommitted-
// AndTrimmedBeforeSettleSucceeds with a Leave: its view change commits, its
// answer is lost, the others multicast and deliver and head passes the
// leave record before the Leave settles (the leaver publishes its final
// position only at the end of Leave: the trimmer gives it up after
// leaveGrace, 0.5 s here; its delivery read the record long before).
// Leave decides again, finds itself out of the view and finishes, with one
// view change.
func TestLeaveCommittedAndTrimmedBeforeSettleSucceeds(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAllWith(3, "g", gcs.Config{GCInterval: 5 * time.Millisecond, TakeoverTimeout: 100 * time.Millisecond})
	l, s, h := ms[0], ms[1], ms[2]
	obs := e.node("obs")
	before := describe(t, obs, "g", "the group", func(gcs.GroupInfo) bool { return true })
	fired, restore := gcs.UnknownAfterCommit(t, "view", func() {
		if err := s.send(1, 10); err != nil {
			t.Errorf("the other member's multicast: %v", err)
		}
		if !headPast(obs, "g", before.Tail) {
			t.Errorf("head did not pass the leave record at %d", before.Tail)
		}
	})
	defer restore()
	if err := l.leaveErr(); err != nil {
		t.Fatalf("leave that committed, its record trimmed before it settled: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	restore()
	oneViewLater(t, obs, before, []*member{s, h}, 2)
	sendAll(t, []*member{s, h}, 2, 10)
	deliveredInOrder(t, []*member{s, h}, 5)
	e.leaveAll([]*member{s, h})
}

// TestFinalPositionRetried: a leaver publishes its final position at the
// end of Leave, so the trimmer stops waiting for it; that write was tried
// once, and when it failed (here its answer is lost without it running)
// the trimmer held the log at the leave record for leaveGrace (20 s here:
// TakeoverTimeout 4 s), and senders waited for room meanwhile. It is now
// retried, and head passes the leave record within a few seconds.
func TestFinalPositionRetried(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAllWith(3, "g", gcs.Config{GCInterval: 5 * time.Millisecond, TakeoverTimeout: 4 * time.Second})
	l, s, h := ms[0], ms[1], ms[2]
	obs := e.node("obs")
	before := describe(t, obs, "g", "the group", func(gcs.GroupInfo) bool { return true })
	fired, restore := gcs.UnknownWithoutCommit("final", func() {})
	defer restore()
	l.leave() // its record at before.Tail
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	if err := s.send(1, 10); err != nil {
		t.Fatal(err)
	}
	if !pollUntil(5*time.Second, func() bool {
		gi, err := groupInfo(obs, "g")
		return err == nil && gi.Head > before.Tail
	}) {
		gi, err := groupInfo(obs, "g")
		t.Fatalf("head %d (%v) still at or below the leave record at %d 5 s after Leave returned: the trimmer waits for the leaver", gi.Head, err, before.Tail)
	}
	deliveredInOrder(t, []*member{s, h}, 1)
	e.leaveAll([]*member{s, h})
}
