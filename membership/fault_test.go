package membership

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// unknownWhilePending arms a fault for the next plan that match accepts: it
// runs the real minitransaction in the background and, once pending reports
// true (the table memnode's leader appended it), answers
// client.ErrUnknownOutcome naming the attempt, as the client would (its tid,
// which transit, on the process's client, records on the way), while the
// attempt goes on and may still commit. Without the tid the settling read
// could not fence the attempt, and pending (any held append) could come
// true while the attempt was still on its way.
func unknownWhilePending(armed *atomic.Bool, match func(Plan) bool, pending func() bool, transit *cluster.Transit) func(Plan, func() (*client.Result, error)) (*client.Result, error) {
	return func(p Plan, do func() (*client.Result, error)) (*client.Result, error) {
		if !match(p) || !armed.CompareAndSwap(true, false) {
			return do()
		}
		transit.Watch(DefaultTable.Memnode)
		go func() { _, _ = do() }() // its answer is lost
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if tid, seen := transit.Held(); seen && pending() {
				return nil, &client.Error{Memnode: DefaultTable.Memnode, Err: client.ErrUnknownOutcome, Detail: "test fault", TID: tid}
			}
			time.Sleep(time.Millisecond) // polling a condition, bounded
		}
		return nil, fmt.Errorf("test fault: %w", client.ErrUnknownOutcome)
	}
}

// TestRejoinPendingWhenSettledIsAdopted: an evicted process's rejoin loses
// its answer while the table memnode's leader has it appended, not yet
// committed. Settled by a plain read (ReadIndex, which does not wait for
// it), the rejoin looked not committed; it committed a moment later, and
// the process, finding its own new incarnation in the table, took it for a
// newer copy of itself and stopped (Superseded). The settling read must be
// ordered after the attempt (Tx.Logged).
func TestRejoinPendingWhenSettledIsAdopted(t *testing.T) {
	rejoinWithAppendsHeld(t, time.Second, 15*time.Second)
}

// rejoinWithAppendsHeld has process c declared dead, then holds the table
// memnode's appends for hold while c rejoins, its rejoin's answer lost
// while pending, and waits (at most wait) for c to be alive under its new
// incarnation, never superseded by its own rejoin.
func rejoinWithAppendsHeld(t *testing.T, hold, wait time.Duration) {
	t.Helper()
	faults := cluster.NewFaults()
	e := newEnvWith(t, cluster.Config{WrapTransport: faults.Wrap})
	a := e.start(e.config("a"))
	e.start(e.config("b", a))
	var armed atomic.Bool
	cfg := e.config("c", a)
	transit := cluster.NewTransit()
	cfg.Client = e.client(grpc.WithTransportCredentials(insecure.NewCredentials()), transit.DialOption())
	cfg.execFault = unknownWhilePending(&armed, rejoinOfC, func() bool { return faults.HeldAppends() > 0 }, transit)
	defer faults.ReleaseAppends()
	rejoinThrough(t, e, a, cfg, &armed, func() {
		faults.HoldAppends(DefaultTable.Memnode)
		go func() {
			time.Sleep(hold)
			faults.ReleaseAppends()
		}()
	}, wait)
}

// rejoinOfC matches process c's rejoin after it was declared dead.
func rejoinOfC(p Plan) bool {
	return p.New.ID == "c" && p.New.State == StateAlive && p.Old.State == StateDead
}

// rejoinThrough starts process c with cfg, has it declared dead while
// paused, arms its fault (armed), calls before, resumes it and waits
// (rejoinedOnce).
func rejoinThrough(t *testing.T, e *env, a *Node, cfg Config, armed *atomic.Bool, before func(), wait time.Duration) {
	t.Helper()
	c := e.start(cfg)
	rc, stopC := record(c)
	defer stopC()
	e.pause(c, true)
	waitFor(t, 10*time.Second, "paused c declared dead", func() bool { return row(t, a, "c").State == StateDead })
	armed.Store(true)
	before()
	e.resume(c)
	rejoinedOnce(t, a, c, rc, armed, wait)
}

// rejoinedOnce waits (at most wait) for c to be alive under its new
// incarnation, never superseded by its own rejoin, and checks that the
// fault armed by armed fired.
func rejoinedOnce(t *testing.T, a, c *Node, rc *recorder, armed *atomic.Bool, wait time.Duration) {
	t.Helper()
	waitFor(t, wait, "c alive again under its new incarnation", func() bool {
		if rc.has(func(ch Change) bool { return ch.Kind == Superseded }) {
			t.Fatalf("c stopped as superseded by its own rejoin: table row %+v, c's incarnation %d", row(t, a, "c"), c.Incarnation())
		}
		r := row(t, a, "c")
		return r.State == StateAlive && r.Incarnation > 3 && c.Incarnation() == r.Incarnation
	})
	if armed.Load() {
		t.Fatal("the fault did not fire")
	}
}

// TestUnsettledRejoinIsAdopted: an evicted process's rejoin loses its
// answer and cannot be settled (the table memnode's leader holds it longer
// than the settling read waits), then commits. The process must recognise
// the committed row as its own rejoin, not as a newer copy of itself
// (Superseded, which stops it for good).
func TestUnsettledRejoinIsAdopted(t *testing.T) {
	rejoinWithAppendsHeld(t, opTimeout+1500*time.Millisecond, 25*time.Second) // past the settling read's deadline
}

// TestRejoinInTransitWhenSettledIsAdopted: an evicted process's rejoin
// loses its answer while the request is still on its way to the table
// memnode's leader. The settling read, though logged, came before it and
// said "not committed"; the rejoin landed right after, and the process,
// finding its own new incarnation in the table, took it for a newer copy
// of itself and stopped (Superseded). The settling read now fences the
// attempt, which the memnode then refuses.
func TestRejoinInTransitWhenSettledIsAdopted(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	e.start(e.config("b", a))
	transit := cluster.NewTransit()
	var armed atomic.Bool
	cfg := e.config("c", a)
	cfg.Client = e.client(grpc.WithTransportCredentials(insecure.NewCredentials()), transit.DialOption())
	cfg.execFault = func(p Plan, do func() (*client.Result, error)) (*client.Result, error) {
		if !rejoinOfC(p) || !armed.CompareAndSwap(true, false) {
			return do()
		}
		transit.Arm(DefaultTable.Memnode)
		go func() { _, _ = do() }() // its answer is lost
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if tid, held := transit.Held(); held {
				return nil, &client.Error{Memnode: DefaultTable.Memnode, Err: client.ErrUnknownOutcome, TID: tid}
			}
			time.Sleep(time.Millisecond) // polling a condition, bounded
		}
		return nil, fmt.Errorf("test fault: nothing taken aside: %w", client.ErrUnknownOutcome)
	}
	var once sync.Once
	cfg.afterResolveRead = func() {
		once.Do(func() {
			if err := transit.Release(); err != nil {
				t.Error(err)
			}
		})
	}
	rejoinThrough(t, e, a, cfg, &armed, func() {}, 15*time.Second)
}

// resolve settles an unknown outcome with a read that fences the attempt on
// the table's memnode. A fence there of an attempt that ran on another
// memnode settles nothing: the read calls the attempt not applied while
// it can still land. resolve built its fence with Tx.Fence, which cannot
// tell, and answered; it now settles through client.Client.Settle, which
// refuses such a step (ErrInvalid) before sending anything. An attempt on
// the table's memnode is settled as before.
func TestResolveRefusesAnAttemptOfAnotherMemnode(t *testing.T) {
	e := newEnv(t)
	transit := cluster.NewTransit()
	cl := e.client(grpc.WithTransportCredentials(insecure.NewCredentials()), transit.DialOption())
	n := &Node{cfg: Config{Client: cl, Table: DefaultTable}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mn := DefaultTable.Memnode
	tid := client.TID{Client: 1 << 40, Seq: 1, Time: time.Now().UnixNano()}
	p := Plan{Base: Table{Version: 7}} // a change the table (never written) does not have

	elsewhere := fmt.Errorf("registering: %w", &client.Error{Memnode: mn + 1, Err: client.ErrUnknownOutcome, TID: tid})
	if committed, err := n.resolve(ctx, p, elsewhere); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("resolve on memnode %d of an attempt on memnode %d: committed %v, %v; want ErrInvalid", mn, mn+1, committed, err)
	}
	if k := transit.Fences(mn); k != 0 {
		t.Fatalf("%d fenced requests sent to memnode %d; want none", k, mn)
	}

	here := fmt.Errorf("registering: %w", &client.Error{Memnode: mn, Err: client.ErrUnknownOutcome, TID: tid})
	committed, err := n.resolve(ctx, p, here)
	if err != nil || committed || transit.Fences(mn) == 0 {
		t.Fatalf("resolve on the attempt's memnode: committed %v, %v, %d fenced requests; want not committed, some", committed, err, transit.Fences(mn))
	}
}

// TestRegistrationRidesOutAnUnknownSettlingStep: a registration whose
// answer is lost (it committed) is settled by a logged read, and that
// read's own answer is lost too, as when the table memnode's leader loses
// its term while the read is in its log. Before the fix the settling step
// was retried only when unavailable: Start failed ("membership:
// registering: ... outcome unknown", seen in TestRandomizedVirtualSynchrony
// under memnode leader crashes) although the registration was in the table.
func TestRegistrationRidesOutAnUnknownSettlingStep(t *testing.T) {
	e := newEnv(t)
	a := e.start(e.config("a"))
	var planArmed, readArmed atomic.Bool
	planArmed.Store(true)
	readArmed.Store(true)
	lost := func(what string) error {
		return &client.Error{Memnode: DefaultTable.Memnode, Err: client.ErrUnknownOutcome, Detail: "test fault: " + what + "'s answer lost"}
	}
	cfg := e.config("b", a)
	cfg.execFault = func(p Plan, do func() (*client.Result, error)) (*client.Result, error) {
		if p.New.ID != "b" || !planArmed.CompareAndSwap(true, false) {
			return do()
		}
		if res, err := do(); err != nil || !res.Committed {
			return res, err
		}
		return nil, lost("the registration")
	}
	cfg.resolveFault = func(do func() (*client.Result, error)) (*client.Result, error) {
		if !readArmed.CompareAndSwap(true, false) {
			return do()
		}
		_, _ = do()
		return nil, lost("the settling read")
	}
	b := e.start(cfg)
	if planArmed.Load() || readArmed.Load() {
		t.Fatalf("a fault did not fire (registration %v, settling read %v)", !planArmed.Load(), !readArmed.Load())
	}
	if r := row(t, a, "b"); r.State != StateAlive || r.Incarnation != b.Incarnation() || b.Incarnation() != 2 {
		t.Fatalf("b's row %+v, b's incarnation %d; want alive under incarnation 2", r, b.Incarnation())
	}
}
