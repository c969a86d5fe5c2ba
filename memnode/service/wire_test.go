package service

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/memnode"
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
			req.FenceTids = append(req.FenceTids, tid())
			req.Appends = append(req.Appends, &tuttipb.Append{Tail: big(), Head: big(), Limit: big(), Ring: big(),
				Size: big(), Count: big(), Add: big(), Data: make([]byte, rng.IntN(300))})
			req.Relocs = append(req.Relocs, &tuttipb.Reloc{Append: math.MaxUint32, Count: true, Write: true,
				Item: math.MaxUint32, Off: math.MaxUint32})
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

// Many appends and relocs with 64-bit fields: the bound allows for them.
func TestSizeBoundManyAppends(t *testing.T) {
	req := &tuttipb.Request{Kind: tuttipb.Kind_KIND_EXEC}
	for range 1024 {
		req.Appends = append(req.Appends, &tuttipb.Append{Tail: math.MaxUint64, Head: math.MaxUint64,
			Limit: math.MaxUint64, Ring: math.MaxUint64, Size: math.MaxUint64, Count: math.MaxUint64,
			Add: math.MaxUint64, Data: []byte{1}})
		req.Relocs = append(req.Relocs, &tuttipb.Reloc{Append: math.MaxUint32, Count: true, Write: true,
			Item: math.MaxUint32, Off: math.MaxUint32})
	}
	if b, s := sizeBound(req), protoSize(req); b < s {
		t.Fatalf("bound %d < size %d", b, s)
	}
}

// opFromWire carries every field of appends and relocs.
func TestOpFromWireAppends(t *testing.T) {
	req := &tuttipb.Request{
		Appends: []*tuttipb.Append{{Tail: 1, Head: 2, Limit: 3, Ring: 4, Size: 5, Count: 6, Add: 7, Data: []byte("d")}},
		Relocs:  []*tuttipb.Reloc{{Append: 1, Count: true, Write: true, Item: 2, Off: 3}},
	}
	op := opFromWire(req)
	if len(op.Appends) != 1 || len(op.Relocs) != 1 {
		t.Fatalf("op %+v", op)
	}
	a, r := op.Appends[0], op.Relocs[0]
	if a.Tail != 1 || a.Head != 2 || a.Limit != 3 || a.Ring != 4 || a.Size != 5 || a.Count != 6 || a.Add != 7 || string(a.Data) != "d" {
		t.Fatalf("append %+v", a)
	}
	if r != (memnode.Reloc{Append: 1, Count: true, Write: true, Item: 2, Off: 3}) {
		t.Fatalf("reloc %+v", r)
	}
}

// Appends travel under KIND_EXEC_APPEND (a kind hosts built before appends
// refuse, rather than apply the rest of the request without them); a host
// also takes them under KIND_EXEC, as clients built before that kind send
// them. Fences ride on either. A kind it does not know is refused before
// anything is proposed.
func TestExecAppendKind(t *testing.T) {
	fp := &fakeProposer{}
	s := newServer(1, map[uint64]string{1: "a:1"}, []MemnodeSpec{{ID: 0, Replicas: []uint64{1}}},
		memnode.DefaultConfig(), WallClock, zerolog.Nop(), fp)
	req := func(kind tuttipb.Kind) *tuttipb.Request {
		return &tuttipb.Request{Id: 1, Memnode: 0, Kind: kind,
			Tid:       &tuttipb.Tid{Client: 1, Seq: 1, Time: time.Now().UnixNano()},
			FenceTids: []*tuttipb.Tid{{Client: 2, Seq: 1, Time: time.Now().UnixNano()}},
			Appends:   []*tuttipb.Append{{Tail: 0, Head: 8, Limit: 4096, Ring: 4096, Size: 4096, Data: []byte("record")}}}
	}
	for i, kind := range []tuttipb.Kind{tuttipb.Kind_KIND_EXEC_APPEND, tuttipb.Kind_KIND_EXEC, tuttipb.Kind(8)} {
		ob := newOutbox()
		s.handle(req(kind), ob)
		if len(ob.mu.pending) != 1 {
			t.Fatalf("%v: %d responses, want 1", kind, len(ob.mu.pending))
		}
		r := ob.mu.pending[0]
		want := tuttipb.Status_STATUS_OK
		if i == 2 {
			want = tuttipb.Status_STATUS_INVALID
		}
		if r.GetStatus() != want || fp.proposed != min(i+1, 2) {
			t.Fatalf("%v: status %v (%s), %d proposed so far; want %v", kind, r.GetStatus(), r.GetError(), fp.proposed, want)
		}
	}
}
