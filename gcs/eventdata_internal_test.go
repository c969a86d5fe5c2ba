package gcs

import (
	"bytes"
	"testing"

	"github.com/tutti-gcs/tutti/client"
)

// fromEvent delivers from an event only when its data holds the header
// words and every log byte from pos to the tail (across the ring's wrap),
// and the known head is not past pos; otherwise delivery reads.
func TestFromEvent(t *testing.T) {
	g := testGroup()
	base, size := g.ref.logBase(), g.ref.logSize
	// The log as a byte ring: position p holds byte(p).
	ring := make([]byte, size)
	fill := func(from, to uint64) {
		for p := from; p < to; p++ {
			ring[p%size] = byte(p)
		}
	}
	vtm := func(view, tail, msgs uint64) []byte {
		b := make([]byte, 24)
		putU64s(b, view, tail, msgs)
		return b
	}
	// event builds an event with the header words (unless hdr is nil) and
	// the log bytes of [from, to) as their ring ranges.
	event := func(hdr []byte, from, to uint64) *client.WatchEvent {
		ev := &client.WatchEvent{Index: 9}
		if hdr != nil {
			ev.Ranges = append(ev.Ranges, client.Range{Addr: g.ref.meta + offView, Len: 24})
			ev.Data = append(ev.Data, hdr)
		}
		items := ringSplit(base, size, from, to-from)
		if len(items) == 2 { // the start of the ring comes first
			items[0], items[1] = items[1], items[0]
		}
		for _, it := range items {
			if it.n == 0 {
				continue
			}
			ev.Ranges = append(ev.Ranges, client.Range{Addr: it.addr, Len: it.n})
			ev.Data = append(ev.Data, bytes.Clone(ring[it.addr-base:it.addr-base+it.n]))
		}
		return ev
	}
	want := func(from, to uint64) []byte {
		var b []byte
		for p := from; p < to; p++ {
			b = append(b, byte(p))
		}
		return b
	}
	g.seen.Store(&header{view: 1, tail: 800, msgs: 3, head: 0, logSize: size, maxMembers: 1})
	fill(0, 1200)

	h, b, ok := g.fromEvent(event(vtm(2, 1200, 9), 800, 1200), 1000)
	if !ok || h.view != 2 || h.tail != 1200 || h.msgs != 9 || h.logSize != size || !bytes.Equal(b, want(1000, 1200)) {
		t.Fatalf("fromEvent = %+v, %d bytes, %v", h, len(b), ok)
	}
	// Older than delivery: nothing to deliver, no read either.
	if h, b, ok := g.fromEvent(event(vtm(2, 1200, 9), 800, 1200), 1200); !ok || h.tail != 1200 || b != nil {
		t.Fatalf("event at the delivered tail: %+v, %v, %v", h, b, ok)
	}
	for _, c := range []struct {
		name string
		ev   *client.WatchEvent
		pos  uint64
	}{
		{"no data", &client.WatchEvent{Ranges: []client.Range{{Addr: g.ref.meta + offView, Len: 24}}}, 1000},
		{"no header", event(nil, 800, 1200), 1000},
		{"log from after pos", event(vtm(2, 1200, 9), 1100, 1200), 1000},
		{"log short of the tail", event(vtm(2, 1300, 9), 800, 1200), 1000},
		{"more than a lap", event(vtm(2, 1000+size+8, 9), 0, size), 1000},
	} {
		if _, _, ok := g.fromEvent(c.ev, c.pos); ok {
			t.Errorf("%s: delivered from the event", c.name)
		}
	}

	// Across the wrap: the event's ranges are at the end and the start of
	// the ring.
	fill(1200, size+500)
	h, b, ok = g.fromEvent(event(vtm(2, size+500, 20), size-300, size+500), size-200)
	if !ok || h.tail != size+500 || !bytes.Equal(b, want(size-200, size+500)) {
		t.Fatalf("across the wrap: %+v, %d bytes, %v", h, len(b), ok)
	}
	// The head (not watched) comes from what delivery knows; past pos,
	// delivery reads (and is evicted if it fell behind).
	g.head.Store(size - 100)
	if _, _, ok := g.fromEvent(event(vtm(2, size+500, 20), size-300, size+500), size-200); ok {
		t.Fatal("delivered from an event below the known head")
	}
	if h, _, ok := g.fromEvent(event(vtm(2, size+500, 20), size-300, size+500), size-50); !ok || h.head != size-100 {
		t.Fatalf("head %d, %v: want the known head", h.head, ok)
	}
}
