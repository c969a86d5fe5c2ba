package client

import "unsafe"

// Every minitransaction builds a few small arrays of different types (its
// wire items, their pointers and index maps). pack2 and pack3 take the
// arrays of one size from one allocation while they are small, rounded up
// to a power of two so that few shapes exist; past that, each is made on
// its own. The arrays then live as long as any of them does.
//
// Small means at most packMaxBytes in all: a larger object carries a
// header, and Go's collector scans it on its own rather than with the rest
// of its span. Objects of 650 bytes made per minitransaction doubled the
// collector's marking CPU in `tutti bench mtx --workload cas2`.
const packMaxBytes = 512

// packCap returns the rounded length (1, 2, 4 or 8) the arrays of n
// elements of size bytes in all get, or 0 if they are made on their own.
func packCap(n int, size uintptr) int {
	c := 1
	for c < n {
		c *= 2
	}
	if c > 8 || uintptr(c)*size > packMaxBytes {
		return 0
	}
	return c
}

// pack2 returns zeroed []A and []B of length n; nil for n == 0.
func pack2[A, B any](n int) ([]A, []B) {
	if n == 0 {
		return nil, nil
	}
	var (
		a A
		b B
	)
	switch packCap(n, unsafe.Sizeof(a)+unsafe.Sizeof(b)) {
	case 1:
		p := new(struct {
			a [1]A
			b [1]B
		})
		return p.a[:n:n], p.b[:n:n]
	case 2:
		p := new(struct {
			a [2]A
			b [2]B
		})
		return p.a[:n:n], p.b[:n:n]
	case 4:
		p := new(struct {
			a [4]A
			b [4]B
		})
		return p.a[:n:n], p.b[:n:n]
	case 8:
		p := new(struct {
			a [8]A
			b [8]B
		})
		return p.a[:n:n], p.b[:n:n]
	}
	return make([]A, n), make([]B, n)
}

// pack3 returns zeroed []A, []B and []C of length n; nil for n == 0.
func pack3[A, B, C any](n int) ([]A, []B, []C) {
	if n == 0 {
		return nil, nil, nil
	}
	var (
		a A
		b B
		c C
	)
	switch packCap(n, unsafe.Sizeof(a)+unsafe.Sizeof(b)+unsafe.Sizeof(c)) {
	case 1:
		p := new(struct {
			a [1]A
			b [1]B
			c [1]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	case 2:
		p := new(struct {
			a [2]A
			b [2]B
			c [2]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	case 4:
		p := new(struct {
			a [4]A
			b [4]B
			c [4]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	case 8:
		p := new(struct {
			a [8]A
			b [8]B
			c [8]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	}
	return make([]A, n), make([]B, n), make([]C, n)
}
