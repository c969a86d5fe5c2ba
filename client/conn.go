package client

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// conn is one host: a gRPC connection and one long-lived Session stream that
// carries batches of requests. Callers send directly when the stream is idle
// (no goroutine hand-off at low load) and append to a queue that the current
// sender flushes as one batch when it is busy (batching at high load).
type conn struct {
	addr string
	cc   *grpc.ClientConn
	rpc  tuttipb.MemnodeClient

	mu struct {
		sync.Mutex
		stream *session
		closed bool
		nextID uint64
	}
}

// session is one incarnation of the stream; a broken session is replaced.
type session struct {
	c      *conn
	stream tuttipb.Memnode_SessionClient
	cancel context.CancelFunc
	mu     struct {
		sync.Mutex
		pending map[uint64]func(*tuttipb.Response)
		queue   []*tuttipb.Request
		// decisions: the Commit/Abort request per (memnode, kind) still in
		// queue, which later decisions join (queueDecision).
		decisions map[decisionKey]*tuttipb.Request
		sending   bool
		err       error
	}
	done chan struct{}
}

func newConn(addr string, opts []grpc.DialOption) (*conn, error) {
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	return &conn{addr: addr, cc: cc, rpc: tuttipb.NewMemnodeClient(cc)}, nil
}

// errNotSent marks requests that never left this process: safe to retry.
var errNotSent = errors.New("request not sent")

// session returns the live session, opening one if needed.
func (c *conn) session() (*session, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil, 0, ErrClosed
	}
	c.mu.nextID++
	id := c.mu.nextID
	if s := c.mu.stream; s != nil {
		s.mu.Lock()
		broken := s.mu.err != nil
		s.mu.Unlock()
		if !broken {
			return s, id, nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.rpc.Session(ctx)
	if err != nil {
		cancel()
		return nil, 0, err
	}
	s := &session{c: c, stream: st, cancel: cancel, done: make(chan struct{})}
	s.mu.pending = make(map[uint64]func(*tuttipb.Response))
	s.mu.decisions = make(map[decisionKey]*tuttipb.Request)
	c.mu.stream = s
	go s.recvLoop()
	return s, id, nil
}

// do sends one request and waits for its response. A transport failure after
// the request was sent is reported as a response with STATUS_UNKNOWN_OUTCOME;
// before it, as errNotSent.
func (c *conn) do(ctx context.Context, req *tuttipb.Request) (*tuttipb.Response, error) {
	ch := make(chan *tuttipb.Response, 1)
	s, err := c.start(req, func(r *tuttipb.Response) { ch <- r }, true)
	if err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		s.forget(req.Id)
		return nil, ctx.Err()
	}
}

// start queues req and arranges for done to be called with its response,
// exactly once, from the receiving goroutine (so done must not block). With
// flush, it also sends the queue unless another caller is sending it;
// without, the caller must call flush later: queuing the requests of one
// minitransaction first lets them leave in one batch. An error wraps
// errNotSent and done is never called.
func (c *conn) start(req *tuttipb.Request, done func(*tuttipb.Response), flush bool) (*session, error) {
	s, id, err := c.session()
	if err != nil {
		return nil, errors.Join(errNotSent, err)
	}
	req.Id = id
	s.mu.Lock()
	if s.mu.err != nil {
		err := s.mu.err
		s.mu.Unlock()
		return nil, errors.Join(errNotSent, err)
	}
	s.mu.pending[id] = done
	s.mu.queue = append(s.mu.queue, req)
	if flush {
		s.flushLocked()
	}
	s.mu.Unlock()
	return s, nil
}

type decisionKey struct {
	memnode uint64
	kind    tuttipb.Kind
}

// queueDecision queues a Commit or Abort (kind) of tid at memnode mn
// without flushing. If a decision request of the same memnode and kind is
// still waiting in the queue and holds fewer than max tids, tid joins it
// (Request.more_tids: one request, one log entry for many decisions);
// otherwise a new request is queued. done is called once per request, with
// the response and the request, whose tids say which decisions it carried;
// it must not block. merged reports that tid joined an existing request.
func (c *conn) queueDecision(mn uint64, kind tuttipb.Kind, tid *tuttipb.Tid, max int,
	done func(*tuttipb.Response, *tuttipb.Request)) (s *session, merged bool, err error) {
	s, id, err := c.session()
	if err != nil {
		return nil, false, errors.Join(errNotSent, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.err != nil {
		return nil, false, errors.Join(errNotSent, s.mu.err)
	}
	k := decisionKey{mn, kind}
	if req := s.mu.decisions[k]; req != nil && 1+len(req.MoreTids) < max {
		req.MoreTids = append(req.MoreTids, tid)
		return s, true, nil
	}
	req := &tuttipb.Request{Id: id, Memnode: mn, Kind: kind, Tid: tid}
	s.mu.pending[id] = func(r *tuttipb.Response) { done(r, req) }
	s.mu.queue = append(s.mu.queue, req)
	s.mu.decisions[k] = req
	return s, false, nil
}

// flush sends whatever start queued without flushing.
func (s *session) flush() {
	s.mu.Lock()
	s.flushLocked()
	s.mu.Unlock()
}

// flushLocked sends the queue in batches unless another goroutine is already
// doing so; that one will pick up what was queued meanwhile.
func (s *session) flushLocked() {
	if s.mu.sending {
		return
	}
	s.mu.sending = true
	for len(s.mu.queue) > 0 && s.mu.err == nil {
		batch := s.mu.queue
		s.mu.queue = nil
		clear(s.mu.decisions) // sent requests must not change any more
		s.mu.Unlock()
		err := s.stream.Send(&tuttipb.RequestBatch{Requests: batch})
		s.mu.Lock()
		if err != nil {
			s.failLocked(err)
		}
	}
	s.mu.sending = false
}

// forget drops interest in a request's response.
func (s *session) forget(id uint64) {
	s.mu.Lock()
	delete(s.mu.pending, id)
	s.mu.Unlock()
}

// failLocked breaks the session: every waiting request learns its outcome is
// unknown (it may have been sent), queued ones that were never sent learn so.
func (s *session) failLocked(err error) {
	if s.mu.err != nil {
		return
	}
	s.mu.err = err
	unsent := map[uint64]bool{}
	for _, r := range s.mu.queue {
		unsent[r.Id] = true
	}
	s.mu.queue = nil
	clear(s.mu.decisions)
	for id, done := range s.mu.pending {
		st := tuttipb.Status_STATUS_UNKNOWN_OUTCOME
		if unsent[id] {
			st = tuttipb.Status_STATUS_UNAVAILABLE
		}
		done(&tuttipb.Response{Id: id, Status: st, FailedCompare: -1, Error: "connection to " + s.c.addr + " lost: " + err.Error()})
	}
	s.mu.pending = map[uint64]func(*tuttipb.Response){}
	s.cancel()
}

func (s *session) recvLoop() {
	defer close(s.done)
	for {
		b, err := s.stream.Recv()
		if err != nil {
			s.mu.Lock()
			s.failLocked(err)
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		for _, r := range b.GetResponses() {
			if done, ok := s.mu.pending[r.GetId()]; ok {
				delete(s.mu.pending, r.GetId())
				done(r)
			}
		}
		s.mu.Unlock()
	}
}

func (c *conn) close() error {
	c.mu.Lock()
	c.mu.closed = true
	s := c.mu.stream
	c.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		s.failLocked(ErrClosed)
		s.mu.Unlock()
		<-s.done
	}
	return c.cc.Close()
}
