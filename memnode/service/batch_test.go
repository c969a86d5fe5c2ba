package service_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/memnode/service"
)

// rawCall sends one request to the host at addr over a raw Session
// stream and returns the response.
func rawCall(t *testing.T, ctx context.Context, addr string, req *tuttipb.Request) *tuttipb.Response {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	st, err := tuttipb.NewMemnodeClient(cc).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&tuttipb.RequestBatch{Requests: []*tuttipb.Request{req}}); err != nil {
		t.Fatal(err)
	}
	b, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	st.CloseSend()
	return b.GetResponses()[0]
}

// One Commit request carrying more tids decides all of them in one log
// entry: the coordinator's decision batching depends on it.
func TestCommitWithMoreTidsDecidesAll(t *testing.T) {
	c := startCluster(t, service.RecoveryConfig{Disabled: true})
	var tids []client.TID
	cl := newClient(t, c, func(p client.CrashPoint, tid client.TID) bool {
		if p == client.CrashAfterVotes && len(tids) < 3 {
			tids = append(tids, tid)
			return true
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 3 {
		_, err := cl.Exec(ctx, client.NewTx().Write(0, uint64(8*i), []byte("abcdefgh")).Write(1, uint64(8*i), []byte("ABCDEFGH")))
		if err == nil {
			t.Fatal("the coordinator did not crash")
		}
	}
	if len(tids) != 3 {
		t.Fatalf("crashed %d coordinators, want 3", len(tids))
	}
	wire := func(t client.TID) *tuttipb.Tid { return &tuttipb.Tid{Client: t.Client, Seq: t.Seq, Time: t.Time} }
	for _, mn := range []uint64{0, 1} {
		leader, err := c.WaitLeader(ctx, mn)
		if err != nil {
			t.Fatal(err)
		}
		addr := c.Seeds()[leader]
		if txs, err := c.Hosts[leader].InDoubt(ctx, mn); err != nil || len(txs) != 3 {
			t.Fatalf("memnode %d before: %d in doubt, %v", mn, len(txs), err)
		}
		// Bad input first: more tids on a Prepare is refused.
		r := rawCall(t, ctx, addr, &tuttipb.Request{Id: 1, Memnode: mn, Kind: tuttipb.Kind_KIND_PREPARE, Tid: wire(tids[0]),
			Participants: []uint64{mn}, MoreTids: []*tuttipb.Tid{wire(tids[1])}, Writes: []*tuttipb.Write{{Addr: 0, Data: []byte("x")}}})
		if r.GetStatus() != tuttipb.Status_STATUS_INVALID {
			t.Fatalf("prepare with more tids: %v %s", r.GetStatus(), r.GetError())
		}
		r = rawCall(t, ctx, addr, &tuttipb.Request{Id: 2, Memnode: mn, Kind: tuttipb.Kind_KIND_COMMIT, Tid: wire(tids[0]),
			MoreTids: []*tuttipb.Tid{wire(tids[1]), wire(tids[2])}})
		if r.GetStatus() != tuttipb.Status_STATUS_OK || r.GetOutcome() != tuttipb.Outcome_OUTCOME_COMMITTED {
			t.Fatalf("batched commit at memnode %d: %v %v %s", mn, r.GetStatus(), r.GetOutcome(), r.GetError())
		}
		if txs, err := c.Hosts[leader].InDoubt(ctx, mn); err != nil || len(txs) != 0 {
			t.Fatalf("memnode %d after: %d in doubt, %v", mn, len(txs), err)
		}
	}
	res, err := cl.Exec(ctx, client.NewTx().Read(0, 16, 8).Read(1, 16, 8))
	if err != nil || !res.Committed || string(res.Reads[0]) != "abcdefgh" || string(res.Reads[1]) != "ABCDEFGH" {
		t.Fatalf("read after batched commit: %+v, %v", res, err)
	}
}

// Any logged request may carry the decisions of other tids
// (commit_tids/abort_tids): they are applied in its log entry, before it. A
// read-only request (no log entry) may not carry any.
func TestPrepareCarriesDecisions(t *testing.T) {
	c := startCluster(t, service.RecoveryConfig{Disabled: true})
	var tids []client.TID
	cl := newClient(t, c, func(p client.CrashPoint, tid client.TID) bool {
		if p == client.CrashAfterVotes && len(tids) < 2 {
			tids = append(tids, tid)
			return true
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 2 {
		_, err := cl.Exec(ctx, client.NewTx().Write(0, uint64(8*i), []byte("abcdefgh")).Write(1, uint64(8*i), []byte("ABCDEFGH")))
		if err == nil {
			t.Fatal("the coordinator did not crash")
		}
	}
	if len(tids) != 2 {
		t.Fatalf("crashed %d coordinators, want 2", len(tids))
	}
	wire := func(t client.TID) *tuttipb.Tid { return &tuttipb.Tid{Client: t.Client, Seq: t.Seq, Time: t.Time} }
	leader, err := c.WaitLeader(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	addr := c.Seeds()[leader]
	decisions := func(req *tuttipb.Request) *tuttipb.Request {
		req.CommitTids = []*tuttipb.Tid{wire(tids[0])}
		req.AbortTids = []*tuttipb.Tid{wire(tids[1])}
		return req
	}
	r := rawCall(t, ctx, addr, decisions(&tuttipb.Request{Id: 1, Memnode: 0, Kind: tuttipb.Kind_KIND_READ, Reads: []*tuttipb.Read{{Addr: 0, Len: 8}}}))
	if r.GetStatus() != tuttipb.Status_STATUS_INVALID {
		t.Fatalf("read carrying decisions: %v %s", r.GetStatus(), r.GetError())
	}
	if txs, err := c.Hosts[leader].InDoubt(ctx, 0); err != nil || len(txs) != 2 {
		t.Fatalf("after the refused read: %d in doubt, %v", len(txs), err)
	}
	// A Prepare of a new tid whose write overlaps the first tid's locked
	// item: it votes OK only because the carried commit applies first.
	tid3 := &tuttipb.Tid{Client: 99, Seq: 1, Time: time.Now().UnixNano()}
	r = rawCall(t, ctx, addr, decisions(&tuttipb.Request{Id: 2, Memnode: 0, Kind: tuttipb.Kind_KIND_PREPARE, Tid: tid3,
		Participants: []uint64{0}, Reads: []*tuttipb.Read{{Addr: 0, Len: 16}}, Writes: []*tuttipb.Write{{Addr: 4, Data: []byte("zz")}}}))
	if r.GetStatus() != tuttipb.Status_STATUS_OK || r.GetVote() != tuttipb.Vote_VOTE_OK {
		t.Fatalf("prepare carrying decisions: %v %v %s", r.GetStatus(), r.GetVote(), r.GetError())
	}
	if got := string(r.GetReads()[0]); got != "abcdefgh\x00\x00\x00\x00\x00\x00\x00\x00" {
		t.Fatalf("prepare read %q: the carried commit was not applied first, or the abort was not", got)
	}
	txs, err := c.Hosts[leader].InDoubt(ctx, 0)
	if err != nil || len(txs) != 1 || txs[0].TID.Client != 99 {
		t.Fatalf("after the carrying prepare: in doubt %+v, %v", txs, err)
	}
	// The commit of tid3 carries nothing; memnode 1 still has both.
	r = rawCall(t, ctx, addr, &tuttipb.Request{Id: 3, Memnode: 0, Kind: tuttipb.Kind_KIND_COMMIT, Tid: tid3})
	if r.GetStatus() != tuttipb.Status_STATUS_OK || r.GetOutcome() != tuttipb.Outcome_OUTCOME_COMMITTED {
		t.Fatalf("commit: %v %v %s", r.GetStatus(), r.GetOutcome(), r.GetError())
	}
	res, err := cl.Exec(ctx, client.NewTx().Read(0, 0, 16))
	if err != nil || !res.Committed || string(res.Reads[0]) != "abcdzzgh\x00\x00\x00\x00\x00\x00\x00\x00" {
		t.Fatalf("read after: %+v, %v", res, err)
	}
}
