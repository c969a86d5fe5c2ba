package service_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/memnode/service"
)

// A participant without quorum must not hold up the recovery of other
// tids. Each tid whose participant cannot answer takes recovery up to
// 10 × Timeout; resolved one after another, a few of them delayed every
// other tid of the host's memnodes by that much each, past the horizon
// (after which recovery cannot decide them). Here host 1 leads memnodes 0
// and 1, three tids on memnodes 0 and 2 stall (memnode 2's appends are
// held), and a tid on memnodes 0 and 1 (only host 1 resolves it) must
// still be resolved promptly.
func TestRecoveryNotHeldUpByAStalledParticipant(t *testing.T) {
	const timeout = 2 * time.Second
	faults := cluster.NewFaults()
	c := startClusterWith(t, cluster.Config{WrapTransport: faults.Wrap,
		Recovery: service.RecoveryConfig{Interval: 50 * time.Millisecond, Timeout: timeout}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, mn := range []uint64{0, 1} {
		if err := cluster.Eventually(ctx, fmt.Sprintf("memnode %d led by host 1", mn), func() error {
			lead := c.Hosts[0].Replication().Leader(mn)
			if lead == 1 {
				return nil
			}
			if h := c.Host(lead); h != nil {
				_ = h.Replication().TransferLeader(ctx, mn, 1)
			}
			return fmt.Errorf("led by host %d", lead)
		}); err != nil {
			t.Fatal(err)
		}
	}
	crashing := newClient(t, c, func(p client.CrashPoint, _ client.TID) bool { return p == client.CrashAfterVotes })
	inDoubtTx := func(mns ...uint64) client.TID {
		t.Helper()
		var tx client.Tx
		for _, mn := range mns {
			tx.Write(mn, 4096, []byte(fmt.Sprintf("tx %v", mns)))
		}
		if _, err := crashing.Exec(ctx, &tx); !errors.Is(err, client.ErrCoordinatorCrashed) {
			t.Fatalf("exec on %v: %v, want ErrCoordinatorCrashed", mns, err)
		}
		// The newest tid in doubt at the last participant with exactly
		// these participants.
		txs, err := inDoubt(ctx, c, mns[len(mns)-1])
		if err != nil {
			t.Fatal(err)
		}
		var tid client.TID
		for _, x := range txs {
			if slices.Equal(x.Participants, mns) && (tid == client.TID{} || x.TID.Seq > tid.Seq) {
				tid = client.TID(x.TID)
			}
		}
		if tid == (client.TID{}) {
			t.Fatalf("no tid of %v in doubt at memnode %d: %+v", mns, mns[len(mns)-1], txs)
		}
		return tid
	}
	// Three tids that will stall, then memnode 2 loses its quorum (its
	// appends held), well before recovery's Timeout.
	for range 3 {
		inDoubtTx(0, 2)
	}
	faults.HoldAppends(2)
	defer faults.ReleaseAppends()
	tid := inDoubtTx(0, 1)
	deadline := time.Now().Add(timeout + 4*time.Second)
	for {
		txs, err := inDoubt(ctx, c, 1)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(txs, func(x memnode.InDoubtTx) bool { return client.TID(x.TID) == tid }) {
			return // resolved
		}
		if time.Now().After(deadline) {
			t.Fatalf("tid %v on memnodes 0 and 1 still in doubt %v past recovery's timeout, behind three stalled tids", tid, time.Since(deadline.Add(-4*time.Second)))
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, bounded by deadline
	}
}
