package client_test

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// The Exec benchmarks run bench mtx's workloads against an in-process
// cluster (three hosts, no fsync) from many goroutines at once. The
// cluster runs in the same process, so allocs/op and B/op count the
// hosts' allocations too; the client's share is what changes between
// client versions (go test -memprofile, then pprof -focus client).
// ns/op depends on the machine's load: compare allocations.
//
//	go test -run XXX -bench 'Exec(One|Two)Phase' -benchmem ./client

// BenchmarkExecTwoPhase: bench mtx's cas2, three compare-and-swaps of
// 4-byte words over two memnodes (two on one, one on the other), each a
// two-phase minitransaction whose compares match.
func BenchmarkExecTwoPhase(b *testing.B) {
	benchExec(b, func(w *benchWorker) *client.Tx {
		tx := client.NewTx()
		for i := range 3 {
			mn := uint64(i % 2)
			addr := uint64(w.id*8+i) * 4
			v := &w.vals[i]
			tx.Compare(mn, addr, binary.LittleEndian.AppendUint32(nil, *v))
			*v = w.rng.Uint32()
			tx.Write(mn, addr, binary.LittleEndian.AppendUint32(nil, *v))
		}
		return tx
	})
}

// BenchmarkExecOnePhase: bench mtx's base, six writes of 4-byte words on
// one memnode, one phase.
func BenchmarkExecOnePhase(b *testing.B) {
	benchExec(b, func(w *benchWorker) *client.Tx {
		tx := client.NewTx()
		for i := range 6 {
			tx.Write(0, uint64(w.id*8+i)*4, binary.LittleEndian.AppendUint32(nil, w.rng.Uint32()))
		}
		return tx
	})
}

type benchWorker struct {
	id   int
	rng  *rand.Rand
	vals [3]uint32 // cas2: the words' values (all start at zero)
}

func benchExec(b *testing.B, next func(*benchWorker) *client.Tx) {
	c, err := cluster.Start(cluster.Config{NoSync: true, Memnodes: 2, DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	var ids atomic.Int64
	b.SetParallelism(32) // outstanding minitransactions per GOMAXPROCS
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := int(ids.Add(1))
		w := &benchWorker{id: id, rng: rand.New(rand.NewPCG(uint64(id), 1))}
		for pb.Next() {
			r, err := cl.Exec(ctx, next(w))
			if err != nil {
				b.Error(err)
				return
			}
			if !r.Committed {
				b.Errorf("worker %d: not committed: %+v", id, r)
				return
			}
		}
	})
}
