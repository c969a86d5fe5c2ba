package client

import (
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// Shared helpers of the structures built on minitransactions (alloc.go,
// lease.go, queue.go). Every structure stores unsigned 64-bit little-endian
// words; unwritten memory reads as zeros, so an all-zero record is always the
// structure's initial state and no separate "create" step is needed.

const wordSize = 8

// words encodes vs as consecutive little-endian 64-bit words.
func words(vs ...uint64) []byte {
	b := make([]byte, 0, len(vs)*wordSize)
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

// word returns the i-th little-endian 64-bit word of b.
func word(b []byte, i int) uint64 {
	return binary.LittleEndian.Uint64(b[i*wordSize:])
}

// isPow2 reports whether v is a power of two.
func isPow2(v uint64) bool { return v != 0 && v&(v-1) == 0 }

// alignUp rounds v up to a multiple of a (a power of two); ok is false on
// overflow.
func alignUp(v, a uint64) (r uint64, ok bool) {
	r = (v + a - 1) &^ (a - 1)
	return r, r >= v
}

// nonce returns a random non-zero 64-bit value that tags one attempt, so an
// attempt whose outcome is unknown can be recognised by reading it back.
func nonce() (uint64, error) {
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]) | 1, nil
}

// limits returns the per-minitransaction limits the cluster announced
// (items per minitransaction, bytes per item), or the memnode defaults if
// it announced none.
func (c *Client) limits() (maxItems, maxItemBytes int) {
	maxItems, maxItemBytes = 1024, 1<<20
	if info := c.Cluster(); info != nil {
		if n := info.GetMaxItems(); n > 0 {
			maxItems = int(n)
		}
		if n := info.GetMaxItemBytes(); n > 0 {
			maxItemBytes = int(n)
		}
	}
	return maxItems, maxItemBytes
}

// ctxErr reports the end of ctx as an error that wraps both the context
// error and says which operation gave up.
func ctxErr(op string, err error) error {
	return fmt.Errorf("%s: %w", op, err)
}

// isUnknown reports whether err says a minitransaction may have applied.
func isUnknown(err error) bool { return errors.Is(err, ErrUnknownOutcome) }
