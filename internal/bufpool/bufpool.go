// Package bufpool is the gRPC buffer pool and protobuf codec of tutti's
// servers and clients. gRPC's default pool (mem.DefaultBufferPool) zeroes
// every buffer it hands out, over the buffer's whole capacity, and its
// tiers jump from 32 KiB to 1 MiB, so a 40 KiB message cost a 1 MiB clear
// before gRPC read or marshalled into it; its protobuf codec takes its
// buffers from that pool too. gRPC and the codec write every byte of the
// length they ask for before anyone reads it, so the zeroing bought
// nothing. Pool hands out buffers with a power-of-two capacity from 256 B
// to 4 MiB (the largest request tutti sends) without zeroing them; larger
// ones are plain allocations. Codec is gRPC's codec on Pool.
//
// At saturation of `tutti bench mcast` (embedded cluster, 3 member
// processes, 1 KiB messages) the clears were 5% of the cluster's CPU
// profile. Alternated 8 s runs, before and after: 49.2k, 49.8k, 51.1k
// against 51.4k, 54.6k, 56.2k delivered/s per member, 36.5, 36.2, 34.7
// against 35.2, 33.0, 31.6 µs of CPU (cluster and members) per delivered
// message. `tutti bench mtx` (small requests, under the pooling threshold
// of the codec) showed no difference outside its noise.
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
