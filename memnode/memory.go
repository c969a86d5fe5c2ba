package memnode

// The address space: sparse fixed-size pages, allocated on first write.
// Unwritten bytes read as zero. Callers have validated every range against
// Config.Size, so addr+len never overflows here.

const (
	pageShift = 12
	pageSize  = 1 << pageShift
)

type page = [pageSize]byte

// memory is the byte address space. The zero value is empty; pages maps a
// page number (addr >> pageShift) to its contents.
type memory struct {
	pages map[uint64]*page
}

// readInto copies the bytes at [addr, addr+len(dst)) into dst (zeros for
// absent pages).
func (m *memory) readInto(dst []byte, addr uint64) {
	for len(dst) > 0 {
		off := addr & (pageSize - 1)
		n := min(uint64(len(dst)), pageSize-off)
		if p := m.pages[addr>>pageShift]; p != nil {
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
		if p := m.pages[addr>>pageShift]; p != nil {
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
