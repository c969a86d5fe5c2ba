package client

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// fakeHost is a memnode host that votes OK to everything and records the
// requests it receives; tests choose which answers to withhold or change.
type fakeHost struct {
	tuttipb.UnimplementedMemnodeServer
	addr string

	mu     sync.Mutex
	reqs   []*tuttipb.Request // every request received, in order
	answer func(*tuttipb.Request) *tuttipb.Response
	held   []func() // withheld answers, to send on release
	seen   chan struct{}
}

func startFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeHost{addr: lis.Addr().String(), seen: make(chan struct{}, 1)}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20)) // as memnode/service's hosts
	tuttipb.RegisterMemnodeServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeHost) Cluster(context.Context, *tuttipb.ClusterRequest) (*tuttipb.ClusterInfo, error) {
	return &tuttipb.ClusterInfo{
		Hosts: []*tuttipb.HostInfo{{Id: 1, Addr: f.addr}},
		Memnodes: []*tuttipb.MemnodeInfo{
			{Id: 0, Replicas: []uint64{1}, Leader: 1, Size: 1 << 20},
			{Id: 1, Replicas: []uint64{1}, Leader: 1, Size: 1 << 20},
		},
		MaxItemBytes: 1 << 20, MaxItems: 1024,
	}, nil
}

func ok(req *tuttipb.Request) *tuttipb.Response {
	r := &tuttipb.Response{Id: req.GetId(), Status: tuttipb.Status_STATUS_OK, Vote: tuttipb.Vote_VOTE_OK, FailedCompare: -1}
	switch req.GetKind() {
	case tuttipb.Kind_KIND_COMMIT:
		r.Outcome = tuttipb.Outcome_OUTCOME_COMMITTED
	case tuttipb.Kind_KIND_ABORT:
		r.Outcome = tuttipb.Outcome_OUTCOME_ABORTED
	}
	for _, rd := range req.GetReads() {
		r.Reads = append(r.Reads, make([]byte, rd.GetLen()))
	}
	return r
}

func (f *fakeHost) Session(st tuttipb.Memnode_SessionServer) error {
	var sendMu sync.Mutex
	send := func(r *tuttipb.Response) {
		sendMu.Lock()
		defer sendMu.Unlock()
		st.Send(&tuttipb.ResponseBatch{Responses: []*tuttipb.Response{r}})
	}
	for {
		b, err := st.Recv()
		if err != nil {
			return nil
		}
		for _, req := range b.GetRequests() {
			f.mu.Lock()
			f.reqs = append(f.reqs, proto.Clone(req).(*tuttipb.Request))
			var r *tuttipb.Response
			if f.answer != nil {
				r = f.answer(req)
			} else {
				r = ok(req)
			}
			if r == breakStream {
				f.mu.Unlock()
				return errors.New("stream broken by the test")
			}
			if r == nil {
				f.held = append(f.held, func() { send(ok(req)) })
			}
			f.mu.Unlock()
			if r != nil {
				send(r)
			}
			select {
			case f.seen <- struct{}{}:
			default:
			}
		}
	}
}

// breakStream, as an answer, makes the fake end the session with an error.
var breakStream = &tuttipb.Response{}

func (f *fakeHost) setAnswer(a func(*tuttipb.Request) *tuttipb.Response) {
	f.mu.Lock()
	f.answer = a
	f.mu.Unlock()
}

// release sends the withheld answers.
func (f *fakeHost) release() {
	f.mu.Lock()
	held := f.held
	f.held = nil
	f.mu.Unlock()
	for _, send := range held {
		send()
	}
}

// waitFor waits until some received request satisfies cond and returns it.
func (f *fakeHost) waitFor(t *testing.T, what string, cond func(*tuttipb.Request) bool) *tuttipb.Request {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		f.mu.Lock()
		for _, r := range f.reqs {
			if cond(r) {
				f.mu.Unlock()
				return r
			}
		}
		f.mu.Unlock()
		select {
		case <-f.seen:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no request %s received", what)
		}
	}
}

func (f *fakeHost) received() []*tuttipb.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

func hasTid(ts []*tuttipb.Tid, tid *tuttipb.Tid) bool {
	return slices.ContainsFunc(ts, func(x *tuttipb.Tid) bool { return proto.Equal(x, tid) })
}

func newFakeClient(t *testing.T, f *fakeHost) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := New(ctx, Config{Seeds: []string{f.addr}})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// isBlocker marks the one-phase request whose answer the tests withhold to
// keep the session busy.
func isBlocker(req *tuttipb.Request) bool {
	return req.GetKind() == tuttipb.Kind_KIND_EXEC && len(req.GetWrites()) > 0 && req.GetWrites()[0].GetAddr() == 0xb10c
}

// startBlocker sends a one-phase write whose answer f withholds, so the
// session stays busy until f.release; the returned channel yields its error.
func startBlocker(t *testing.T, cl *Client, f *fakeHost) chan error {
	done := make(chan error, 1)
	go func() {
		_, err := cl.Exec(context.Background(), NewTx().Write(0, 0xb10c, []byte("b")))
		done <- err
	}()
	f.waitFor(t, "blocker", isBlocker)
	return done
}

func twoPhase(t *testing.T, cl *Client, addr uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := cl.Exec(ctx, NewTx().Write(0, addr, []byte("x")).Write(1, addr, []byte("y")))
	if err != nil || !res.Committed {
		t.Fatalf("two-phase exec: %+v, %v", res, err)
	}
}

func prepareOf(f *fakeHost, mn uint64, addr uint64) func(*tuttipb.Request) bool {
	return func(r *tuttipb.Request) bool {
		return r.GetKind() == tuttipb.Kind_KIND_PREPARE && r.GetMemnode() == mn && r.GetWrites()[0].GetAddr() == addr
	}
}

// While the session is busy, a decision waits for the next batch and rides
// on a Prepare to the same memnode; once the session is idle, waiting
// decisions leave in a decision request of their own.
func TestDecisionRidesOnNextPrepare(t *testing.T) {
	defer func(d time.Duration) { decisionDelay = d }(decisionDelay)
	decisionDelay = time.Hour // only the carrier or idleness may send it
	f := startFakeHost(t)
	f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
		if isBlocker(r) {
			return nil
		}
		return ok(r)
	})
	cl := newFakeClient(t, f)
	blocked := startBlocker(t, cl, f)

	twoPhase(t, cl, 8)
	tid1 := f.waitFor(t, "prepare 1", prepareOf(f, 0, 8)).GetTid()
	twoPhase(t, cl, 16)
	for _, mn := range []uint64{0, 1} {
		p := f.waitFor(t, "prepare 2", prepareOf(f, mn, 16))
		if !hasTid(p.GetCommitTids(), tid1) || len(p.GetAbortTids()) > 0 {
			t.Fatalf("memnode %d: the second Prepare carries commits %v aborts %v, want the first tid %v", mn, p.GetCommitTids(), p.GetAbortTids(), tid1)
		}
	}
	for _, r := range f.received() {
		if r.GetKind() == tuttipb.Kind_KIND_COMMIT {
			t.Fatalf("a decision request left while the session was busy: %v", r)
		}
	}
	tid2 := f.waitFor(t, "prepare 2", prepareOf(f, 0, 16)).GetTid()

	f.release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	for _, mn := range []uint64{0, 1} {
		f.waitFor(t, "commit of the second tid", func(r *tuttipb.Request) bool {
			return r.GetKind() == tuttipb.Kind_KIND_COMMIT && r.GetMemnode() == mn && proto.Equal(r.GetTid(), tid2)
		})
	}
	if st := cl.Stats(); st.Decisions != 4 || st.Carried != 2 || st.DecisionRequests != 4 {
		t.Fatalf("stats %+v, want 4 decisions, 2 carried, 4 requests", st)
	}
	closeWithin(t, cl)
}

// closeWithin closes cl, which waits for every decision to be answered.
func closeWithin(t *testing.T, cl *Client) {
	t.Helper()
	done := make(chan struct{})
	go func() { cl.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close is stuck: a decision was never answered")
	}
}

// A carrier that is not applied (NOT_LEADER, INVALID, UNAVAILABLE) makes
// its decisions go again on their own.
func TestDecisionResentWhenCarrierFails(t *testing.T) {
	for _, st := range []tuttipb.Status{tuttipb.Status_STATUS_NOT_LEADER, tuttipb.Status_STATUS_INVALID, tuttipb.Status_STATUS_UNAVAILABLE} {
		t.Run(st.String(), func(t *testing.T) {
			defer func(d time.Duration) { decisionDelay = d }(decisionDelay)
			decisionDelay = time.Hour
			f := startFakeHost(t)
			failed := false
			f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
				switch {
				case isBlocker(r):
					return nil
				case len(r.GetCommitTids()) > 0 && r.GetKind() == tuttipb.Kind_KIND_EXEC && !failed:
					failed = true
					return &tuttipb.Response{Id: r.GetId(), Status: st, LeaderHost: 1, FailedCompare: -1, Error: "carrier refused"}
				}
				return ok(r)
			})
			cl := newFakeClient(t, f)
			blocked := startBlocker(t, cl, f)
			twoPhase(t, cl, 8)
			tid1 := f.waitFor(t, "prepare 1", prepareOf(f, 0, 8)).GetTid()
			// A one-phase write to memnode 0 carries the commit and fails.
			_, err := cl.Exec(context.Background(), NewTx().Write(0, 64, []byte("z")))
			if st == tuttipb.Status_STATUS_INVALID {
				if err == nil {
					t.Fatal("invalid carrier: no error")
				}
			} else if err != nil {
				t.Fatal(err)
			}
			f.waitFor(t, "failed carrier", func(r *tuttipb.Request) bool {
				return r.GetKind() == tuttipb.Kind_KIND_EXEC && hasTid(r.GetCommitTids(), tid1)
			})
			// The commit of tid1 at memnode 0 is sent again, although the
			// session is still busy.
			f.waitFor(t, "resent commit", func(r *tuttipb.Request) bool {
				return r.GetMemnode() == 0 && r.GetKind() != tuttipb.Kind_KIND_EXEC &&
					(proto.Equal(r.GetTid(), tid1) && r.GetKind() == tuttipb.Kind_KIND_COMMIT || hasTid(r.GetCommitTids(), tid1))
			})
			f.release()
			if err := <-blocked; err != nil {
				t.Fatal(err)
			}
			closeWithin(t, cl)
		})
	}
}

// With the session busy and nobody else sending, the timer sends a waiting
// decision.
func TestDecisionTimerBackstop(t *testing.T) {
	f := startFakeHost(t)
	f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
		if isBlocker(r) {
			return nil
		}
		return ok(r)
	})
	cl := newFakeClient(t, f)
	blocked := startBlocker(t, cl, f)
	twoPhase(t, cl, 8)
	tid1 := f.waitFor(t, "prepare 1", prepareOf(f, 0, 8)).GetTid()
	for _, mn := range []uint64{0, 1} {
		f.waitFor(t, "commit", func(r *tuttipb.Request) bool {
			return r.GetKind() == tuttipb.Kind_KIND_COMMIT && r.GetMemnode() == mn && proto.Equal(r.GetTid(), tid1)
		})
	}
	f.release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	closeWithin(t, cl)
}

// A session that breaks after a carrier left makes the decisions it
// carried go again, on a new session.
func TestDecisionResentWhenSessionBreaks(t *testing.T) {
	defer func(d time.Duration) { decisionDelay = d }(decisionDelay)
	decisionDelay = time.Hour
	f := startFakeHost(t)
	broke := false
	f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
		switch {
		case isBlocker(r):
			return nil
		case len(r.GetCommitTids()) > 0 && r.GetKind() == tuttipb.Kind_KIND_PREPARE && !broke:
			broke = true
			return breakStream
		}
		return ok(r)
	})
	cl := newFakeClient(t, f)
	blocked := startBlocker(t, cl, f)
	twoPhase(t, cl, 8)
	tid1 := f.waitFor(t, "prepare 1", prepareOf(f, 0, 8)).GetTid()
	// The second minitransaction's Prepares carry tid1's commits; the
	// stream breaks, so its outcome is unknown and it settles or fails.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl.Exec(ctx, NewTx().Write(0, 16, []byte("x")).Write(1, 16, []byte("y")))
	if err := <-blocked; err == nil {
		t.Fatal("the blocker survived the broken stream")
	}
	for _, mn := range []uint64{0, 1} {
		f.waitFor(t, "resent commit", func(r *tuttipb.Request) bool {
			return r.GetMemnode() == mn && r.GetKind() == tuttipb.Kind_KIND_COMMIT && proto.Equal(r.GetTid(), tid1)
		})
	}
	closeWithin(t, cl)
}

// A decision must not ride on a request that it pushes past the memnodes'
// request size limit: memnode/service refuses a request of more than
// DefaultMaxRequestBytes (4 MiB) encoded, carried tids included, as INVALID
// (Server.handle), so a write that is valid on its own failed with
// ErrInvalid because another minitransaction's commit rode on it.
func TestDecisionDoesNotOverfillCarrier(t *testing.T) {
	defer func(d time.Duration) { decisionDelay = d }(decisionDelay)
	decisionDelay = time.Hour
	const limit = 4 << 20 // memnode/service.DefaultMaxRequestBytes
	f := startFakeHost(t)
	f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
		switch {
		case isBlocker(r):
			return nil
		case proto.Size(r) > limit: // as memnode/service's Server.handle
			return &tuttipb.Response{Id: r.GetId(), Status: tuttipb.Status_STATUS_INVALID, FailedCompare: -1, Error: "request exceeds the limit"}
		}
		return ok(r)
	})
	cl := newFakeClient(t, f)
	blocked := startBlocker(t, cl, f)
	twoPhase(t, cl, 8) // its commit at memnode 0 waits for a carrier

	// A one-phase write to memnode 0 whose request is just under the limit
	// (ids and seqs sized generously).
	const item = 1<<20 - 16
	tx := NewTx().Write(0, 0x100000, make([]byte, item)).Write(0, 0x200000, make([]byte, item)).
		Write(0, 0x300000, make([]byte, item))
	var last []byte
	est := func() int {
		tid := cl.newTid()
		tid.Seq += 1 << 14
		req := NewTx().Write(0, 0x100000, make([]byte, item)).Write(0, 0x200000, make([]byte, item)).
			Write(0, 0x300000, make([]byte, item)).Write(0, 0x400000, last).split(nil)[0].request(tuttipb.Kind_KIND_EXEC, tid, nil)
		req.Id = 1 << 20
		return proto.Size(req)
	}
	last = make([]byte, limit-16-est())
	last = last[:len(last)-max(0, est()-(limit-16))] // its length's varint grew
	if n := est(); n > limit-16 || n < limit-64 || len(last) > 1<<20 {
		t.Fatalf("request of %d bytes, want just under %d", n, limit)
	}
	tx.Write(0, 0x400000, last)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if res, err := cl.Exec(ctx, tx); err != nil || !res.Committed {
		t.Fatalf("a write valid on its own failed: %+v, %v", res, err)
	}
	f.release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	closeWithin(t, cl)
}
