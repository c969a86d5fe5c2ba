package memnode

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// The address space reads back what was written, byte for byte, across
// page and leaf boundaries and far apart; unwritten bytes read as zero;
// pages are counted and listed in order; the kept leaf never answers for
// another one.
func TestMemoryMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const leafBytes = leafPages * pageSize
	// Around leaf boundaries, and in leaves far from each other.
	bases := []uint64{0, leafBytes - 3000, 2*leafBytes - 100, 5 * leafBytes, 1 << 39, 1<<40 - 3*pageSize}
	var m memory
	model := map[uint64]byte{}
	pages := map[uint64]bool{}
	for i := range 3000 {
		addr := bases[r.IntN(len(bases))] + uint64(r.IntN(3*pageSize))
		n := 1 + r.IntN(2*pageSize)
		if addr+uint64(n) > 1<<40 {
			n = int(1<<40 - addr)
		}
		switch r.IntN(3) {
		case 0:
			data := make([]byte, n)
			for j := range data {
				data[j] = byte(r.Uint32())
				model[addr+uint64(j)] = data[j]
				pages[(addr+uint64(j))>>pageShift] = true
			}
			m.write(addr, data)
		case 1:
			got := bytes.Repeat([]byte{0xee}, n)
			m.readInto(got, addr)
			for j := range got {
				if want := model[addr+uint64(j)]; got[j] != want {
					t.Fatalf("op %d: byte at 0x%x reads %d, want %d", i, addr+uint64(j), got[j], want)
				}
			}
		case 2:
			want := make([]byte, n)
			for j := range want {
				want[j] = model[addr+uint64(j)]
			}
			if !m.equal(addr, want) {
				t.Fatalf("op %d: equal(0x%x, %d bytes as written) is false", i, addr, n)
			}
			want[r.IntN(n)]++
			if m.equal(addr, want) {
				t.Fatalf("op %d: equal(0x%x) true for bytes that differ", i, addr)
			}
		}
	}
	if m.npages != len(pages) {
		t.Fatalf("%d pages counted, %d written", m.npages, len(pages))
	}
	var listed []uint64
	m.eachPage(func(pn uint64, p *page) {
		if p == nil {
			t.Fatalf("page %d listed without contents", pn)
		}
		listed = append(listed, pn)
	})
	want := slices.Sorted(func(yield func(uint64) bool) {
		for pn := range pages {
			if !yield(pn) {
				return
			}
		}
	})
	if !slices.Equal(listed, want) {
		t.Fatalf("pages listed %v, want %v", listed, want)
	}
}

// mapMemory is the address space as it was before leaves: one map from
// page number to page. BenchmarkMemoryWrite compares against it.
type mapMemory struct{ pages map[uint64]*page }

func (m *mapMemory) write(addr uint64, data []byte) {
	for len(data) > 0 {
		off := addr & (pageSize - 1)
		pn := addr >> pageShift
		p := m.pages[pn]
		if p == nil {
			if m.pages == nil {
				m.pages = make(map[uint64]*page)
			}
			p = new(page)
			m.pages[pn] = p
		}
		n := copy(p[off:], data)
		data = data[n:]
		addr += uint64(n)
	}
}

// BenchmarkMemoryWrite writes 256 KiB batches round a ring of queues, as a
// gcs memnode's apply does at saturation, with 512 MiB of pages allocated:
// the map per page (before) against leaves.
func BenchmarkMemoryWrite(b *testing.B) {
	const ring, chunk = 512 << 20, 256 << 10
	data := bytes.Repeat([]byte{1}, chunk)
	for _, impl := range []string{"map", "leaves"} {
		b.Run(fmt.Sprintf("impl=%s", impl), func(b *testing.B) {
			var mm mapMemory
			var lm memory
			write := lm.write
			if impl == "map" {
				write = mm.write
			}
			for a := uint64(0); a < ring; a += chunk {
				write(a, data)
			}
			b.SetBytes(chunk)
			var a uint64
			for b.Loop() {
				write(a, data)
				a = (a + chunk) % ring
			}
		})
	}
}
