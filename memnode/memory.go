package memnode

import (
	"maps"
	"slices"
)

// The address space: sparse fixed-size pages, allocated on first write.
// Unwritten bytes read as zero. Callers have validated every range against
// Config.Size, so addr+len never overflows here.

const (
	pageShift = 12
	pageSize  = 1 << pageShift

	// A leaf holds the pages of 2 MiB of address space.
	leafShift = 9
	leafPages = 1 << leafShift
)

type page = [pageSize]byte

type leaf = [leafPages]*page

// memory is the byte address space. The zero value is empty. Pages live in
// leaves of leafPages pointers, found by leaf number (addr >> (pageShift +
// leafShift)) in a map; the leaf used last is kept, since consecutive
// pages and items mostly share one. (One map from page number to page,
// as before, cost a lookup per 4 KiB that missed the cache: with the
// pages of a few hundred MiB of gcs queues, 3.3% of the embedded cluster's
// CPU at saturation of `tutti bench mcast`, most of it in the map's
// probing; see BenchmarkMemoryWrite.) A Memnode is used from one goroutine
// at a time, so reads may move the kept leaf too.
type memory struct {
	leaves map[uint64]*leaf
	npages int // pages allocated

	lastN uint64 // leaf number of last, if last != nil
	last  *leaf
}

// leafOf returns the leaf holding page pn, nil if it has none; with alloc
// it allocates a missing one.
func (m *memory) leafOf(pn uint64, alloc bool) *leaf {
	ln := pn >> leafShift
	if m.last != nil && m.lastN == ln {
		return m.last
	}
	l := m.leaves[ln]
	if l == nil {
		if !alloc {
			return nil
		}
		if m.leaves == nil {
			m.leaves = make(map[uint64]*leaf)
		}
		l = new(leaf)
		m.leaves[ln] = l
	}
	m.last, m.lastN = l, ln
	return l
}

// page returns page pn, nil if it was never written.
func (m *memory) page(pn uint64) *page {
	if l := m.leafOf(pn, false); l != nil {
		return l[pn&(leafPages-1)]
	}
	return nil
}

// setPage installs p as page pn, which must not exist yet.
func (m *memory) setPage(pn uint64, p *page) {
	m.leafOf(pn, true)[pn&(leafPages-1)] = p
	m.npages++
}

// eachPage calls f for every allocated page in ascending page number.
func (m *memory) eachPage(f func(pn uint64, p *page)) {
	for _, ln := range slices.Sorted(maps.Keys(m.leaves)) {
		for i, p := range m.leaves[ln] {
			if p != nil {
				f(ln<<leafShift|uint64(i), p)
			}
		}
	}
}

// readInto copies the bytes at [addr, addr+len(dst)) into dst (zeros for
// absent pages).
func (m *memory) readInto(dst []byte, addr uint64) {
	for len(dst) > 0 {
		off := addr & (pageSize - 1)
		n := min(uint64(len(dst)), pageSize-off)
		if p := m.page(addr >> pageShift); p != nil {
			copy(dst[:n], p[off:off+n])
		} else {
			clear(dst[:n])
		}
		dst = dst[n:]
		addr += n
	}
}

// equal reports whether the bytes at [addr, addr+len(want)) equal want.
func (m *memory) equal(addr uint64, want []byte) bool {
	for len(want) > 0 {
		off := addr & (pageSize - 1)
		n := min(uint64(len(want)), pageSize-off)
		if p := m.page(addr >> pageShift); p != nil {
			if string(p[off:off+n]) != string(want[:n]) {
				return false
			}
		} else {
			for _, b := range want[:n] {
				if b != 0 {
					return false
				}
			}
		}
		want = want[n:]
		addr += n
	}
	return true
}

// write stores data at addr, allocating pages as needed.
func (m *memory) write(addr uint64, data []byte) {
	for len(data) > 0 {
		off := addr & (pageSize - 1)
		pn := addr >> pageShift
		p := m.page(pn)
		if p == nil {
			p = new(page)
			m.setPage(pn, p)
		}
		n := copy(p[off:], data)
		data = data[n:]
		addr += uint64(n)
	}
}
