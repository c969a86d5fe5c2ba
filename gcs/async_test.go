package gcs_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/vscheck"
)

// MulticastAsync from one goroutine: every message is ordered in the order
// of the calls (per-sender FIFO, inline and queued sizes mixed), delivered
// by every member in one total order, and done is called exactly once per
// call, with nil; errors come through done too (ErrTooLarge, ErrNotMember
// after Leave), never on the caller's goroutine before the call returns.
func TestMulticastAsync(t *testing.T) {
	e := newEnv(t)
	ms := e.joinAll(3, "g")
	a := ms[0]
	<-a.installed
	const n = 200
	var calls [n]atomic.Int32
	results := make(chan error, n)
	for i := range n {
		a.mu.Lock()
		a.seq++
		p := fmt.Sprintf("%s/%d/", a.name, a.seq)
		if i%3 == 0 { // through the sender's queue; the others inline
			p += strings.Repeat("x", 3000)
		}
		a.add(vscheck.Event{Kind: vscheck.Send, Sender: a.name, Seq: a.seq, Payload: p})
		a.mu.Unlock()
		a.g.MulticastAsync([]byte(p), func(err error) {
			calls[i].Add(1)
			results <- err
		})
	}
	for range n {
		select {
		case err := <-results:
			if err != nil {
				t.Fatalf("MulticastAsync: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("not every MulticastAsync completed")
		}
	}
	deliveredInOrder(t, ms, n)
	a.mu.Lock()
	for i, m := range a.msgs {
		if m.Sender != a.name || m.Seq != uint64(i+1) || !strings.HasPrefix(string(m.Payload), fmt.Sprintf("%s/%d/", a.name, i+1)) {
			a.mu.Unlock()
			t.Fatalf("delivery %d: %s/%d %.20q, want the calls' order", i, m.Sender, m.Seq, m.Payload)
		}
	}
	a.mu.Unlock()

	tooLarge := make(chan error, 1)
	a.g.MulticastAsync(make([]byte, gcs.MaxBatchBytesLimit), func(err error) { tooLarge <- err })
	if err := <-tooLarge; !errors.Is(err, gcs.ErrTooLarge) {
		t.Fatalf("MulticastAsync of %d bytes: %v, want ErrTooLarge", gcs.MaxBatchBytesLimit, err)
	}
	e.leaveAll(ms)
	left := make(chan error, 1)
	a.g.MulticastAsync([]byte("late"), func(err error) { left <- err })
	if err := <-left; !errors.Is(err, gcs.ErrNotMember) {
		t.Fatalf("MulticastAsync after Leave: %v, want ErrNotMember", err)
	}
	for i := range calls {
		if c := calls[i].Load(); c != 1 {
			t.Fatalf("done of message %d called %d times", i, c)
		}
	}
}
