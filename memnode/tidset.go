package memnode

import (
	"maps"
	"math/bits"
	"slices"
)

// tidSet maps tids to a small non-zero value (1..3), as a map[TID]uint8
// would, but laid out for the way coordinators number tids: each client's
// seqs grow, so the tids of one client that a memnode records are dense runs
// of seqs. Per client, a sorted slice of blocks covers 64 consecutive seqs
// each, with the values as two bitmaps (2 bits per seq) and the exact Time
// of every recorded seq. Recording or looking up a recent tid touches the
// last block or two of its client, which stay in cache; a set of a million
// tids takes a few MB instead of tens, and no hashing.
//
// Semantics are exactly a map's, keyed by the whole TID: a tid whose
// (Client, Seq) is recorded with another Time (a client reusing its id
// after a restart) goes to the small overflow map. sweep removes exactly the
// entries dated before a cutoff. Iteration (each) is in TID.Compare order,
// so the contents, not the insertion history, decide what is encoded.
type tidSet struct {
	clients map[uint64]*tidRun
	// over holds entries whose (Client, Seq) slot holds another Time.
	over  map[TID]uint8
	count [4]int // entries per value
}

// tidRun is one client's blocks, sorted by base, none empty.
type tidRun struct {
	blocks []tidBlock
}

const tidBlockBits = 64

// tidBlock holds the recorded seqs base..base+63 of one client.
type tidBlock struct {
	base uint64 // a multiple of 64
	// The value of seq base+i is bit i of hi, bit i of lo (0: absent).
	lo, hi           uint64
	minTime, maxTime int64   // over the recorded seqs
	times            []int64 // Time of each recorded seq, in seq order
}

func (b *tidBlock) present() uint64 { return b.lo | b.hi }

// rank is the index in times of the seq whose bit is bit.
func (b *tidBlock) rank(bit uint64) int { return bits.OnesCount64(b.present() & (bit - 1)) }

func (b *tidBlock) value(bit uint64) uint8 {
	var v uint8
	if b.lo&bit != 0 {
		v |= 1
	}
	if b.hi&bit != 0 {
		v |= 2
	}
	return v
}

func (b *tidBlock) setValue(bit uint64, v uint8) {
	b.lo &^= bit
	b.hi &^= bit
	if v&1 != 0 {
		b.lo |= bit
	}
	if v&2 != 0 {
		b.hi |= bit
	}
}

// counts adds the block's entries per value to c (sign +1 or -1).
func (b *tidBlock) counts(c *[4]int, sign int) {
	c[1] += sign * bits.OnesCount64(b.lo&^b.hi)
	c[2] += sign * bits.OnesCount64(b.hi&^b.lo)
	c[3] += sign * bits.OnesCount64(b.lo&b.hi)
}

// find returns the index of the block with this base, or where it would go.
func (r *tidRun) find(base uint64) (int, bool) {
	n := len(r.blocks)
	switch {
	case n == 0 || r.blocks[n-1].base < base:
		return n, false
	case r.blocks[n-1].base == base:
		return n - 1, true
	}
	return slices.BinarySearchFunc(r.blocks, base, func(b tidBlock, base uint64) int {
		switch {
		case b.base < base:
			return -1
		case b.base > base:
			return 1
		}
		return 0
	})
}

// len returns the number of entries with value v.
func (s *tidSet) len(v uint8) int { return s.count[v] }

// get returns tid's value, 0 if absent.
func (s *tidSet) get(t TID) uint8 {
	if r := s.clients[t.Client]; r != nil {
		if i, ok := r.find(t.Seq &^ (tidBlockBits - 1)); ok {
			b := &r.blocks[i]
			bit := uint64(1) << (t.Seq % tidBlockBits)
			if b.present()&bit != 0 && b.times[b.rank(bit)] == t.Time {
				return b.value(bit)
			}
		}
	}
	if len(s.over) > 0 {
		return s.over[t]
	}
	return 0
}

// set records tid with value v (1..3), replacing its value if present.
func (s *tidSet) set(t TID, v uint8) {
	if len(s.over) > 0 {
		if old, ok := s.over[t]; ok {
			s.count[old]--
			s.count[v]++
			s.over[t] = v
			return
		}
	}
	if s.clients == nil {
		s.clients = make(map[uint64]*tidRun)
	}
	r := s.clients[t.Client]
	if r == nil {
		r = &tidRun{}
		s.clients[t.Client] = r
	}
	base := t.Seq &^ (tidBlockBits - 1)
	i, ok := r.find(base)
	if !ok {
		r.blocks = slices.Insert(r.blocks, i, tidBlock{base: base, minTime: t.Time, maxTime: t.Time})
	}
	b := &r.blocks[i]
	bit := uint64(1) << (t.Seq % tidBlockBits)
	k := b.rank(bit)
	if b.present()&bit != 0 {
		if b.times[k] == t.Time {
			s.count[b.value(bit)]--
			s.count[v]++
			b.setValue(bit, v)
			return
		}
		if s.over == nil {
			s.over = make(map[TID]uint8)
		}
		s.over[t] = v
		s.count[v]++
		return
	}
	if b.times == nil {
		b.times = make([]int64, 0, 8)
	}
	b.times = slices.Insert(b.times, k, t.Time)
	b.setValue(bit, v)
	b.minTime = min(b.minTime, t.Time)
	b.maxTime = max(b.maxTime, t.Time)
	s.count[v]++
}

// sweep removes every entry whose Time is before cutoff.
func (s *tidSet) sweep(cutoff int64) {
	for id, r := range s.clients {
		out := r.blocks[:0]
		for _, b := range r.blocks {
			switch {
			case b.maxTime < cutoff:
				b.counts(&s.count, -1)
				continue
			case b.minTime < cutoff:
				b.prune(cutoff, &s.count)
			}
			out = append(out, b)
		}
		clear(r.blocks[len(out):]) // drop the dead blocks' times
		r.blocks = out
		if len(out) == 0 {
			delete(s.clients, id)
		}
	}
	for t, v := range s.over {
		if t.Time < cutoff {
			delete(s.over, t)
			s.count[v]--
		}
	}
}

// prune removes the block's entries dated before cutoff; at least one
// (dated maxTime) stays.
func (b *tidBlock) prune(cutoff int64, count *[4]int) {
	b.counts(count, -1)
	var lo, hi uint64
	kept := b.times[:0]
	b.minTime, b.maxTime = 0, 0
	k := 0
	for p := b.present(); p != 0; p &= p - 1 {
		bit := p & -p
		t := b.times[k]
		k++
		if t < cutoff {
			continue
		}
		if len(kept) == 0 {
			b.minTime, b.maxTime = t, t
		}
		b.minTime, b.maxTime = min(b.minTime, t), max(b.maxTime, t)
		kept = append(kept, t)
		lo |= b.lo & bit
		hi |= b.hi & bit
	}
	b.lo, b.hi, b.times = lo, hi, kept
	b.counts(count, +1)
}

// each calls fn for every entry, in TID.Compare order.
func (s *tidSet) each(fn func(TID, uint8)) {
	over := sortedTIDs(maps.Keys(s.over))
	j := 0
	for _, id := range slices.Sorted(maps.Keys(s.clients)) {
		for bi := range s.clients[id].blocks {
			b := &s.clients[id].blocks[bi]
			k := 0
			for p := b.present(); p != 0; p &= p - 1 {
				bit := p & -p
				t := TID{Client: id, Seq: b.base + uint64(bits.TrailingZeros64(bit)), Time: b.times[k]}
				k++
				for ; j < len(over) && over[j].Compare(t) < 0; j++ {
					fn(over[j], s.over[over[j]])
				}
				fn(t, b.value(bit))
			}
		}
	}
	for ; j < len(over); j++ {
		fn(over[j], s.over[over[j]])
	}
}
