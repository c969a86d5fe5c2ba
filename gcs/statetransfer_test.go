package gcs_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode"
)

// drain consumes g's events until they close.
func drain(g *gcs.Group) {
	go func() {
		for range g.Events() {
		}
	}()
}

// TestStateTransferAboveItemLimit: a state larger than the cluster's item
// limit (ClusterInfo.max_item_bytes) is written and read in items within
// it, as every other ring access of the package is. Before, the provider
// wrote and the joiner read the state in 512 KiB items whatever the limit:
// on a cluster with smaller items every write was rejected (ErrInvalid),
// the provider published a failed snapshot (and leaked the region it had
// allocated) and the joiner's Join failed with ErrStateTransfer.
func TestStateTransferAboveItemLimit(t *testing.T) {
	e := newEnvWith(t, cluster.Config{Memnode: memnode.Config{MaxItemBytes: 64 << 10}})
	state := bytes.Repeat([]byte("0123456789abcdef"), (300<<10)/16)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := e.provider(ctx, state)
	var got []byte
	b, err := e.node("b").Join(ctx, "g", gcs.JoinOptions{
		Snapshot: func() ([]byte, error) { return nil, nil },
		Restore:  func(s []byte) error { got = s; return nil },
	})
	if err != nil {
		t.Fatalf("join with a state of %d bytes (items of at most 64 KiB): %v", len(state), err)
	}
	drain(b)
	if !bytes.Equal(got, state) {
		t.Fatalf("restored %d bytes, want the provider's %d", len(got), len(state))
	}
	for _, g := range []*gcs.Group{b, a} {
		if err := g.Leave(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// allocatedOfLen counts the allocated blocks of client.Allocator on every
// memnode of e's cluster (gcs's range, AllocBase) whose region is l bytes,
// walking the blocks from the first to the allocator's bump pointer.
func allocatedOfLen(t *testing.T, e *env, l uint64) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := e.client()
	read := func(mn, addr uint64) uint64 {
		res, err := cl.Exec(ctx, client.NewTx().Read(mn, addr, 8))
		if err != nil {
			t.Fatal(err)
		}
		return binary.LittleEndian.Uint64(res.Reads[0])
	}
	count := 0
	for _, spec := range e.c.Memnodes() {
		next := read(spec.ID, gcs.AllocBase)
		for b := uint64(gcs.AllocBase + 32); next != 0 && b < next; {
			w := read(spec.ID, b)
			if w&7 == 1 && w&^7 == l {
				count++
			}
			b += 16 + w&^7
		}
	}
	return count
}

// TestFailedStateWriteFreesTheRegion: a provider that allocated the state
// region and then failed to write the state publishes a failed transfer,
// which names no region: the region must be freed. Before, the committed
// publication counted as "published" and the region was kept, for a
// joiner or a reclaim to free that never would: leaked for good.
func TestFailedStateWriteFreesTheRegion(t *testing.T) {
	e := newEnv(t)
	state := bytes.Repeat([]byte{7}, 100_000)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := e.provider(ctx, state)
	defer gcs.FailStateWrites(1)()
	_, err := e.node("b").Join(ctx, "g", gcs.JoinOptions{Restore: func([]byte) error { return nil }})
	if !errors.Is(err, gcs.ErrStateTransfer) {
		t.Fatalf("join after the provider's state write failed: %v, want ErrStateTransfer", err)
	}
	waitUntil(t, 10*time.Second, "the provider settled its publication", func() bool { return gcs.Provided(a) >= 1 })
	if n := allocatedOfLen(t, e, uint64(8+len(state))); n != 0 {
		t.Fatalf("%d state regions still allocated after a failed transfer", n)
	}
	if err := a.Leave(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestJoinerRemovedWhileReadingItsState: the joiner found its state
// published, and before it read it the joiner was removed and its slot
// reclaimed, which frees the state region. Join must then fail, not call
// Restore with what the freed region holds now. Before, the joiner read
// the region without checking that its slot still held it (the free zeroes
// the length word: Restore got an empty state), and Join returned a group
// whose first event was *Evicted.
func TestJoinerRemovedWhileReadingItsState(t *testing.T) {
	e := newEnv(t)
	state := bytes.Repeat([]byte("s"), 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := e.provider(ctx, state)
	obs := e.node("obs")
	defer gcs.BeforeStateRead(func() {
		if err := a.Remove(ctx, "b#2"); err != nil {
			t.Errorf("remove the joiner: %v", err)
			return
		}
		describe(t, obs, "g", "the joiner's slot reclaimed", func(gi gcs.GroupInfo) bool {
			return len(gi.Members) == 1 && len(gi.Retired) == 0
		})
	})()
	var got []byte
	restored := false
	b, err := e.node("b").Join(ctx, "g", gcs.JoinOptions{Restore: func(s []byte) error {
		got, restored = s, true
		return nil
	}})
	if err == nil {
		drain(b)
	}
	if restored && !bytes.Equal(got, state) {
		t.Fatalf("Restore got %d bytes after the state region was freed (Join: %v), want the provider's %d or no Restore", len(got), err, len(state))
	}
	if err == nil {
		t.Fatal("Join of a member removed before it read its state succeeded")
	}
	if err := a.Leave(ctx); err != nil {
		t.Fatal(err)
	}
}

// provider joins group g from node "a" as the member whose Snapshot gives
// state, and drains its Events.
func (e *env) provider(ctx context.Context, state []byte) *gcs.Group {
	e.t.Helper()
	a, err := e.node("a").Join(ctx, "g", gcs.JoinOptions{
		Snapshot: func() ([]byte, error) { return state, nil },
		Restore:  func([]byte) error { return nil },
	})
	if err != nil {
		e.t.Fatal(err)
	}
	drain(a)
	return a
}

// TestJoinerWaitsOutAnUnavailableStateRead: a joiner whose reads of its
// slot and of the provider's state fail for a while (their memnode
// unavailable for longer than the client's retries) restores the state
// once the memnode answers again. Join used to fail with the first failed
// read, after its view change had committed, and left the group again.
func TestJoinerWaitsOutAnUnavailableStateRead(t *testing.T) {
	e := newEnv(t)
	state := bytes.Repeat([]byte("state!"), 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := e.provider(ctx, state)
	const fails = 30 // more than Node.retry's 20
	failed, restore := gcs.FailAt(gcs.SiteState, fails)
	defer restore()
	var got []byte
	b, err := e.node("b").Join(ctx, "g", gcs.JoinOptions{
		Snapshot: func() ([]byte, error) { return nil, nil },
		Restore:  func(s []byte) error { got = s; return nil },
	})
	if err != nil {
		t.Fatalf("join while %d reads of the state failed: %v", fails, err)
	}
	drain(b)
	if n := failed(); n != fails {
		t.Fatalf("%d reads failed, want %d: the failpoint missed them", n, fails)
	}
	if !bytes.Equal(got, state) {
		t.Fatalf("restored %d bytes, want the provider's %d", len(got), len(state))
	}
	for _, g := range []*gcs.Group{b, a} {
		if err := g.Leave(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
