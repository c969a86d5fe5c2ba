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

type pool struct {
	tiers [maxExp - minExp + 1]sync.Pool
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
	p.tiers[e-minExp].Put(b)
}
