package client_test

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func TestTwoPhaseAtomicAcrossMemnodes(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 3})
	cl := newClient(t, c.Seeds())

	r := mustExec(t, cl, client.NewTx().Write(0, 8, []byte("a0")).Write(1, 8, []byte("b1")).Write(2, 8, []byte("c2")))
	if !r.Committed {
		t.Fatalf("write: %+v", r)
	}
	r = mustExec(t, cl, client.NewTx().Read(2, 8, 2).Read(0, 8, 2).Read(1, 8, 2))
	if !r.Committed || string(r.Reads[0]) != "c2" || string(r.Reads[1]) != "a0" || string(r.Reads[2]) != "b1" {
		t.Fatalf("multi-read: %+v", r)
	}
	// A compare failing on one memnode aborts the writes on all of them;
	// FailedCompare is the index in the Tx.
	r = mustExec(t, cl, client.NewTx().
		Compare(0, 8, []byte("a0")).
		Compare(1, 8, []byte("zz")).
		Write(0, 8, []byte("X0")).Write(1, 8, []byte("X1")))
	if r.Committed || r.FailedCompare != 1 {
		t.Fatalf("cross-memnode failed compare: %+v", r)
	}
	r = mustExec(t, cl, client.NewTx().Read(0, 8, 2).Read(1, 8, 2))
	if string(r.Reads[0]) != "a0" || string(r.Reads[1]) != "b1" {
		t.Fatalf("aborted writes became visible: %q %q", r.Reads[0], r.Reads[1])
	}
}

// Bank: concurrent transfers between accounts spread over memnodes, each a
// two-phase minitransaction (compare both balances, write both). Contention
// produces BAD-LOCK votes that are retried; the total must be preserved and
// multi-memnode reads must always see a consistent total.
func TestTwoPhaseBankConservesTotal(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 3})
	cl := newClient(t, c.Seeds())
	const accounts, initial = 6, 1000
	loc := func(a int) (uint64, uint64) { return uint64(a % 3), uint64(a/3) * 8 }
	init := client.NewTx()
	for a := 0; a < accounts; a++ {
		mn, addr := loc(a)
		init.Write(mn, addr, u64(initial))
	}
	mustExec(t, cl, init)
	total := func(ctx context.Context) (uint64, error) {
		tx := client.NewTx()
		for a := 0; a < accounts; a++ {
			mn, addr := loc(a)
			tx.Read(mn, addr, 8)
		}
		r, err := cl.Exec(ctx, tx)
		if err != nil {
			return 0, err
		}
		var s uint64
		for _, d := range r.Reads {
			s += binary.LittleEndian.Uint64(d)
		}
		return s, nil
	}

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	var committed sync.Map
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			ctx := context.Background()
			n := 0
			for i := 0; i < 30; i++ {
				from, to := rng.IntN(accounts), rng.IntN(accounts-1)
				if to >= from {
					to++
				}
				fm, fa := loc(from)
				tm, ta := loc(to)
				r, err := cl.Exec(ctx, client.NewTx().Read(fm, fa, 8).Read(tm, ta, 8))
				if err != nil {
					errs <- err
					return
				}
				fb, tb := binary.LittleEndian.Uint64(r.Reads[0]), binary.LittleEndian.Uint64(r.Reads[1])
				amt := uint64(rng.IntN(10) + 1)
				if fb < amt {
					continue
				}
				r, err = cl.Exec(ctx, client.NewTx().
					Compare(fm, fa, u64(fb)).Compare(tm, ta, u64(tb)).
					Write(fm, fa, u64(fb-amt)).Write(tm, ta, u64(tb+amt)))
				if err != nil {
					errs <- err
					return
				}
				if r.Committed {
					n++
				}
				if i%5 == 0 {
					s, err := total(ctx)
					if err != nil {
						errs <- err
						return
					}
					if s != accounts*initial {
						t.Errorf("inconsistent total %d during transfers", s)
					}
				}
			}
			committed.Store(w, n)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s, err := total(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if s != accounts*initial {
		t.Fatalf("total %d, want %d", s, accounts*initial)
	}
	n := 0
	committed.Range(func(_, v any) bool { n += v.(int); return true })
	if n == 0 {
		t.Fatal("no transfer committed")
	}
}
