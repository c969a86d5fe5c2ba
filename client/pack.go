package client

// Every minitransaction builds a few small arrays of different types (its
// wire items and their pointers, its requests and participants). pack2 and
// pack3 take the arrays of one size from one allocation while they are
// small (up to packMax elements, which covers the usual minitransaction),
// rounded up to a power of two so that few shapes exist; past that, each
// is made on its own. The arrays then live as long as any of them does.

const packMax = 8

// pack2 returns zeroed []A and []B of length n; nil for n == 0.
func pack2[A, B any](n int) ([]A, []B) {
	switch {
	case n == 0:
		return nil, nil
	case n <= 1:
		p := new(struct {
			a [1]A
			b [1]B
		})
		return p.a[:n:n], p.b[:n:n]
	case n <= 2:
		p := new(struct {
			a [2]A
			b [2]B
		})
		return p.a[:n:n], p.b[:n:n]
	case n <= 4:
		p := new(struct {
			a [4]A
			b [4]B
		})
		return p.a[:n:n], p.b[:n:n]
	case n <= packMax:
		p := new(struct {
			a [packMax]A
			b [packMax]B
		})
		return p.a[:n:n], p.b[:n:n]
	}
	return make([]A, n), make([]B, n)
}

// pack3 returns zeroed []A, []B and []C of length n; nil for n == 0.
func pack3[A, B, C any](n int) ([]A, []B, []C) {
	switch {
	case n == 0:
		return nil, nil, nil
	case n <= 1:
		p := new(struct {
			a [1]A
			b [1]B
			c [1]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	case n <= 2:
		p := new(struct {
			a [2]A
			b [2]B
			c [2]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	case n <= 4:
		p := new(struct {
			a [4]A
			b [4]B
			c [4]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	case n <= packMax:
		p := new(struct {
			a [packMax]A
			b [packMax]B
			c [packMax]C
		})
		return p.a[:n:n], p.b[:n:n], p.c[:n:n]
	}
	return make([]A, n), make([]B, n), make([]C, n)
}
