package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// A client whose clock is behind the memnodes' by more than their horizon
// (60 s by default) has every fresh tid refused: a one-phase attempt with
// ErrFenced, a Prepare with BAD-FORCED. A new tid of the same clock is
// refused again, so the two-phase path must not spend its retry budget on
// it and end with ErrContention ("items still locked"): it ends, as the
// one-phase path does, with ErrFenced, and nothing is applied.
func TestClockBehindHorizonIsFenced(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 2})
	cl := newClient(t, c.Seeds())
	mustExec(t, cl, client.NewTx().Write(0, 0x3000, []byte{'0'}).Write(1, 0x3000, []byte{'0'}))

	ctx := ctxT(t)
	cfg := client.Config{Seeds: c.Seeds(), Now: func() time.Time { return time.Now().Add(-2 * time.Minute) }}
	late, err := client.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	for _, tc := range []struct {
		name string
		tx   *client.Tx
	}{
		{"one-phase", client.NewTx().Write(0, 0x3000, []byte{'1'})},
		{"two-phase", client.NewTx().Write(0, 0x3000, []byte{'2'}).Write(1, 0x3000, []byte{'2'})},
	} {
		short, cancel := context.WithTimeout(ctx, 15*time.Second)
		res, err := late.Exec(short, tc.tx)
		cancel()
		if !errors.Is(err, client.ErrFenced) {
			t.Errorf("%s with the clock 2 min behind: %+v, %v; want ErrFenced", tc.name, res, err)
		}
	}
	r := mustExec(t, cl, client.NewTx().Read(0, 0x3000, 1).Read(1, 0x3000, 1))
	if string(r.Reads[0])+string(r.Reads[1]) != "00" {
		t.Fatalf("a refused attempt applied: %q %q", r.Reads[0], r.Reads[1])
	}
}
