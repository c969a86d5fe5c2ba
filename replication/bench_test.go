package replication

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchSM is a trivial state machine: it counts commands.
type benchSM struct{ n uint64 }

func (s *benchSM) Apply(cmds []Command) [][]byte {
	s.n += uint64(len(cmds))
	return make([][]byte, len(cmds))
}
func (s *benchSM) Query([]byte) []byte       { return nil }
func (s *benchSM) Snapshot() ([]byte, error) { return []byte{1}, nil }
func (s *benchSM) Restore([]byte) error      { return nil }

// BenchmarkPropose: 3 hosts in one process over the in-memory network, one
// group, fsync on, ~100-byte commands, N proposals outstanding at the leader.
func BenchmarkPropose(b *testing.B) {
	for _, n := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("outstanding=%d", n), func(b *testing.B) {
			c := newClusterSM(b, 3, []uint64{1}, func(cfg *Config) {
				cfg.Workers = 0 // GOMAXPROCS
			}, func() StateMachine { return &benchSM{} })
			lead := c.leader(1, nil)
			h := c.host(lead)
			cmd := make([]byte, 100)
			c.propose(1, "warmup")
			before := h.Stats()
			sem := make(chan struct{}, n)
			var wg sync.WaitGroup
			var failed atomic.Int64
			done := func(_ []byte, err error) {
				if err != nil {
					failed.Add(1)
				}
				<-sem
				wg.Done()
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				sem <- struct{}{}
				wg.Add(1)
				h.ProposeAsync(1, cmd, done)
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d of %d proposals failed", f, b.N)
			}
			after := h.Stats()
			fsyncs := float64(after.Fsyncs - before.Fsyncs)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
			if fsyncs > 0 {
				b.ReportMetric(float64(after.Entries-before.Entries)/fsyncs, "entries/fsync")
				b.ReportMetric(float64(after.Proposals-before.Proposals)/fsyncs, "cmds/fsync")
			}
		})
	}
}
