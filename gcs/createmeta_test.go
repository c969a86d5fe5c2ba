package gcs_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// A new group's metadata initialisation whose outcome is unknown because
// the request is still on its way to the leader: createMeta used to write
// again with the ended context (which fails), free the region and return.
// The region is then allocated to someone else, and the first write,
// arriving late, overwrites the new owner's bytes with a group header.
func TestCreateMetaInTransitDoesNotClobberReusedRegion(t *testing.T) {
	e := newEnv(t)
	cl, transit := e.transitClient()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := e.nodeWith("p0", gcs.Config{GCInterval: time.Hour, Client: cl})
	const home = 1
	transit.ArmFunc(home, func(r *tuttipb.Request) bool {
		return bytes.HasPrefix(r.GetWrites()[0].GetData(), []byte(gcs.MetaMagic))
	})
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := gcs.CreateMeta(short, n, home)
	cancelShort()
	held := transit.HeldRequest()
	if held == nil {
		t.Fatalf("the initialisation was not taken aside (createMeta: %v)", err)
	}
	w := held.GetWrites()[0]
	// Whatever createMeta returned, a region it did not keep may go to
	// another owner at once.
	r2, err := gcs.AllocOn(ctx, n, home, uint64(len(w.GetData())))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Addr != w.GetAddr() {
		t.Logf("the region was not reused (kept by createMeta, or another block): %#x vs %#x", r2.Addr, w.GetAddr())
	}
	mine := bytes.Repeat([]byte{0xab}, 64)
	if _, err := cl.Exec(ctx, client.NewTx().Write(home, r2.Addr, mine)); err != nil {
		t.Fatal(err)
	}
	if err := transit.Release(); err != nil {
		t.Fatal(err)
	}
	res, err := cl.Exec(ctx, client.NewTx().Read(home, r2.Addr, 64).Logged())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res.Reads[0], mine) {
		t.Fatalf("the late initialisation overwrote the region's new owner: %q", res.Reads[0][:16])
	}
}
