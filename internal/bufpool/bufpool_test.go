package bufpool

import (
	"bytes"
	"runtime"
	"slices"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestGetLengthsAndReuse(t *testing.T) {
	p := &pool{}
	for _, n := range []int{0, 1, 255, 256, 257, 4096, 40 << 10, 1 << 20, 4 << 20, 4<<20 + 1} {
		b := p.Get(n)
		if len(*b) != n {
			t.Fatalf("Get(%d): length %d", n, len(*b))
		}
		if n > 0 && n <= 4<<20 && cap(*b)&(cap(*b)-1) != 0 {
			t.Fatalf("Get(%d): capacity %d is not a power of two", n, cap(*b))
		}
		if n > 256 && n <= 4<<20 && cap(*b) >= 2*n {
			t.Fatalf("Get(%d): capacity %d, want the smallest power of two >= n", n, cap(*b))
		}
		p.Put(b)
	}
	// A buffer put back serves a later Get of its tier, resliced to the
	// length asked for (whatever capacity a foreign buffer has).
	odd := make([]byte, 10, 3000) // tier 2048
	p.Put(&odd)
	for range 100 { // sync.Pool may drop it; it never hands out a short one
		b := p.Get(2000)
		if len(*b) != 2000 || cap(*b) < 2000 {
			t.Fatalf("Get(2000): len %d cap %d", len(*b), cap(*b))
		}
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, n := range []int{10, 5000, 300 << 10} {
		in := wrapperspb.Bytes(bytes.Repeat([]byte{7}, n))
		data, err := Codec.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		// Split it across buffers, as frames arrive.
		flat := data.Materialize()
		data.Free()
		var parts mem.BufferSlice
		for i := 0; i < len(flat); i += 1000 {
			parts = append(parts, mem.SliceBuffer(flat[i:min(i+1000, len(flat))]))
		}
		out := &wrapperspb.BytesValue{}
		if err := Codec.Unmarshal(parts, out); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.GetValue(), in.GetValue()) {
			t.Fatalf("%d bytes: round trip changed the message", n)
		}
	}
	if _, err := Codec.Marshal("not a message"); err == nil {
		t.Fatal("Marshal of a non-message: no error")
	}
}

// Buffers of the large tiers survive garbage collections (up to
// keptPerTier of each), which empty a sync.Pool: a process that collects
// often would otherwise allocate and clear them anew.
func TestLargeBuffersKeptAcrossGC(t *testing.T) {
	p := &pool{}
	var put []*[]byte
	for range keptPerTier + 2 {
		put = append(put, p.Get(1<<20))
	}
	for _, b := range put {
		p.Put(b)
	}
	runtime.GC()
	runtime.GC()
	runtime.GC()
	for i := range keptPerTier {
		b := p.Get(1<<20 - 5)
		if len(*b) != 1<<20-5 {
			t.Fatalf("length %d", len(*b))
		}
		if !slices.Contains(put, b) {
			t.Fatalf("Get %d after collections: a new buffer, not one put back", i)
		}
	}
}
