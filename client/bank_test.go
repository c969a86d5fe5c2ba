package client_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

// bankCrash decides, deterministically from the tid, whether and where the
// coordinator of a two-phase attempt dies: one attempt in crashEvery (the
// sequence numbers crashEvery/2, then every crashEvery), at the three
// points in turn, so every coordinator reaches each point within its first
// 3×crashEvery attempts however fast the run. (A hash of the sequence
// number picked the point before; the first after-votes crash then came
// at attempt 134, which a fast run did not always reach.)
func bankCrash(crashEvery uint64, counts *[4]atomic.Int64) func(client.CrashPoint, client.TID) bool {
	return func(p client.CrashPoint, tid client.TID) bool {
		if tid.Seq%crashEvery != crashEvery/2 {
			return false
		}
		if client.CrashPoint(tid.Seq/crashEvery%3+1) != p {
			return false
		}
		counts[p].Add(1)
		return true
	}
}

// inDoubtTotal sums the in-doubt tids over all memnodes, asking each
// memnode's leader; ok is false while some leader cannot be asked.
func inDoubtTotal(ctx context.Context, c *cluster.Cluster) (total int, ok bool) {
	for _, m := range c.Memnodes() {
		found := false
		for _, h := range c.Hosts {
			if h == nil {
				continue
			}
			txs, err := h.InDoubt(ctx, m.ID)
			if errors.Is(err, replication.ErrNotLeader) {
				continue
			}
			if err != nil {
				return 0, false
			}
			total += len(txs)
			found = true
			break
		}
		if !found {
			return 0, false
		}
	}
	return total, true
}

func recoveryResolved(c *cluster.Cluster) uint64 {
	var n uint64
	for _, h := range c.Hosts {
		if h != nil {
			n += h.RecoveryStats().Resolved
		}
	}
	return n
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v: %s", what, within, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Bank with coordinator crashes: concurrent transfers between accounts on
// three memnodes, each a two-phase minitransaction (compare both balances,
// write both). A deterministic fraction of coordinators die at each crash
// point, and the leader of one memnode crashes and restarts during the load.
// Recovery must leave nothing in doubt, the total must be preserved (read
// atomically across memnodes), and no lock may leak.
func TestBankSurvivesCoordinatorCrashes(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Memnodes: 3,
		Recovery: service.RecoveryConfig{Interval: 50 * time.Millisecond, Timeout: 300 * time.Millisecond}})
	const accounts, initial, workers, transfers = 12, 1000, 4, 30
	loc := func(a int) (uint64, uint64) { return uint64(a % 3), uint64(a/3) * 8 }
	plain := newClient(t, c.Seeds())
	init := client.NewTx()
	for a := 0; a < accounts; a++ {
		mn, addr := loc(a)
		init.Write(mn, addr, u64(initial))
	}
	mustExec(t, plain, init)
	readAll := func(ctx context.Context, cl *client.Client) ([]uint64, error) {
		tx := client.NewTx()
		for a := 0; a < accounts; a++ {
			mn, addr := loc(a)
			tx.Read(mn, addr, 8)
		}
		r, err := cl.Exec(ctx, tx)
		if err != nil {
			return nil, err
		}
		out := make([]uint64, accounts)
		for a, d := range r.Reads {
			out[a] = binary.LittleEndian.Uint64(d)
		}
		return out, nil
	}
	sum := func(bs []uint64) (s uint64) {
		for _, b := range bs {
			s += b
		}
		return s
	}

	var crashes [4]atomic.Int64
	var committed, crashedN, gaveUp, done atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for w := 0; w < workers; w++ {
		cl, err := client.New(ctx, client.Config{Seeds: c.Seeds(), ID: uint64(100 + w), Crash: bankCrash(20, &crashes)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer done.Add(1)
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for i := 0; i < transfers; i++ {
				from := rng.IntN(accounts)
				to := (from + 1 + rng.IntN(2) + 3*rng.IntN(accounts/3)) % accounts // on another memnode
				fm, fa := loc(from)
				tm, ta := loc(to)
				r, err := cl.Exec(ctx, client.NewTx().Read(fm, fa, 8).Read(tm, ta, 8))
				if err != nil {
					if errors.Is(err, client.ErrCoordinatorCrashed) { // the read is two-phase too
						crashedN.Add(1)
						continue
					}
					if errors.Is(err, client.ErrContention) || errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrUnknownOutcome) {
						gaveUp.Add(1)
						continue
					}
					errs <- fmt.Errorf("read: %w", err)
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
				switch {
				case errors.Is(err, client.ErrCoordinatorCrashed):
					crashedN.Add(1)
				case errors.Is(err, client.ErrContention), errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrUnknownOutcome):
					gaveUp.Add(1) // the leader crash; atomic either way
				case err != nil:
					errs <- fmt.Errorf("transfer: %w", err)
					return
				case r.Committed:
					committed.Add(1)
				}
			}
		}()
	}
	// An auditor reads every balance atomically while transfers and
	// recoveries run: the total never changes.
	wg.Add(1)
	audits := 0
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond) // pacing, so audits do not starve transfers
		defer tick.Stop()
		for done.Load() < workers {
			<-tick.C
			bs, err := readAll(ctx, plain)
			if err != nil {
				if errors.Is(err, client.ErrContention) || errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrUnknownOutcome) {
					continue
				}
				errs <- fmt.Errorf("audit: %w", err)
				return
			}
			audits++
			if s := sum(bs); s != accounts*initial {
				errs <- fmt.Errorf("audit saw total %d, want %d: %v", s, accounts*initial, bs)
				return
			}
		}
	}()

	// Crash the leader of memnode 1 once transfers are under way, and bring
	// it back once they continue without it.
	waitFor(t, 30*time.Second, "first commits", func() (bool, string) {
		return committed.Load() >= 10 || done.Load() == workers, fmt.Sprint(committed.Load())
	})
	li := leaderIndex(t, c, 1)
	if err := c.StopHost(li); err != nil {
		t.Fatal(err)
	}
	mark := committed.Load()
	waitFor(t, 30*time.Second, "commits without the crashed leader", func() (bool, string) {
		return committed.Load() >= mark+10 || done.Load() == workers, fmt.Sprint(committed.Load() - mark)
	})
	t.Logf("host %d (leader of memnode 1) crashed; %d transfers committed while it was down", li+1, committed.Load()-mark)
	if err := c.RestartHost(li); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	waitFor(t, 30*time.Second, "no tid in doubt", func() (bool, string) {
		n, ok := inDoubtTotal(ctx, c)
		return ok && n == 0, fmt.Sprintf("in doubt %d (all leaders answered: %v)", n, ok)
	})
	bs, err := readAll(ctx, plain)
	if err != nil {
		t.Fatal(err)
	}
	if s := sum(bs); s != accounts*initial {
		t.Fatalf("total %d, want %d: %v", s, accounts*initial, bs)
	}
	// No lock leaked: every account takes a write at the first attempt.
	strict, err := client.New(ctx, client.Config{Seeds: c.Seeds(), Retry: client.RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close()
	for a := 0; a < accounts; a++ {
		mn, addr := loc(a)
		// One attempt allows no BAD-LOCK retry; a group still electing a
		// leader after the restart (ErrUnavailable) is not a lock and is
		// asked again until the deadline.
		var r *client.Result
		var err error
		for {
			r, err = strict.Exec(ctx, client.NewTx().Compare(mn, addr, u64(bs[a])).Write(mn, addr, u64(bs[a])))
			if !errors.Is(err, client.ErrUnavailable) || ctx.Err() != nil {
				break
			}
		}
		if err != nil || !r.Committed {
			t.Fatalf("account %d (memnode %d) not writable: %+v %v", a, mn, r, err)
		}
	}
	res := recoveryResolved(c)
	t.Logf("transfers: %d committed, %d coordinators crashed (after-prepare %d, after-votes %d, after-first-decision %d), %d gave up; %d audits; recovery resolved %d tids (surviving hosts)",
		committed.Load(), crashedN.Load(), crashes[client.CrashAfterPrepareSent].Load(), crashes[client.CrashAfterVotes].Load(),
		crashes[client.CrashAfterFirstDecision].Load(), gaveUp.Load(), audits, res)
	for p := client.CrashAfterPrepareSent; p <= client.CrashAfterFirstDecision; p++ {
		if crashes[p].Load() == 0 {
			t.Errorf("no coordinator crashed at %v", p)
		}
	}
	if committed.Load() == 0 || res == 0 {
		t.Fatalf("committed %d, recovery resolved %d: want both > 0", committed.Load(), res)
	}
}
