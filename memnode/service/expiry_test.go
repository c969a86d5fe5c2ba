package service_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/memnode/service"
)

// Regression tests for recovery past the memnode horizon (found by review):
// a memnode forgets a tid's outcome one horizon after tid.Time, and used to
// answer AbortUnlessVoted of a forgotten tid with BAD-FORCED ("did not vote,
// never will") even when the tid had committed there, so recovery aborted
// it at a participant still holding it in doubt: committed at one memnode,
// aborted at the other.

func horizonCluster(t *testing.T, horizon time.Duration, rc service.RecoveryConfig, log zerolog.Logger) *cluster.Cluster {
	t.Helper()
	return startClusterWith(t, cluster.Config{Logger: log, Memnode: memnode.Config{Horizon: int64(horizon)}, Recovery: rc})
}

// crashAfterCommitAt1 runs a two-phase write of "x" at memnode 1 and "y" at
// memnode 2 (address 8) whose coordinator dies once the Commit reached
// memnode 1: committed there, in doubt at memnode 2. It returns the tid as
// memnode 2 lists it.
func crashAfterCommitAt1(t *testing.T, ctx context.Context, c *cluster.Cluster, cl *client.Client) memnode.InDoubtTx {
	t.Helper()
	if _, err := cl.Exec(ctx, client.NewTx().Write(1, 8, []byte("x")).Write(2, 8, []byte("y"))); !errors.Is(err, client.ErrCoordinatorCrashed) {
		t.Fatalf("exec: %v, want ErrCoordinatorCrashed", err)
	}
	txs, err := inDoubt(ctx, c, 2)
	if err != nil || len(txs) != 1 {
		t.Fatalf("in doubt at memnode 2: %+v %v", txs, err)
	}
	if txs, err := inDoubt(ctx, c, 1); err != nil || len(txs) != 0 {
		t.Fatalf("in doubt at memnode 1: %+v %v, want none (committed)", txs, err)
	}
	return txs[0]
}

// checkStillInDoubt checks that the tid is still in doubt at memnode 2 and
// committed at memnode 1: nothing decided it the other way.
func checkStillInDoubt(t *testing.T, ctx context.Context, c *cluster.Cluster, cl *client.Client, want memnode.InDoubtTx) {
	t.Helper()
	txs, err := inDoubt(ctx, c, 2)
	if err != nil || len(txs) != 1 || txs[0].TID != want.TID {
		t.Fatalf("memnode 2 in doubt: %+v %v; want %v still in doubt (not aborted)", txs, err, want.TID)
	}
	r, err := cl.Exec(ctx, client.NewTx().Read(1, 8, 1))
	if err != nil || string(r.Reads[0]) != "x" {
		t.Fatalf("memnode 1 reads %q, %v; want the committed \"x\"", r.Reads, err)
	}
}

// Participant 2 is cut off (no recovery runs) for longer than the horizon
// after the Commit reached participant 1. Recover must not abort: memnode 1
// committed the tid and has forgotten it.
func TestRecoverRefusesTidPastHorizon(t *testing.T) {
	const horizon = time.Second
	c := horizonCluster(t, horizon, service.RecoveryConfig{Disabled: true}, zerolog.Nop())
	crashing := newClient(t, c, func(p client.CrashPoint, _ client.TID) bool { return p == client.CrashAfterFirstDecision })
	plain := newClient(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx := crashAfterCommitAt1(t, ctx, c, crashing)

	// Memnode 1 forgets the tid once an entry stamped after tid.Time+horizon
	// applies: the AbortUnlessVoted below is stamped with the host's clock,
	// the clock this test reads.
	past := time.Unix(0, tx.TID.Time).Add(horizon + 10*time.Millisecond)
	time.Sleep(time.Until(past))

	for range 2 { // refusing decides nothing, so a second call answers the same
		committed, err := plain.Recover(ctx, client.TID(tx.TID), tx.Participants)
		var e *client.Error
		if !errors.Is(err, client.ErrExpired) || !errors.As(err, &e) || e.Memnode != 1 || committed {
			t.Fatalf("recover: committed=%v err=%v; want ErrExpired at memnode 1", committed, err)
		}
	}
	checkStillInDoubt(t, ctx, c, plain, tx)

	// The operator, who knows it committed (memnode 1 holds "x"), decides.
	if err := plain.Decide(ctx, client.TID(tx.TID), tx.Participants, true); err != nil {
		t.Fatalf("decide commit: %v", err)
	}
	if txs, err := inDoubt(ctx, c, 2); err != nil || len(txs) != 0 {
		t.Fatalf("in doubt at memnode 2 after the decision: %+v %v", txs, err)
	}
	r, err := plain.Exec(ctx, client.NewTx().Read(1, 8, 1).Read(2, 8, 1))
	if err != nil || string(r.Reads[0]) != "x" || string(r.Reads[1]) != "y" {
		t.Fatalf("after the decision: reads %q, %v; want the whole minitransaction", r.Reads, err)
	}
}

// The hosts' own recovery, with a client clock lagging by almost the
// horizon: memnode 1 forgets the tid right after its Commit, which never
// reaches memnode 2. Recovery must leave the tid in doubt at memnode 2,
// count it and log it once, not abort it.
func TestRecoveryLeavesForgottenTidInDoubt(t *testing.T) {
	const horizon = 2 * time.Second
	const lag = horizon - 200*time.Millisecond
	var logs syncbuf.Buffer
	// Timeout 400ms: recovery asks memnode 1 at least 2.2s after tid.Time.
	c := horizonCluster(t, horizon, service.RecoveryConfig{Interval: 50 * time.Millisecond, Timeout: 400 * time.Millisecond},
		zerolog.New(&logs).Level(zerolog.InfoLevel))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lagging, err := client.New(ctx, client.Config{Seeds: c.Seeds(),
		Now:   func() time.Time { return time.Now().Add(-lag) },
		Crash: func(p client.CrashPoint, _ client.TID) bool { return p == client.CrashAfterFirstDecision }})
	if err != nil {
		t.Fatal(err)
	}
	defer lagging.Close()
	plain := newClient(t, c, nil)
	before := recoveryTotals(c)
	tx := crashAfterCommitAt1(t, ctx, c, lagging)

	waitRecovery(t, c, 10*time.Second, "a tid counted expired", func(s service.RecoveryStats) bool {
		return s.Expired > before.Expired
	})
	// Many scans later: still in doubt, counted and logged once, never
	// resolved.
	seen := recoveryTotals(c)
	waitRecovery(t, c, 10*time.Second, "20 more scans", func(s service.RecoveryStats) bool {
		return s.Scans >= seen.Scans+20
	})
	// Counted and logged once per host that led memnode 2 meanwhile (a
	// leader change under load makes it two), not once per scan.
	s := recoveryTotals(c)
	hosts := uint64(len(c.Hosts))
	if s.Expired < before.Expired+1 || s.Expired > before.Expired+hosts || s.Stuck < 1 || s.Resolved != before.Resolved {
		t.Fatalf("recovery stats %+v (before %+v): want the tid counted expired once per leader, stuck, none resolved", s, before)
	}
	const msg = "in-doubt minitransaction past the memnode horizon"
	if n := logs.Lines(`"level":"error"`, msg); n < 1 || n > int(hosts) {
		t.Fatalf("%d error-level log lines %q over 20 scans, want one per leader", n, msg)
	}
	checkStillInDoubt(t, ctx, c, plain, tx)
}

// recoveryTotals sums every host's recovery stats.
func recoveryTotals(c *cluster.Cluster) service.RecoveryStats {
	var s service.RecoveryStats
	for _, h := range c.Hosts {
		if h == nil {
			continue
		}
		r := h.RecoveryStats()
		s.Scans += r.Scans
		s.Resolved += r.Resolved
		s.Committed += r.Committed
		s.Aborted += r.Aborted
		s.Failed += r.Failed
		s.Expired += r.Expired
		s.Stuck += r.Stuck
	}
	return s
}

// waitRecovery polls the summed recovery stats until cond holds.
func waitRecovery(t *testing.T, c *cluster.Cluster, within time.Duration, what string, cond func(service.RecoveryStats) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond(recoveryTotals(c)) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v: %+v", what, within, recoveryTotals(c))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
