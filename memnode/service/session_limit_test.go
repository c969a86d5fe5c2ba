package service

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/memnode"
)

// heldReads holds every read until n have arrived, then answers them all at
// once with a 1 MiB result each: responses pile up in the session's outbox.
type heldReads struct {
	n    int
	mu   sync.Mutex
	done []func([]byte, error)
}

func (h *heldReads) ProposeAsync(uint64, []byte, func([]byte, error)) {}
func (h *heldReads) Leader(uint64) uint64                             { return 1 }
func (h *heldReads) ReadAsync(_ uint64, _ []byte, done func([]byte, error)) {
	h.mu.Lock()
	h.done = append(h.done, done)
	var all []func([]byte, error)
	if len(h.done) == h.n {
		all = h.done
	}
	h.mu.Unlock()
	for _, d := range all {
		// A result of its own per read, as replication.Host gives: the
		// server recycles it once sent.
		d(memnode.AppendResult(nil, &memnode.Result{FailedCompare: -1, Reads: [][]byte{make([]byte, 1<<20)}}), nil)
	}
}

// Responses that complete together are sent in batches the client can
// receive: a session whose reads complete at once must not break because
// their responses went out as one message over the gRPC limits (64 MiB on
// both sides, as a Host and a client set them).
func TestSessionResponseBatchesFitMessageLimit(t *testing.T) {
	const reads = 100 // 100 MiB of responses
	rep := &heldReads{n: reads}
	s := newServer(1, map[uint64]string{1: "a:1"}, []MemnodeSpec{{ID: 0, Replicas: []uint64{1}}},
		memnode.DefaultConfig(), WallClock, zerolog.Nop(), rep)
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	tuttipb.RegisterMemnodeServer(gs, s)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	defer gs.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := tuttipb.NewMemnodeClient(cc).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var batch tuttipb.RequestBatch
	for i := range reads {
		batch.Requests = append(batch.Requests, &tuttipb.Request{Id: uint64(i + 1), Memnode: 0, Kind: tuttipb.Kind_KIND_READ,
			Reads: []*tuttipb.Read{{Addr: uint64(i) << 20, Len: 1 << 20}}})
	}
	if err := st.Send(&batch); err != nil {
		t.Fatal(err)
	}
	got := 0
	for got < reads {
		rb, err := st.Recv()
		if err != nil {
			t.Fatalf("session broke after %d of %d responses: %v", got, reads, err)
		}
		got += len(rb.GetResponses())
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

// A request whose reads could not come back in one message (each read is
// within MaxItemBytes, but together they exceed the 64 MiB message limit)
// is refused as invalid before it reaches Raft: its response would break
// the session and lose every other response on it.
func TestReadLargerThanAResponseRefused(t *testing.T) {
	fp := &fakeProposer{}
	s := newServer(1, map[uint64]string{1: "a:1"}, []MemnodeSpec{{ID: 0, Replicas: []uint64{1}}},
		memnode.DefaultConfig(), WallClock, zerolog.Nop(), fp)
	for _, kind := range []tuttipb.Kind{tuttipb.Kind_KIND_READ, tuttipb.Kind_KIND_EXEC} {
		req := &tuttipb.Request{Id: 5, Memnode: 0, Kind: kind}
		for i := range 100 {
			req.Reads = append(req.Reads, &tuttipb.Read{Addr: uint64(i) << 20, Len: 1 << 20})
		}
		ob := newOutbox()
		s.handle(req, ob)
		if len(ob.mu.pending) != 1 {
			t.Fatalf("%v: %d responses, want the refusal", kind, len(ob.mu.pending))
		}
		if r := ob.mu.pending[0]; r.GetStatus() != tuttipb.Status_STATUS_INVALID {
			t.Fatalf("%v: status %v (%s), want invalid", kind, r.GetStatus(), r.GetError())
		}
	}
	if fp.proposed != 0 {
		t.Fatalf("%d proposed", fp.proposed)
	}
}
