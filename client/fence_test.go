package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// A logged read settles an attempt whose answer was lost only as far as
// the leader had it: an attempt still on its way (in a session queue, a
// socket buffer, a server about to propose it) applies after the read said
// "not there", and a caller that then retried has applied twice. A read
// that fences the attempt's tid settles it for good: the late attempt is
// refused and changes nothing.
func TestFencedAttemptArrivingLateIsRefused(t *testing.T) {
	const mn, addr = 1, 0x2000
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	value := func() byte {
		t.Helper()
		res, err := cl.Exec(ctx, client.NewTx().Read(mn, addr, 1))
		if err != nil {
			t.Fatal(err)
		}
		return res.Reads[0][0]
	}
	for i, fence := range []bool{false, true} {
		b := byte('a' + i)
		late := client.NewTID(cl) // the attempt whose answer was lost
		settle := client.NewTx().Read(mn, addr, 1).Logged()
		if fence {
			settle.Fence(late)
		}
		res, err := cl.Exec(ctx, settle)
		if err != nil {
			t.Fatal(err)
		}
		if res.Reads[0][0] == b {
			t.Fatalf("the attempt shows before it was sent")
		}
		vote, err := client.ExecAs(ctx, cl, late, client.NewTx().Write(mn, addr, []byte{b}))
		if err != nil {
			t.Fatal(err)
		}
		switch got := value(); {
		case !fence && (vote != tuttipb.Vote_VOTE_OK || got != b):
			t.Fatalf("unfenced late attempt: vote %v, value %q; want it applied (the case fences exist for)", vote, got)
		case fence && (vote != tuttipb.Vote_VOTE_BAD_FORCED || got == b):
			t.Fatalf("fenced late attempt: vote %v, value %q; want BAD-FORCED and nothing written", vote, got)
		}
	}
}

// An unknown outcome names its attempt (Error.TID), and a fence of it
// taken while the attempt sits uncommitted in the leader's log is ordered
// after it: the read shows it, and the attempt stays applied.
func TestUnknownOutcomeNamesItsAttempt(t *testing.T) {
	const mn, addr = 1, 0x2100
	f := cluster.NewFaults()
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2, WrapTransport: f.Wrap})
	cl := newClient(t, c.Seeds())
	ctx := ctxT(t)
	if _, err := cl.Exec(ctx, client.NewTx().Write(mn, addr, []byte{'0'})); err != nil {
		t.Fatal(err)
	}
	f.HoldAppends(mn)
	defer f.ReleaseAppends()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := cl.Exec(short, client.NewTx().Write(mn, addr, []byte{'1'}))
	cancel()
	var e *client.Error
	if !errors.As(err, &e) || !errors.Is(err, client.ErrUnknownOutcome) || e.TID == (client.TID{}) {
		t.Fatalf("write with appends held: %v; want an unknown outcome naming its tid", err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		f.ReleaseAppends()
	}()
	res, err := cl.Exec(ctx, client.NewTx().Read(mn, addr, 1).Fence(e.TID))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Reads[0][0]; got != '1' {
		t.Fatalf("fenced read after the pending attempt: %q, want 1", got)
	}
	// Fences need one memnode.
	if _, err := cl.Exec(ctx, client.NewTx().Read(0, 0, 1).Read(mn, addr, 1).Fence(e.TID)); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("fence across memnodes: %v, want ErrInvalid", err)
	}
}

// A fence settles an attempt only on the memnode the attempt ran on:
// elsewhere the memnode records a tid that never arrives there, and the
// attempt, still on its way to its own memnode, lands after the settling
// read said it had not. Settle (and Queue.Enqueued) take the attempt's
// error, which names its memnode, so they refuse such a settling step with
// ErrInvalid before sending anything, rather than answer as if settled.
func TestSettleRefusesAnAttemptOfAnotherMemnode(t *testing.T) {
	const mn, other, addr = 1, 0, 0x2200
	_, cl, transit := inTransit(t)
	ctx := ctxT(t)
	if _, err := cl.Exec(ctx, client.NewTx().Write(mn, addr, []byte{'0'})); err != nil {
		t.Fatal(err)
	}
	transit.Arm(mn)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := cl.Exec(short, client.NewTx().Write(mn, addr, []byte{'1'}))
	cancel()
	if _, held := transit.Held(); !held || client.UnknownAttempt(err) == (client.TID{}) {
		t.Fatalf("write taken aside in transit: held %v, err %v; want an unknown outcome naming its attempt", held, err)
	}
	attempt := fmt.Errorf("update: %w", err) // as a caller passes it on

	// On another memnode: refused, and nothing sent (its write did not apply).
	wrong := client.NewTx().Read(other, addr, 1).Write(other, addr+8, []byte{'s'})
	if res, err := cl.Settle(ctx, wrong, attempt); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("Settle on memnode %d of an attempt on memnode %d: %+v, %v; want ErrInvalid (the fence would settle nothing)", other, mn, res, err)
	}
	res, err := cl.Exec(ctx, client.NewTx().Read(other, addr+8, 1))
	if err != nil {
		t.Fatal(err)
	}
	if res.Reads[0][0] == 's' {
		t.Fatalf("a refused Settle applied its write")
	}
	q, err := client.OpenQueue(ctx, cl, client.QueueConfig{Memnode: other, Base: 0x1000, Capacity: 8, SlotSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	if landed, err := q.Enqueued(ctx, 0, item("x"), attempt); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("Enqueued on memnode %d with an attempt on memnode %d: %v, %v; want ErrInvalid", other, mn, landed, err)
	}

	// On its own memnode it settles: not there now, and never after.
	res, err = cl.Settle(ctx, client.NewTx().Read(mn, addr, 1), attempt)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Reads[0][0]; got != '0' {
		t.Fatalf("settling read before the attempt arrived: %q, want 0", got)
	}
	if err := transit.Release(); err != nil {
		t.Fatal(err)
	}
	res, err = cl.Exec(ctx, client.NewTx().Read(mn, addr, 1))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Reads[0][0]; got != '0' {
		t.Fatalf("the settled attempt landed after the settling read: %q, want 0", got)
	}
}
