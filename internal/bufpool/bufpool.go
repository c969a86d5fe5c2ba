package bufpool

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

const (
	minExp = 8  // 256 B
	maxExp = 22 // 4 MiB
)

// Large tiers (keptMinExp and up) also keep up to keptPerTier buffers in a
// list of their own, which the garbage collector does not empty: a
// sync.Pool drops what it holds within two collections, and a process that
// collects often (a gcs member at saturation: several times a second)
// found the 1-4 MiB tier empty for about a third of its Gets, each then a
// fresh buffer cleared in full (clearing was 5.6% of a member's CPU). At
// most keptPerTier × (256 KiB + ... + 4 MiB) < 32 MiB stay allocated.
const (
	keptMinExp  = 18 // 256 KiB
	keptPerTier = 4
)

type pool struct {
	tiers [maxExp - minExp + 1]sync.Pool
	kept  [maxExp - keptMinExp + 1]struct {
		mu   sync.Mutex
		bufs []*[]byte
	}
}

// Pool is the shared buffer pool; safe for concurrent use.
var Pool mem.BufferPool = &pool{}

// Get returns a buffer of length n. Its contents are whatever a previous
// user left: the caller overwrites all n bytes before reading them.
func (p *pool) Get(n int) *[]byte {
	if n <= 0 || n > 1<<maxExp {
		b := make([]byte, n)
		return &b
	}
	e := max(minExp, bits.Len(uint(n-1))) // smallest 2^e >= n
	if e >= keptMinExp {
		k := &p.kept[e-keptMinExp]
		k.mu.Lock()
		if l := len(k.bufs); l > 0 {
			b := k.bufs[l-1]
			k.bufs[l-1] = nil
			k.bufs = k.bufs[:l-1]
			k.mu.Unlock()
			*b = (*b)[:n]
			return b
		}
		k.mu.Unlock()
	}
	if b, ok := p.tiers[e-minExp].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<e)
	return &b
}

// Put returns a buffer to the tier of the largest power of two its
// capacity holds; buffers outside the tiers are dropped.
func (p *pool) Put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minExp {
		return
	}
	e := min(maxExp, bits.Len(uint(c))-1) // largest 2^e <= c
	if e >= keptMinExp {
		k := &p.kept[e-keptMinExp]
		k.mu.Lock()
		if len(k.bufs) < keptPerTier {
			k.bufs = append(k.bufs, b)
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
	}
	p.tiers[e-minExp].Put(b)
}
