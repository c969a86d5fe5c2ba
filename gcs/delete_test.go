package gcs_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
)

// TestDeleteGroup: a group with members cannot be deleted; an empty one
// can, after which it is gone (Describe, Groups, Delete say so) and its
// name makes a new group whose view ids and positions go on from the old.
func TestDeleteGroup(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ms := e.joinAll(2, "g")
	sendAll(t, ms, 3, 100)
	deliveredInOrder(t, ms, 6)
	obs := e.node("observer")
	if err := obs.Delete(ctx, "g"); !errors.Is(err, gcs.ErrNotEmpty) {
		t.Fatalf("delete of a group with members: %v, want ErrNotEmpty", err)
	}
	before := describe(t, obs, "g", "both members still in", func(gi gcs.GroupInfo) bool { return len(gi.Members) == 2 })
	for _, m := range ms {
		if err := m.g.Leave(ctx); err != nil {
			t.Fatal(err)
		}
	}
	describe(t, obs, "g", "the group's members reclaimed", emptied)
	if err := obs.Delete(ctx, "g"); err != nil {
		t.Fatalf("delete of an empty group: %v", err)
	}
	if _, err := obs.Describe(ctx, "g"); !errors.Is(err, gcs.ErrNoGroup) {
		t.Fatalf("describe after delete: %v, want ErrNoGroup", err)
	}
	if gs, err := obs.Groups(ctx); err != nil || len(gs) != 0 {
		t.Fatalf("groups after delete: %+v %v", gs, err)
	}
	if err := obs.Delete(ctx, "g"); !errors.Is(err, gcs.ErrNoGroup) {
		t.Fatalf("second delete: %v, want ErrNoGroup", err)
	}

	again := e.join(e.node("p-again"), "g")
	sendAll(t, []*member{again}, 2, 100)
	deliveredInOrder(t, []*member{again}, 2)
	gi := describe(t, obs, "g", "the new group with its member", func(gi gcs.GroupInfo) bool { return len(gi.Members) == 1 })
	if gi.View <= before.View || gi.Msgs != before.Msgs+2 {
		t.Fatalf("new group: view %d, msgs %d; the deleted one had view %d, msgs %d: they must go on from there", gi.View, gi.Msgs, before.View, before.Msgs)
	}
}

// TestDeleteLetsNamesComeAndGo: a program that makes up a group name per
// session creates and deletes far more groups than one memnode's index has
// slots, all on one home memnode; every new group takes the metadata
// region the last deleted one gave back. Without Delete the index filled
// after IndexSlots names (ErrIndexFull) and every name kept its metadata
// and log for good.
func TestDeleteLetsNamesComeAndGo(t *testing.T) {
	e := newEnv(t)
	n := e.nodeWith("sessions", gcs.Config{Memnodes: []uint64{0}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	metas := map[uint64]bool{}
	for i := range gcs.IndexSlots + 100 {
		name := fmt.Sprintf("session-%d", i)
		meta, err := gcs.CreateGroup(ctx, n, name)
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		metas[meta] = true
		if err := n.Delete(ctx, name); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	if len(metas) != 1 {
		t.Fatalf("%d metadata regions used, want 1 (each new group reuses the deleted one's)", len(metas))
	}
	if gs, err := n.Groups(ctx); err != nil || len(gs) != 0 {
		t.Fatalf("groups left: %d %v", len(gs), err)
	}
	// A Node configured for another log size does not take the listed
	// region: its group gets the log it asked for.
	big := e.nodeWith("big", gcs.Config{Memnodes: []uint64{0}, LogCapacity: 1 << 21})
	meta, err := gcs.CreateGroup(ctx, big, "big")
	if err != nil {
		t.Fatal(err)
	}
	if gi, err := big.Describe(ctx, "big"); err != nil || metas[meta] || gi.LogCapacity != 1<<21 {
		t.Fatalf("group of a 2 MiB-log Node: metadata %#x (reused: %v), %+v %v", meta, metas[meta], gi, err)
	}
}

// TestDeleteRacesJoin: a Join and a Delete of the same empty group at
// once. Whichever wins, the joiner ends up a member of the live group of
// that name (the one Describe finds), never of a deleted one, and Delete
// either deleted the empty group or found it no longer empty.
func TestDeleteRacesJoin(t *testing.T) {
	e := newEnv(t)
	joiner, deleter := e.node("joiner"), e.node("deleter")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deleted := 0
	for round := range 12 {
		name := fmt.Sprintf("r%d", round%3)
		if _, err := gcs.CreateGroup(ctx, deleter, name); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var delErr error
		wg.Add(1)
		go func() { defer wg.Done(); delErr = deleter.Delete(ctx, name) }()
		m := e.join(joiner, name)
		wg.Wait()
		switch {
		case delErr == nil:
			deleted++
		case !errors.Is(delErr, gcs.ErrNotEmpty):
			t.Fatalf("round %d: delete: %v", round, delErr)
		}
		gi := describe(t, deleter, name, "the joiner in the live group", func(gi gcs.GroupInfo) bool { return len(gi.Members) == 1 })
		if gi.Members[0].Name != m.g.Name() {
			t.Fatalf("round %d: members %+v, want %s", round, gi.Members, m.g.Name())
		}
		sendAll(t, []*member{m}, 1, 50)
		deliveredInOrder(t, []*member{m}, 1)
		if err := m.g.Leave(ctx); err != nil {
			t.Fatal(err)
		}
		describe(t, deleter, name, "the group emptied", emptied)
		if err := deleter.Delete(ctx, name); err != nil {
			t.Fatalf("round %d: delete after leave: %v", round, err)
		}
	}
	t.Logf("%d of 12 deletes went first", deleted)
}

// TestStaleReferenceSeesDeletion: a process that looked a group up before
// it was deleted, and whose metadata region a new group then took, reads
// ErrNoGroup through its old reference instead of the new group.
func TestStaleReferenceSeesDeletion(t *testing.T) {
	e := newEnv(t)
	n := e.nodeWith("p", gcs.Config{Memnodes: []uint64{0}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := gcs.CreateGroup(ctx, n, "a")
	if err != nil {
		t.Fatal(err)
	}
	read, err := gcs.StaleRef(ctx, n, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := read(ctx); err != nil {
		t.Fatalf("read before delete: %v", err)
	}
	if err := n.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	b, err := gcs.CreateGroup(ctx, n, "b")
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatalf("b's metadata at %#x, want a's %#x reused", b, a)
	}
	if err := read(ctx); !errors.Is(err, gcs.ErrNoGroup) {
		t.Fatalf("read through a's old reference: %v, want ErrNoGroup", err)
	}
}

// TestDeleteUnknownOutcomeSettlesOnItsGroup: Delete's minitransaction
// commits but its caller hears ErrUnknownOutcome, and before it settles
// another process creates a new group under the name. Delete settles on
// the group it deleted (its index slot no longer names its region): it
// reports success and leaves the new group alone. Settling by looking the
// name up again found the new group and deleted it instead.
func TestDeleteUnknownOutcomeSettlesOnItsGroup(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := e.nodeWith("a", gcs.Config{Memnodes: []uint64{0}})
	// Another configuration, so the new group does not take the deleted
	// one's metadata region from the free list (its own region tells the
	// two apart).
	b := e.nodeWith("b", gcs.Config{Memnodes: []uint64{0}, LogCapacity: 1 << 19})
	old, err := gcs.CreateGroup(ctx, a, "g")
	if err != nil {
		t.Fatal(err)
	}
	var recreated uint64
	fired, restore := gcs.UnknownAfterCommit(t, "delete", func() {
		if recreated, err = gcs.CreateGroup(ctx, b, "g"); err != nil {
			t.Errorf("create again: %v", err)
		}
	})
	defer restore()
	if err := a.Delete(ctx, "g"); err != nil {
		t.Fatalf("delete with an unknown outcome: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	if recreated == old {
		t.Fatalf("the new group took the deleted one's region %#x", old)
	}
	if _, err := b.Describe(ctx, "g"); err != nil {
		t.Fatalf("the group created under the name meanwhile: %v", err)
	}
	if meta, err := gcs.CreateGroup(ctx, a, "g"); err != nil || meta != recreated {
		t.Fatalf("lookup of g: region %#x, %v; want the new group's %#x", meta, err, recreated)
	}
}

// TestClaimUnknownOutcomeKeepsItsRegion: a new group's index claim
// commits but its creator hears ErrUnknownOutcome; before it reads the
// slot back, another process deletes the group (its metadata region goes
// to the free list) and a third creates another group, which takes that
// region. The creator must not use or release the region again: it makes
// the group anew with a region of its own, and both groups work. Keeping
// the region for the next claim put two groups in one region.
func TestClaimUnknownOutcomeKeepsItsRegion(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := gcs.Config{Memnodes: []uint64{0}}
	a, b, c := e.nodeWith("a", cfg), e.nodeWith("b", cfg), e.nodeWith("c", cfg)
	var other uint64
	fired, restore := gcs.UnknownAfterCommit(t, "claim", func() {
		if err := b.Delete(ctx, "g"); err != nil {
			t.Errorf("delete g meanwhile: %v", err)
		}
		var err error
		if other, err = gcs.CreateGroup(ctx, c, "h"); err != nil {
			t.Errorf("create h meanwhile: %v", err)
		}
	})
	defer restore()
	g, err := gcs.CreateGroup(ctx, a, "g")
	if err != nil {
		t.Fatalf("create g with an unknown outcome: %v", err)
	}
	if !fired() {
		t.Fatal("the failpoint did not fire")
	}
	if g == other {
		t.Fatalf("g and h share the metadata region %#x", g)
	}
	for _, name := range []string{"g", "h"} {
		if _, err := a.Describe(ctx, name); err != nil {
			t.Fatalf("describe %s: %v", name, err)
		}
	}
	// Both work as groups: a member joins each and delivers its message.
	for _, name := range []string{"g", "h"} {
		m := e.join(e.node("m-"+name), name)
		sendAll(t, []*member{m}, 1, 10)
		deliveredInOrder(t, []*member{m}, 1)
	}
}
