package segs

import "slices"

// Seg is the content B of the bytes [Addr, Addr+len(B)).
type Seg struct {
	Addr uint64
	B    []byte
}

// End is the address after the segment's last byte.
func (g Seg) End() uint64 { return g.Addr + uint64(len(g.B)) }

// Overlay puts n into segs (sorted, disjoint), replacing the bytes it
// overlaps; it returns the segments and the change of their total bytes.
// Segment bytes are never modified, only resliced; segs's array may be.
func Overlay(segs []Seg, n Seg) ([]Seg, int) {
	// The first segment that ends after n starts.
	i, _ := slices.BinarySearchFunc(segs, n.Addr, func(g Seg, a uint64) int {
		if g.End() <= a {
			return -1
		}
		return 1
	})
	j := i // segments [i, j) overlap n
	for j < len(segs) && segs[j].Addr < n.End() {
		j++
	}
	delta := len(n.B)
	var keep []Seg // the parts of segs[i:j] outside n
	for _, g := range segs[i:j] {
		delta -= len(g.B)
		if g.Addr < n.Addr {
			l := Seg{g.Addr, g.B[:n.Addr-g.Addr]}
			keep = append(keep, l)
			delta += len(l.B)
		}
		if g.End() > n.End() {
			r := Seg{n.End(), g.B[n.End()-g.Addr:]}
			keep = append(keep, r)
			delta += len(r.B)
		}
	}
	repl := make([]Seg, 0, len(keep)+1)
	if len(keep) > 0 && keep[0].Addr < n.Addr {
		repl = append(repl, keep[0])
		keep = keep[1:]
	}
	repl = append(repl, n)
	repl = append(repl, keep...)
	return slices.Replace(segs, i, j, repl...), delta
}
