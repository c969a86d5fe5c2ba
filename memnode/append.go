package memnode

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
)

// Appends (doc.go, "Append"): the memnode takes a ring position when it
// applies the entry, so concurrent appenders never race on the tail.

// word is an 8-byte counter word [addr, addr+8) of an append.
type word struct {
	addr uint64
	what string // "tail", "head" or "count", for errors
	item int    // the append's index
}

// validateAppends checks op's appends and relocs (ValidateOp has checked
// the kind, the item count and the other items). Rules, each an ErrInvalid:
//   - Size is a power of two; the ring [Ring, Ring+Size) lies within the
//     address space; Limit <= Size; Data is 1..min(Size, MaxItemBytes)
//     bytes; Count == 0 implies Add == 0;
//   - the Tail, Head and Count words lie within the address space and,
//     over all appends, any two counter words are the same word or do not
//     overlap; one append's Tail, Head and Count are three different words;
//     no counter word overlaps any append's ring, nor any write item;
//   - at most MaxItems relocs, each naming an existing append and an
//     existing target item, with [Off, Off+8) inside the target's data.
func (c Config) validateAppends(op *Op) error {
	if len(op.Relocs) > c.MaxItems {
		return fmt.Errorf("%w: %d relocs exceed the limit of %d", ErrInvalid, len(op.Relocs), c.MaxItems)
	}
	var inline [12]word
	words := inline[:0]
	for i := range op.Appends {
		a := &op.Appends[i]
		switch {
		case a.Size == 0 || a.Size&(a.Size-1) != 0:
			return fmt.Errorf("%w: append %d: ring size %d is not a power of two", ErrInvalid, i, a.Size)
		case a.Ring+a.Size < a.Ring || a.Ring+a.Size > c.Size:
			return fmt.Errorf("%w: append %d: ring at 0x%x of %d bytes exceeds memnode size 0x%x", ErrInvalid, i, a.Ring, a.Size, c.Size)
		case a.Limit > a.Size:
			return fmt.Errorf("%w: append %d: limit %d exceeds the ring size %d", ErrInvalid, i, a.Limit, a.Size)
		case len(a.Data) == 0:
			return fmt.Errorf("%w: append %d: no data", ErrInvalid, i)
		case uint64(len(a.Data)) > a.Size:
			return fmt.Errorf("%w: append %d: %d bytes exceed the ring size %d", ErrInvalid, i, len(a.Data), a.Size)
		case uint64(len(a.Data)) > uint64(c.MaxItemBytes):
			return fmt.Errorf("%w: append %d: %d bytes exceed the limit of %d bytes", ErrInvalid, i, len(a.Data), c.MaxItemBytes)
		case a.Count == 0 && a.Add != 0:
			return fmt.Errorf("%w: append %d: adds %d to no count word", ErrInvalid, i, a.Add)
		}
		words = append(words, word{a.Tail, "tail", i}, word{a.Head, "head", i})
		if a.Count != 0 {
			words = append(words, word{a.Count, "count", i})
		}
		own := words[len(words)-2:]
		if a.Count != 0 {
			own = words[len(words)-3:]
		}
		for j, w := range own {
			if w.addr+8 < w.addr || w.addr+8 > c.Size {
				return fmt.Errorf("%w: append %d: %s word at 0x%x exceeds memnode size 0x%x", ErrInvalid, i, w.what, w.addr, c.Size)
			}
			for _, v := range own[:j] {
				if overlaps(w.addr, 8, v.addr, 8) {
					return fmt.Errorf("%w: append %d: %s word at 0x%x overlaps its %s word at 0x%x", ErrInvalid, i, w.what, w.addr, v.what, v.addr)
				}
			}
		}
	}
	slices.SortFunc(words, func(a, b word) int {
		switch {
		case a.addr < b.addr:
			return -1
		case a.addr > b.addr:
			return 1
		}
		return 0
	})
	for j := 1; j < len(words); j++ {
		if v, w := words[j-1], words[j]; w.addr != v.addr && w.addr < v.addr+8 {
			return fmt.Errorf("%w: append %d's %s word at 0x%x partly overlaps append %d's %s word at 0x%x",
				ErrInvalid, w.item, w.what, w.addr, v.item, v.what, v.addr)
		}
	}
	// firstOver returns a counter word overlapping [addr, addr+n), if any:
	// words are sorted and at most one can start in [addr-7, addr).
	firstOver := func(addr, n uint64) (word, bool) {
		k, _ := slices.BinarySearchFunc(words, addr, func(w word, a uint64) int {
			if w.addr+8 <= a {
				return -1
			}
			return 1
		})
		if k < len(words) && words[k].addr < addr+n {
			return words[k], true
		}
		return word{}, false
	}
	for i := range op.Appends {
		a := &op.Appends[i]
		if w, ok := firstOver(a.Ring, a.Size); ok {
			return fmt.Errorf("%w: append %d's %s word at 0x%x lies in append %d's ring [0x%x, 0x%x)",
				ErrInvalid, w.item, w.what, w.addr, i, a.Ring, a.Ring+a.Size)
		}
	}
	for i := range op.Writes {
		w := &op.Writes[i]
		if v, ok := firstOver(w.Addr, uint64(len(w.Data))); ok {
			return fmt.Errorf("%w: write item %d at [0x%x, 0x%x) overlaps append %d's %s word at 0x%x",
				ErrInvalid, i, w.Addr, w.Addr+uint64(len(w.Data)), v.item, v.what, v.addr)
		}
	}
	for i, r := range op.Relocs {
		if int64(r.Append) >= int64(len(op.Appends)) {
			return fmt.Errorf("%w: reloc %d: no append %d (of %d)", ErrInvalid, i, r.Append, len(op.Appends))
		}
		var n int
		if r.Write {
			if int64(r.Item) >= int64(len(op.Writes)) {
				return fmt.Errorf("%w: reloc %d: no write item %d (of %d)", ErrInvalid, i, r.Item, len(op.Writes))
			}
			n = len(op.Writes[r.Item].Data)
		} else {
			if int64(r.Item) >= int64(len(op.Appends)) {
				return fmt.Errorf("%w: reloc %d: no append %d (of %d)", ErrInvalid, i, r.Item, len(op.Appends))
			}
			n = len(op.Appends[r.Item].Data)
		}
		if uint64(r.Off)+8 > uint64(n) {
			return fmt.Errorf("%w: reloc %d: bytes [%d, %d) outside the target's %d bytes", ErrInvalid, i, r.Off, uint64(r.Off)+8, n)
		}
	}
	return nil
}

func overlaps(a, n, b, m uint64) bool { return a < b+m && b < a+n }

// placement is where one append goes, computed from the state at apply.
type placement struct {
	Appended        // old t and old c
	refused  bool   // t+len-h > Limit, or t+len overflows
	newT     uint64 // t + len(Data)
}

// counterAt reads the counter word at addr as the appends placed so far
// left it: the last value set in (addrs, vals), else the memory's.
func (m *Memnode) counterAt(addrs, vals []uint64, addr uint64) uint64 {
	for i := len(addrs) - 1; i >= 0; i-- {
		if addrs[i] == addr {
			return vals[i]
		}
	}
	var b [8]byte
	m.mem.readInto(b[:], addr)
	return binary.LittleEndian.Uint64(b[:])
}

// place computes every append's position from the state, each seeing the
// advances of those before it (a refused one advances nothing), and the
// index of the first refused append, or -1.
func (m *Memnode) place(as []Append, inline []placement) ([]placement, int) {
	ps := carve(inline, len(as))
	clear(ps)
	// The values the appends placed so far left: appends on the same
	// counters chain. A word set twice is listed twice; the last wins.
	var addrsInline, valsInline [8]uint64
	addrs, vals := addrsInline[:0], valsInline[:0]
	refused := -1
	for i := range as {
		a := &as[i]
		p := &ps[i]
		t, h := m.counterAt(addrs, vals, a.Tail), m.counterAt(addrs, vals, a.Head)
		var c uint64
		if a.Count != 0 {
			c = m.counterAt(addrs, vals, a.Count)
		}
		p.Tail, p.Count = t, c
		end, carry := bits.Add64(t, uint64(len(a.Data)), 0)
		p.newT = end
		// t+len-h <= Limit as a signed difference: h past end passes.
		p.refused = carry != 0 || (end >= h && end-h > a.Limit)
		if p.refused {
			if refused < 0 {
				refused = i
			}
			continue
		}
		addrs, vals = append(addrs, a.Tail), append(vals, end)
		if a.Count != 0 {
			addrs, vals = append(addrs, a.Count), append(vals, c+a.Add)
		}
	}
	return ps, refused
}

// ringPieces returns the one or two ranges of the ring that data placed at
// position t occupies: [a1, a1+n1) then [a2, a2+n2) (n2 == 0: one piece).
func ringPieces(a *Append, t uint64) (a1, n1, a2, n2 uint64) {
	off := t & (a.Size - 1)
	n := uint64(len(a.Data))
	n1 = min(n, a.Size-off)
	return a.Ring + off, n1, a.Ring, n - n1
}

// RingPieces returns the ranges of the ring that an append placed at
// position t writes: [addr1, addr1+n1) and, if the data wraps at the ring's
// end, [addr2, addr2+n2) (n2 is 0 otherwise). It lets an observer of the
// apply path (memnode/service's watch streams) report an append's bytes.
func RingPieces(a *Append, t uint64) (addr1, n1, addr2, n2 uint64) { return ringPieces(a, t) }

// appendsConflict reports whether the appends' counter words or the ring
// ranges they would write (at ps) conflict with a held lock: Tail and Count
// are written (exclusive), Head is read (shared).
func (m *Memnode) appendsConflict(as []Append, ps []placement) bool {
	if m.locks.empty() {
		return false
	}
	for i := range as {
		a := &as[i]
		if m.locks.conflicts(a.Tail, a.Tail+8, true) || m.locks.conflicts(a.Head, a.Head+8, false) {
			return true
		}
		if a.Count != 0 && m.locks.conflicts(a.Count, a.Count+8, true) {
			return true
		}
		a1, n1, a2, n2 := ringPieces(a, ps[i].Tail)
		if m.locks.conflicts(a1, a1+n1, true) || (n2 > 0 && m.locks.conflicts(a2, a2+n2, true)) {
			return true
		}
	}
	return false
}

// execAppends is exec for an Op with appends: lock check (items, counter
// words, ring ranges), compares, then each append's Limit, reads, relocs,
// writes, then the appends.
func (m *Memnode) execAppends(op *Op, noReads bool) Result {
	var inline [4]placement
	ps, refused := m.place(op.Appends, inline[:])
	if m.locks.opConflicts(op) || m.appendsConflict(op.Appends, ps) {
		return Result{Vote: VoteBadLock, FailedCompare: -1}
	}
	if i := m.failedCompare(op.Compares); i >= 0 {
		return Result{Vote: VoteBadCmp, FailedCompare: i, Reads: m.readUnless(noReads, op.Reads)}
	}
	if refused >= 0 {
		return Result{Vote: VoteBadCmp, FailedCompare: len(op.Compares) + refused, Reads: m.readUnless(noReads, op.Reads)}
	}
	r := Result{Vote: VoteOK, FailedCompare: -1, Reads: m.readUnless(noReads, op.Reads)}
	writes, appends := op.Writes, op.Appends
	if len(op.Relocs) > 0 {
		writes, appends = relocate(op, ps)
	}
	for _, w := range writes {
		m.mem.write(w.Addr, w.Data)
	}
	var b [8]byte
	r.Appended = make([]Appended, len(appends))
	for i := range appends {
		a := &appends[i]
		a1, n1, a2, n2 := ringPieces(a, ps[i].Tail)
		m.mem.write(a1, a.Data[:n1])
		if n2 > 0 {
			m.mem.write(a2, a.Data[n1:])
		}
		// Chained appends write the same word again, each its own
		// advance: the last one leaves the final value.
		binary.LittleEndian.PutUint64(b[:], ps[i].newT)
		m.mem.write(a.Tail, b[:])
		if a.Count != 0 {
			binary.LittleEndian.PutUint64(b[:], ps[i].Count+a.Add)
			m.mem.write(a.Count, b[:])
		}
		r.Appended[i] = ps[i].Appended
	}
	return r
}

// relocate returns op's writes and appends with the relocs applied to
// copies of the targeted items' data (the entry's slices are untouched).
func relocate(op *Op, ps []placement) ([]Write, []Append) {
	writes := op.Writes
	for _, rl := range op.Relocs {
		if rl.Write {
			writes = slices.Clone(op.Writes)
			break
		}
	}
	appends := slices.Clone(op.Appends)
	copied := make([]bool, len(op.Writes)+len(op.Appends))
	for _, rl := range op.Relocs {
		var data *[]byte
		k := int(rl.Item)
		if rl.Write {
			data = &writes[k].Data
		} else {
			data = &appends[k].Data
			k += len(op.Writes)
		}
		if !copied[k] {
			*data = slices.Clone(*data)
			copied[k] = true
		}
		src := ps[rl.Append].Tail
		if rl.Count {
			src = ps[rl.Append].Count
		}
		w := (*data)[rl.Off : rl.Off+8]
		binary.LittleEndian.PutUint64(w, binary.LittleEndian.Uint64(w)+src)
	}
	return writes, appends
}
