package gcs_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// The steps that settle an attempt of unknown outcome (a link, view
// change, index claim, delete or state publication) fence it on the
// memnode they read. A fence on another memnode than the attempt's
// settles nothing: the read calls the attempt not applied while it can
// still land. gcs built its fences with Tx.Fence, which cannot tell, and
// answered; it now settles through client.Client.Settle, which refuses
// such a step (ErrInvalid) before sending anything. On the attempt's
// memnode the step settles it as before.
func TestSettlingRefusesAnAttemptOfAnotherMemnode(t *testing.T) {
	const addr = 1 << 39 // no gcs structure there
	e := newEnv(t)
	cl, transit := e.transitClient()
	n := e.nodeWith("a", gcs.Config{Client: cl, GCInterval: time.Hour})
	m := e.join(n, "g")
	defer m.leave()
	gi := describe(t, n, "g", "the group", func(gcs.GroupInfo) bool { return true })
	mn, other := gi.Home, (gi.Home+1)%3
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// An attempt on other, taken aside on its way: its outcome is unknown.
	if _, err := cl.Exec(ctx, client.NewTx().Write(other, addr, []byte{'0'})); err != nil {
		t.Fatal(err)
	}
	transit.Arm(other)
	short, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := cl.Exec(short, client.NewTx().Write(other, addr, []byte{'1'}))
	scancel()
	if _, held := transit.Held(); !held || client.UnknownAttempt(err) == (client.TID{}) {
		t.Fatalf("write taken aside: held %v, err %v; want an unknown outcome naming its attempt", held, err)
	}
	attempt := fmt.Errorf("link: %w", err)

	// Settled on mn, where it never runs: refused, nothing sent.
	if b, err := gcs.SettleRead(ctx, n, mn, addr, 1, attempt); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("settling read on memnode %d of an attempt on memnode %d: %q, %v; want ErrInvalid", mn, other, b, err)
	}
	if committed, err := gcs.SettleLink(ctx, m.g, gi.Tail, attempt); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("settling a link on memnode %d with an attempt on memnode %d: committed %v, %v; want ErrInvalid", mn, other, committed, err)
	}
	if k := transit.Fences(mn); k != 0 {
		t.Fatalf("%d fenced requests sent to memnode %d; want none", k, mn)
	}

	// On its own memnode it settles: not there now, and never after.
	b, err := gcs.SettleRead(ctx, n, other, addr, 1, attempt)
	if err != nil || string(b) != "0" || transit.Fences(other) == 0 {
		t.Fatalf("settling read on the attempt's memnode: %q, %v, %d fenced requests; want 0, some (a retry or a redirect sends it again)", b, err, transit.Fences(other))
	}
	if err := transit.Release(); err != nil {
		t.Fatal(err)
	}
	res, err := cl.Exec(ctx, client.NewTx().Read(other, addr, 1))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Reads[0][0]; got != '0' {
		t.Fatalf("the settled attempt landed after the settling read: %q, want 0", got)
	}
}
