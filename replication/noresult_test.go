package replication

import (
	"context"
	"sync"
	"testing"
	"time"
)

// flagSM records, per applied command, whether a result was wanted.
type flagSM struct {
	mu       sync.Mutex
	wanted   int
	unwanted int
}

func (s *flagSM) Apply(cmds []Command) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, len(cmds))
	for i, c := range cmds {
		if c.NoResult {
			s.unwanted++
			continue
		}
		s.wanted++
		out[i] = append([]byte("result of "), c.Data...)
	}
	return out
}

func (s *flagSM) counts() (wanted, unwanted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wanted, s.unwanted
}

func (s *flagSM) Query([]byte) []byte       { return nil }
func (s *flagSM) Snapshot() ([]byte, error) { return []byte{0}, nil }
func (s *flagSM) Restore([]byte) error      { return nil }

// Only the proposer's replica is asked for a command's result: the others
// apply it with NoResult (their results would be thrown away), and the
// proposer still gets its result.
func TestNoResultAtNonProposers(t *testing.T) {
	c := newClusterSM(t, 3, []uint64{1}, nil, func() StateMachine { return &flagSM{} })
	lead := c.leader(1, nil)
	const n = 20
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := c.host(lead).Propose(ctx, 1, []byte{byte(i)})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if string(res) != "result of "+string([]byte{byte(i)}) {
			t.Fatalf("proposal %d: result %q", i, res)
		}
	}
	sm := func(id uint64) *flagSM {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.sms[id][1].(*flagSM)
	}
	for _, id := range c.ids {
		waitFor(t, 10*time.Second, "every host applied the proposals", func() bool {
			w, u := sm(id).counts()
			return w+u >= n
		})
		w, u := sm(id).counts()
		if id == lead && (w != n || u != 0) {
			t.Errorf("proposer %d: %d commands with a result wanted, %d without; want %d, 0", id, w, u, n)
		}
		if id != lead && (w != 0 || u != n) {
			t.Errorf("replica %d: %d commands with a result wanted, %d without; want 0, %d", id, w, u, n)
		}
	}
}
