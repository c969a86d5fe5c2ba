package client

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// TestSplitGroupsByMemnode: parts come in order of first appearance, each
// holds its memnode's items in Tx order, and the index maps lead back to
// the Tx's compares and reads (failed-compare and read results use them).
func TestSplitGroupsByMemnode(t *testing.T) {
	tx := NewTx().
		Compare(7, 0x10, []byte("a")).
		Compare(3, 0x20, []byte("b")).
		Read(9, 0x30, 4).
		Compare(7, 0x40, []byte("c")).
		Read(3, 0x50, 2).
		Write(9, 0x60, []byte("d")).
		Write(7, 0x70, []byte("e")).
		Write(9, 0x80, []byte("f"))
	var got []string
	for _, p := range tx.split(nil) {
		s := fmt.Sprintf("mn%d:", p.memnode)
		for i, c := range p.compares {
			s += fmt.Sprintf(" c%d@%#x=%s", p.cmpIdx[i], c.GetAddr(), c.GetData())
		}
		for i, r := range p.reads {
			s += fmt.Sprintf(" r%d@%#x/%d", p.readIdx[i], r.GetAddr(), r.GetLen())
		}
		for _, w := range p.writes {
			s += fmt.Sprintf(" w@%#x=%s", w.GetAddr(), w.GetData())
		}
		got = append(got, s)
	}
	want := []string{
		"mn7: c0@0x10=a c2@0x40=c w@0x70=e",
		"mn3: c1@0x20=b r1@0x50/2",
		"mn9: r0@0x30/4 w@0x60=d w@0x80=f",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("split:\n got %q\nwant %q", got, want)
	}
	// The cas2 shape: three compare-and-swaps over two memnodes (18
	// allocations when each item was its own, then 8; now one for the
	// compares and one for the writes, the parts on the caller's stack;
	// one more under -race).
	cas := NewTx()
	for i, mn := range []uint64{0, 1, 0} {
		cas.Compare(mn, uint64(i)*4, []byte("abcd")).Write(mn, uint64(i)*4, []byte("wxyz"))
	}
	if n := testing.AllocsPerRun(100, func() {
		var inline [2]part
		cas.split(inline[:0])
	}); n > 3 {
		t.Fatalf("split of a cas2 minitransaction allocates %v times", n)
	}
}

// TestPackKeepsObjectsSmall: pack2 and pack3 join arrays only while the
// joined object, rounded up, stays within packMaxBytes (the base
// workload's six writes and their pointers, 640 bytes rounded to eight,
// are made apart), and every length is right.
func TestPackKeepsObjectsSmall(t *testing.T) {
	write := unsafe.Sizeof(tuttipb.Write{}) + unsafe.Sizeof((*tuttipb.Write)(nil))
	for _, c := range []struct {
		n    int
		size uintptr
		want int
	}{
		{1, write, 1}, {2, write, 2}, {3, write, 4}, {4, write, 4}, {5, write, 0}, {6, write, 0},
		{6, 16, 8}, {8, 64, 8}, {9, 8, 0}, {3, 200, 0}, {2, 256, 2},
	} {
		if got := packCap(c.n, c.size); got != c.want {
			t.Errorf("packCap(%d, %d) = %d, want %d", c.n, c.size, got, c.want)
		}
	}
	for n := range 12 {
		a, b := pack2[tuttipb.Write, *tuttipb.Write](n)
		x, y, z := pack3[tuttipb.Compare, *tuttipb.Compare, int](n)
		if len(a) != n || len(b) != n || len(x) != n || len(y) != n || len(z) != n {
			t.Fatalf("n=%d: lengths %d %d %d %d %d", n, len(a), len(b), len(x), len(y), len(z))
		}
	}
}
