package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
)

// ErrExhausted: the allocator's address range has no free block large enough
// for the request. Nothing was allocated.
var ErrExhausted = errors.New("tutti: address space exhausted")

// Allocator layout on memnode Memnode, all words little-endian uint64.
//
// Header, 32 bytes at Base:
//
//	+0   next   first never-allocated address; 0 while the allocator is fresh
//	+8   free   address of the first free block; 0 when the free list is empty
//	+16  align  AllocatorConfig.Align, written by the first allocation
//	+24  limit  AllocatorConfig.Limit, written by the first allocation
//
// Blocks follow from alignUp(Base+32, Align). A block is a block header of
// H = max(16, Align) bytes followed by the region handed to the caller:
//
//	+0   len|state  region length (a multiple of Align) | 1 allocated, 2 free
//	+8   tag        allocated: nonce of the Alloc call that took it
//	                free: address of the next free block; 0 ends the list
//	+H   region     len bytes: Region.Addr = block + H
//
// Invariants: a block is on the free list exactly when its state is free
// (both change in the same minitransaction); blocks never overlap; next only
// grows.
const (
	allocHeaderSize = 32
	blockAllocated  = 1
	blockFree       = 2
	blockStateMask  = 7
	// maxFreeWalk bounds how many free-list blocks Alloc inspects (one read
	// each) before it falls back to the bump pointer.
	maxFreeWalk = 32
	maxAlign    = 1 << 12
)

// AllocatorConfig places an allocator in a memnode's address space.
type AllocatorConfig struct {
	// Memnode holds the allocator's header and regions.
	Memnode uint64
	// Base is the address of the 32-byte header; a multiple of 8.
	Base uint64
	// Limit is the end (exclusive) of the managed range: every region lies
	// in [Base+32, Limit). It must not exceed the memnode's size.
	Limit uint64
	// Align is the alignment, in bytes, of every region's address and
	// length: a power of two from 8 to 4096. 0 means 8.
	Align uint64
}

// Region is a range of a memnode's address space: [Addr, Addr+Len) on
// Memnode.
type Region struct {
	Memnode, Addr, Len uint64
}

// Allocator carves regions out of one memnode's address range [Base+32,
// Limit). It is a bump allocator with a first-fit free list, and it keeps all
// its state in the memnode, so any number of Allocators with the same config,
// in any number of processes, share one range and never hand out
// overlapping regions: every allocation is a minitransaction that compares
// what it read (the header, or the free block and the link to it).
//
// Freed blocks are reused whole or split; neighbouring free blocks are not
// merged. An Allocator is safe for concurrent use; it caches nothing.
type Allocator struct {
	c     *Client
	cfg   AllocatorConfig
	hdr   uint64 // block header size H
	first uint64 // address of the first block
}

// NewAllocator returns an allocator over cfg's range. It does no I/O: the
// header is created by the first Alloc. Allocators that share a Base must
// share the whole config; Alloc and Free refuse a header written with a
// different Align or Limit.
func NewAllocator(c *Client, cfg AllocatorConfig) (*Allocator, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: allocator: nil client", ErrInvalid)
	}
	if cfg.Align == 0 {
		cfg.Align = 8
	}
	var errs []error
	if !isPow2(cfg.Align) || cfg.Align < 8 || cfg.Align > maxAlign {
		errs = append(errs, fmt.Errorf("%w: allocator: Align %d is not a power of two in [8, %d]", ErrInvalid, cfg.Align, maxAlign))
	}
	if cfg.Base%8 != 0 {
		errs = append(errs, fmt.Errorf("%w: allocator: Base %#x is not a multiple of 8", ErrInvalid, cfg.Base))
	}
	if errs != nil {
		return nil, errors.Join(errs...)
	}
	a := &Allocator{c: c, cfg: cfg, hdr: max(16, cfg.Align)}
	first, ok := alignUp(cfg.Base+allocHeaderSize, cfg.Align)
	if !ok || cfg.Base+allocHeaderSize < cfg.Base || first+a.hdr < first || cfg.Limit < first+a.hdr+cfg.Align {
		return nil, fmt.Errorf("%w: allocator: Limit %#x leaves no room for a block after the header at Base %#x", ErrInvalid, cfg.Limit, cfg.Base)
	}
	a.first = first
	return a, nil
}

// Config returns the allocator's configuration, with defaults filled in.
func (a *Allocator) Config() AllocatorConfig { return a.cfg }

// allocPlan is one allocation attempt, decided from what was read.
type allocPlan struct {
	tx     *Tx
	block  uint64
	region Region
}

// errRereadAlloc: what was read changed while it was read; start over.
var errRereadAlloc = errors.New("allocator state changed while reading")

// Alloc returns a region of at least size bytes: Addr and Len are multiples
// of Align, and Len is size rounded up to Align (or the whole of a reused
// free block). The region's contents are whatever was there: zeros if never
// used, old data if reused.
//
// It fails with ErrExhausted when no block fits, ErrInvalid for a zero size
// or a header written by a differently configured allocator, and otherwise
// with the minitransaction's error; in every such case nothing was
// allocated. If a minitransaction's outcome is unknown, Alloc reads the
// block back (a logged step, ordered after the attempt if the memnode's
// leader has it and fencing the attempt, so one still on its way to the
// leader never applies after it; on a context of its own if ctx has ended)
// and recognises its own tag.
func (a *Allocator) Alloc(ctx context.Context, size uint64) (Region, error) {
	if size == 0 {
		return Region{}, fmt.Errorf("%w: alloc: size must be > 0", ErrInvalid)
	}
	n, ok := alignUp(size, a.cfg.Align)
	if !ok || n > a.cfg.Limit-a.first-a.hdr {
		return Region{}, fmt.Errorf("%w: alloc %d bytes on memnode %d: larger than the allocator's whole range [%#x, %#x)", ErrExhausted, size, a.cfg.Memnode, a.first, a.cfg.Limit)
	}
	tag, err := nonce()
	if err != nil {
		return Region{}, fmt.Errorf("alloc: %w", err)
	}
	var h []byte // the header as a failed attempt saw it, if known
	for {
		if err := ctx.Err(); err != nil {
			return Region{}, ctxErr("alloc", err)
		}
		p, err := a.plan(ctx, n, tag, h)
		h = nil
		if errors.Is(err, errRereadAlloc) {
			continue
		}
		if err != nil {
			return Region{}, err
		}
		// A failed compare answers the header: the next plan needs no read.
		p.tx.Read(a.cfg.Memnode, a.cfg.Base, allocHeaderSize)
		res, err := a.c.Exec(ctx, p.tx)
		if err != nil {
			if !isUnknown(err) {
				return Region{}, fmt.Errorf("alloc: %w", err)
			}
			raw, rerr := a.settleBlock(ctx, p.block, err)
			if rerr != nil {
				return Region{}, fmt.Errorf("alloc: %w; reading the block back failed too: %v", err, rerr)
			}
			if word(raw, 0)&blockStateMask == blockAllocated && word(raw, 1) == tag {
				return p.region, nil
			}
			continue // not applied: try again from fresh state
		}
		if res.Committed {
			return p.region, nil
		}
		if len(res.Reads) == 1 {
			if h, err = a.checkHeader(res.Reads[0], "alloc"); err != nil {
				return Region{}, err
			}
		}
	}
}

// readHeader reads the allocator header and checks it against the config.
func (a *Allocator) readHeader(ctx context.Context, op string) ([]byte, error) {
	r, err := a.c.Exec(ctx, NewTx().Read(a.cfg.Memnode, a.cfg.Base, allocHeaderSize))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return a.checkHeader(r.Reads[0], op)
}

// checkHeader checks a header read from the memnode against the config.
func (a *Allocator) checkHeader(h []byte, op string) ([]byte, error) {
	next, free, align, limit := word(h, 0), word(h, 1), word(h, 2), word(h, 3)
	if next == 0 {
		if free|align|limit != 0 {
			return nil, fmt.Errorf("%w: %s: memnode %d address %#x does not hold an allocator header", ErrInvalid, op, a.cfg.Memnode, a.cfg.Base)
		}
		return h, nil
	}
	if align != a.cfg.Align || limit != a.cfg.Limit {
		return nil, fmt.Errorf("%w: %s: the allocator at memnode %d address %#x has Align %d and Limit %#x, not %d and %#x",
			ErrInvalid, op, a.cfg.Memnode, a.cfg.Base, align, limit, a.cfg.Align, a.cfg.Limit)
	}
	return h, nil
}

func (a *Allocator) readBlock(ctx context.Context, block uint64) ([]byte, error) {
	r, err := a.c.Exec(ctx, NewTx().Read(a.cfg.Memnode, block, 16))
	if err != nil {
		return nil, err
	}
	return r.Reads[0], nil
}

// settleBlock reads block back after a minitransaction on it whose outcome
// is unknown (err), in a settling step (Client.Settle).
func (a *Allocator) settleBlock(ctx context.Context, block uint64, err error) ([]byte, error) {
	r, err := a.c.Settle(ctx, NewTx().Read(a.cfg.Memnode, block, 16), err)
	if err != nil {
		return nil, err
	}
	return r.Reads[0], nil
}

// validBlock reports whether block could be a block address of this
// allocator below next.
func (a *Allocator) validBlock(block, next uint64) bool {
	return block >= a.first && block < next && (block-a.first)%a.cfg.Align == 0
}

// plan reads the allocator (the header unless h is a current one) and
// decides one attempt: the first free block that fits (split when the rest
// can hold another block), else the bump pointer.
func (a *Allocator) plan(ctx context.Context, n, tag uint64, h []byte) (allocPlan, error) {
	mn := a.cfg.Memnode
	if h == nil {
		var err error
		if h, err = a.readHeader(ctx, "alloc"); err != nil {
			return allocPlan{}, err
		}
	}
	next, free := word(h, 0), word(h, 1)
	if next == 0 {
		next = a.first
	}

	// First fit on the free list. The attempt compares the link to the
	// chosen block (the header or the previous free block) and the block
	// itself, so it commits only if both are still as read.
	prev, prevRaw := uint64(0), h // prev == 0: the link is the header
	for cur, i := free, 0; cur != 0 && i < maxFreeWalk; i++ {
		if !a.validBlock(cur, next) {
			return allocPlan{}, fmt.Errorf("%w: alloc: free list of the allocator at memnode %d address %#x is corrupt (block %#x)", ErrInvalid, mn, a.cfg.Base, cur)
		}
		raw, err := a.readBlock(ctx, cur)
		if err != nil {
			return allocPlan{}, fmt.Errorf("alloc: %w", err)
		}
		blen, state, link := word(raw, 0)&^blockStateMask, word(raw, 0)&blockStateMask, word(raw, 1)
		if state != blockFree {
			// Taken meanwhile (an Alloc unlinks a block in the step
			// that marks it), unless the link still names it: then the
			// list is corrupt, and reading again would never end.
			return allocPlan{}, a.recheckLink(ctx, prev, cur)
		}
		if blen >= n {
			tx := NewTx()
			var linkAddr uint64
			if prev == 0 {
				tx.Compare(mn, a.cfg.Base, h)
				linkAddr = a.cfg.Base + 8
			} else {
				tx.Compare(mn, prev, prevRaw)
				linkAddr = prev + 8
			}
			tx.Compare(mn, cur, raw)
			newLink, rlen := link, blen
			if blen >= n+a.hdr+a.cfg.Align {
				rest := cur + a.hdr + n
				tx.Write(mn, rest, words((blen-n-a.hdr)|blockFree, link))
				newLink, rlen = rest, n
			}
			tx.Write(mn, cur, words(rlen|blockAllocated, tag))
			tx.Write(mn, linkAddr, words(newLink))
			return allocPlan{tx: tx, block: cur, region: Region{Memnode: mn, Addr: cur + a.hdr, Len: rlen}}, nil
		}
		prev, prevRaw, cur = cur, raw, link
	}

	// Bump.
	end := next + a.hdr + n
	if end < next || end > a.cfg.Limit {
		left := uint64(0)
		if a.cfg.Limit > next+a.hdr {
			left = a.cfg.Limit - next - a.hdr
		}
		return allocPlan{}, fmt.Errorf("%w: alloc %d bytes on memnode %d: %d bytes left at the end of [%#x, %#x) and no free block of the first %d fits",
			ErrExhausted, n, mn, left, a.first, a.cfg.Limit, maxFreeWalk)
	}
	tx := NewTx().
		Compare(mn, a.cfg.Base, h).
		Write(mn, a.cfg.Base, words(end, free, a.cfg.Align, a.cfg.Limit)).
		Write(mn, next, words(n|blockAllocated, tag))
	return allocPlan{tx: tx, block: next, region: Region{Memnode: mn, Addr: next + a.hdr, Len: n}}, nil
}

// recheckLink reads, in one step, the link to block cur (the header's free
// word if prev is 0, else free block prev's link) and cur, which plan found
// not free: errRereadAlloc if either changed (cur was taken meanwhile),
// ErrInvalid if the free list still links a block that is not free.
func (a *Allocator) recheckLink(ctx context.Context, prev, cur uint64) error {
	link := a.cfg.Base + 8
	if prev != 0 {
		link = prev + 8
	}
	r, err := a.c.Exec(ctx, NewTx().Read(a.cfg.Memnode, link, 8).Read(a.cfg.Memnode, cur, 16))
	if err != nil {
		return fmt.Errorf("alloc: %w", err)
	}
	if word(r.Reads[0], 0) != cur || word(r.Reads[1], 0)&blockStateMask == blockFree {
		return errRereadAlloc
	}
	return fmt.Errorf("%w: alloc: free list of the allocator at memnode %d address %#x is corrupt (block %#x is linked but not free)", ErrInvalid, a.cfg.Memnode, a.cfg.Base, cur)
}

// Free returns r, as Alloc returned it, to the free list. It refuses with
// ErrInvalid, changing nothing, a region of another memnode, a misaligned or
// out-of-range region, and one that is not currently allocated with that
// length (freed twice, or never returned by Alloc). If a minitransaction's
// outcome is unknown, Free reads the block back to find out (as Alloc does).
func (a *Allocator) Free(ctx context.Context, r Region) error { return a.free(ctx, r, nil) }

// ErrGuardFailed: a compare of FreeWith's guard did not match; nothing was
// freed or written.
var ErrGuardFailed = errors.New("tutti: free: guard compare failed")

// FreeWith frees r as Free does, in the same minitransaction as guard's
// compares and writes (on any memnodes): r is freed exactly when they all
// match, and then guard's writes are applied with it. A guard lets the
// record that names r (an owner's slot, say) be cleared atomically with
// the free, so that whoever retries after a failure or a crash can tell
// whether r is still to be freed, and r is never freed twice. guard must
// not have reads (ErrInvalid). ErrGuardFailed when a guard compare fails.
func (a *Allocator) FreeWith(ctx context.Context, r Region, guard *Tx) error {
	if guard == nil || len(guard.reads) > 0 {
		return fmt.Errorf("%w: free: the guard must be a minitransaction without reads", ErrInvalid)
	}
	return a.free(ctx, r, guard)
}

func (a *Allocator) free(ctx context.Context, r Region, guard *Tx) error {
	mn := a.cfg.Memnode
	switch {
	case r.Memnode != mn:
		return fmt.Errorf("%w: free: region %+v is on memnode %d, the allocator on memnode %d", ErrInvalid, r, r.Memnode, mn)
	case r.Len == 0 || r.Len%a.cfg.Align != 0 || r.Addr%a.cfg.Align != 0:
		return fmt.Errorf("%w: free: region %+v is not aligned to %d", ErrInvalid, r, a.cfg.Align)
	case r.Addr < a.first+a.hdr || r.Addr > a.cfg.Limit || r.Len > a.cfg.Limit-r.Addr:
		return fmt.Errorf("%w: free: region %+v lies outside [%#x, %#x)", ErrInvalid, r, a.first+a.hdr, a.cfg.Limit)
	}
	block := r.Addr - a.hdr
	// state reads the header and the block in one minitransaction; every
	// attempt reads them too, and a failed compare answers them.
	state := func(tx *Tx) *Tx { return tx.Read(mn, a.cfg.Base, allocHeaderSize).Read(mn, block, 16) }
	var h, raw []byte
	for {
		if err := ctx.Err(); err != nil {
			return ctxErr("free", err)
		}
		if h == nil {
			res, err := a.c.Exec(ctx, state(NewTx()))
			if err != nil {
				return fmt.Errorf("free: %w", err)
			}
			h, raw = res.Reads[0], res.Reads[1]
		}
		if _, err := a.checkHeader(h, "free"); err != nil {
			return err
		}
		if word(h, 0) == 0 || !a.validBlock(block, word(h, 0)) || word(raw, 0) != r.Len|blockAllocated {
			return fmt.Errorf("%w: free: region %+v is not allocated (freed twice, or not returned by Alloc)", ErrInvalid, r)
		}
		tx := NewTx().
			Compare(mn, a.cfg.Base, h).
			Compare(mn, block, raw).
			Write(mn, block, words(r.Len|blockFree, word(h, 1))).
			Write(mn, a.cfg.Base+8, words(block))
		if guard != nil {
			tx.compares = append(tx.compares, guard.compares...)
			tx.writes = append(tx.writes, guard.writes...)
		}
		res, err := a.c.Exec(ctx, state(tx))
		if err != nil {
			if !isUnknown(err) {
				return fmt.Errorf("free: %w", err)
			}
			// Applied unless the block still carries the allocation tag
			// we saw: only our Free could have freed it.
			now, rerr := a.settleBlock(ctx, block, err)
			if rerr != nil {
				return fmt.Errorf("free: %w; reading the block back failed too: %v", err, rerr)
			}
			if !bytes.Equal(now, raw) {
				return nil
			}
			h = nil
			continue
		}
		if res.Committed {
			return nil
		}
		if res.FailedCompare >= 2 {
			return ErrGuardFailed // compares 0 and 1 are the allocator's
		}
		h = nil
		if len(res.Reads) == 2 {
			h, raw = res.Reads[0], res.Reads[1]
		}
	}
}
