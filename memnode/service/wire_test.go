package service

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// sizeBound never underestimates the encoded size, whatever the field
// values (it lets the server skip proto.Size for small requests).
func TestSizeBoundIsAnUpperBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	big := func() uint64 { return math.MaxUint64 - rng.Uint64N(10) }
	tid := func() *tuttipb.Tid {
		return &tuttipb.Tid{Client: big(), Seq: big(), Time: math.MinInt64 + rng.Int64N(10)}
	}
	for i := range 2000 {
		req := &tuttipb.Request{Id: big(), Memnode: big(), Kind: tuttipb.Kind(rng.IntN(1000)), Tid: tid()}
		for range rng.IntN(5) {
			req.Participants = append(req.Participants, big())
			req.Compares = append(req.Compares, &tuttipb.Compare{Addr: big(), Data: make([]byte, rng.IntN(300))})
			req.Reads = append(req.Reads, &tuttipb.Read{Addr: big(), Len: math.MaxUint32})
			req.Writes = append(req.Writes, &tuttipb.Write{Addr: big(), Data: make([]byte, rng.IntN(20000))})
			req.MoreTids = append(req.MoreTids, tid())
			req.CommitTids = append(req.CommitTids, tid())
			req.AbortTids = append(req.AbortTids, tid())
		}
		if b, s := sizeBound(req), protoSize(req); b < s {
			t.Fatalf("%d: bound %d < size %d", i, b, s)
		}
	}
}

// Many tids with 64-bit fields take 35 bytes each on the wire (three
// 10-byte varints, their tags, the element's tag and length): more than
// the 32 the bound used to allow per repeated element.
func TestSizeBoundManyLargeTids(t *testing.T) {
	tid := &tuttipb.Tid{Client: math.MaxUint64, Seq: math.MaxUint64, Time: math.MinInt64}
	req := &tuttipb.Request{Kind: tuttipb.Kind_KIND_COMMIT, Tid: tid}
	for range 1024 {
		req.MoreTids = append(req.MoreTids, tid)
		req.CommitTids = append(req.CommitTids, tid)
		req.AbortTids = append(req.AbortTids, tid)
		req.FenceTids = append(req.FenceTids, tid)
	}
	if b, s := sizeBound(req), protoSize(req); b < s {
		t.Fatalf("bound %d < size %d", b, s)
	}
}
