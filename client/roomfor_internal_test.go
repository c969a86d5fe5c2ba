package client

import (
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// roomFor must bound the encoded request with the decisions it lets ride:
// a host refuses a request over maxRequestBytes as invalid, and the
// request, valid on its own, would fail because of decisions of other
// minitransactions. A fenced Exec (Client.Settle) near the limit, with as
// many fences and carried decisions as the item limit allows, each tid as
// long as its encoding can be (the wire allows any uint64 client id and
// seq; a tid's time, zig-zag encoded, takes 9 bytes today).
func TestRoomForBoundsCarriedDecisions(t *testing.T) {
	const limit = 1024 // MaxItems: the most fences and decisions per request
	now := time.Now().UnixNano()
	for _, tid := range []*tuttipb.Tid{
		{Client: 1<<63 | 12345, Seq: 1 << 20, Time: now}, // a client's tids today
		{Client: math.MaxUint64, Seq: math.MaxUint64, Time: math.MinInt64},
	} {
		fences := make([]*tuttipb.Tid, limit)
		decided := make([]*tuttipb.Tid, limit)
		for i := range fences {
			fences[i], decided[i] = tid, tid
		}
		// The largest write roomFor accepts with limit decisions.
		req := &tuttipb.Request{Id: math.MaxUint64, Memnode: math.MaxUint64, Kind: tuttipb.Kind_KIND_EXEC, Tid: tid,
			FenceTids: fences, Writes: []*tuttipb.Write{{Addr: math.MaxUint64}}}
		lo, hi := 0, maxRequestBytes
		for lo < hi {
			mid := (lo + hi + 1) / 2
			req.Writes[0].Data = make([]byte, mid)
			if roomFor(req, limit) {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		req.Writes[0].Data = make([]byte, lo)
		if !roomFor(req, limit) {
			continue // no room at all: nothing rides
		}
		if n := proto.Size(req); n > maxRequestBytes {
			t.Fatalf("tid %v: the request alone is %d bytes, over the limit: the test is wrong", tid, n)
		}
		req.CommitTids = decided
		if n := proto.Size(req); n > maxRequestBytes {
			t.Errorf("tid %v: roomFor let %d decisions ride on an Exec with %d fences and %d bytes of writes: %d bytes, over the hosts' limit of %d",
				tid, limit, len(fences), lo, n, maxRequestBytes)
		}
	}
}

// roomFor counts appends and relocs: an Exec of as many appends and relocs
// as the item limit allows, each field as long as it can be, with the
// largest data roomFor accepts, stays within the limit with the decisions.
func TestRoomForCountsAppends(t *testing.T) {
	const limit = 1024
	tid := &tuttipb.Tid{Client: math.MaxUint64, Seq: math.MaxUint64, Time: math.MinInt64}
	req := &tuttipb.Request{Id: math.MaxUint64, Memnode: math.MaxUint64, Kind: tuttipb.Kind_KIND_EXEC, Tid: tid}
	for range limit {
		req.Appends = append(req.Appends, &tuttipb.Append{Tail: math.MaxUint64, Head: math.MaxUint64,
			Limit: math.MaxUint64, Ring: math.MaxUint64, Size: math.MaxUint64, Count: math.MaxUint64,
			Add: math.MaxUint64, Data: []byte{1}})
		req.Relocs = append(req.Relocs, &tuttipb.Reloc{Append: math.MaxUint32, Count: true, Write: true,
			Item: math.MaxUint32, Off: math.MaxUint32})
	}
	lo, hi := 0, maxRequestBytes
	for lo < hi {
		mid := (lo + hi + 1) / 2
		req.Appends[0].Data = make([]byte, mid)
		if roomFor(req, limit) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	req.Appends[0].Data = make([]byte, lo)
	decided := make([]*tuttipb.Tid, limit)
	for i := range decided {
		decided[i] = tid
	}
	req.CommitTids = decided
	if n := proto.Size(req); n > maxRequestBytes {
		t.Fatalf("roomFor let %d decisions ride on %d appends: %d bytes, over the limit of %d", limit, limit, n, maxRequestBytes)
	}
}
