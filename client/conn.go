package client

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// conn is one host: a gRPC connection and one long-lived Session stream that
// carries batches of requests. Callers send directly when the stream is idle
// (no goroutine hand-off at low load) and append to a queue that the current
// sender flushes as one batch when it is busy (batching at high load).
//
// Decisions (Commit/Abort of two-phase minitransactions) wait in the session
// until a batch leaves; then each rides on a logged request of the batch for
// the same memnode (Request.commit_tids/abort_tids) or, if there is none,
// the batch gets one decision request per memnode. See queueDecisions for
// when a batch leaves.
type conn struct {
	addr   string
	cc     *grpc.ClientConn
	rpc    tuttipb.MemnodeClient
	hooks  *decisionHooks
	nextID atomic.Uint64

	// cur is mu.stream for session's lock-free fast path.
	cur atomic.Pointer[session]
	mu  struct {
		sync.Mutex
		stream *session
		closed bool
	}
}

// decisionHooks connect a conn to its Client's decision bookkeeping.
type decisionHooks struct {
	// answered learns the answer to a request that carried decisions for
	// memnode mn: STATUS_OK means every one of them was applied; any other
	// status means they may not have been. Called by the session's receiving
	// goroutine, or with the session locked when it fails: it must not
	// block nor use the session.
	answered func(r *tuttipb.Response, mn uint64, commits, aborts []*tuttipb.Tid)
	stats    *decisionStats
}

type decisionStats struct {
	// decisions: sent; requests: requests that carried decisions;
	// carried: decisions that rode on a request sent for another reason.
	decisions, requests, carried atomic.Uint64
}

// decisionDelay bounds how long a queued decision waits for a batch to
// leave while its session is busy (plus the timer's granularity, about
// 1 ms on a loaded machine). A variable for tests.
var decisionDelay = 500 * time.Microsecond

// session is one incarnation of the stream; a broken session is replaced.
type session struct {
	c      *conn
	stream tuttipb.Memnode_SessionClient
	cancel context.CancelFunc
	mu     struct {
		sync.Mutex
		pending map[uint64]func(*tuttipb.Response)
		queue   []*tuttipb.Request
		// queueHint: the length of the last batch, the capacity a new
		// queue starts with (one allocation per batch, not a few).
		queueHint int
		// decided: decisions waiting for the next batch, per memnode;
		// ndecided counts them. due: the next flush must send them even if
		// no request is queued.
		decided  map[uint64]*decisionBuf
		ndecided int
		due      bool
		// riders: the decisions carried by each sent request, by id; the
		// request's answer is theirs. A request carries at most one rider
		// (addRiderLocked).
		riders      map[uint64]rider
		maxDecision int // decisions one request may carry
		timerArmed  bool
		sending     bool
		// inflight: the batch being sent (Send in progress, unlocked).
		// A failure meanwhile leaves its requests pending: only the
		// Send's result tells whether they left (flushLocked).
		inflight []*tuttipb.Request
		err      error
	}
	timer *time.Timer // the decisionDelay backstop; created on first use
	done  chan struct{}
	// broken is set with mu.err: conn.session's fast path reads it
	// without taking mu, which recvLoop and senders hold often.
	broken atomic.Bool
	// answers and fns are recvLoop's, reused between batches.
	answers []*tuttipb.Response
	fns     []func(*tuttipb.Response)
	riders  []answeredRider
}

// answeredRider is a rider whose request's answer came.
type answeredRider struct {
	r  *tuttipb.Response
	rd rider
}

type decisionBuf struct {
	commits, aborts []*tuttipb.Tid
	hint            int // how many the last takeLocked took
}

type rider struct {
	mn              uint64
	commits, aborts []*tuttipb.Tid
}

func newConn(addr string, opts []grpc.DialOption, hooks *decisionHooks) (*conn, error) {
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	return &conn{addr: addr, cc: cc, rpc: tuttipb.NewMemnodeClient(cc), hooks: hooks}, nil
}

// errNotSent marks requests that never left this process: safe to retry.
var errNotSent = errors.New("request not sent")

// session returns the live session, opening one if needed.
func (c *conn) session() (*session, uint64, error) {
	if s := c.cur.Load(); s != nil && !s.broken.Load() {
		return s, c.nextID.Add(1), nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil, 0, ErrClosed
	}
	id := c.nextID.Add(1)
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
	s.mu.decided = make(map[uint64]*decisionBuf)
	s.mu.riders = make(map[uint64]rider)
	c.mu.stream = s
	c.cur.Store(s)
	go s.recvLoop()
	return s, id, nil
}

// do sends one request and waits for its response. A transport failure after
// the request was sent is reported as a response with STATUS_UNKNOWN_OUTCOME;
// before it, as errNotSent.
func (c *conn) do(ctx context.Context, req *tuttipb.Request) (*tuttipb.Response, error) {
	w := waiters.Get().(*waiter)
	s, err := c.start(req, w.done, true)
	if err != nil {
		waiters.Put(w) // done will not be called
		return nil, err
	}
	select {
	case r := <-w.ch:
		// done has run, and it runs once: w may wait for another.
		waiters.Put(w)
		return r, nil
	case <-ctx.Done():
		// An answer may still come (done may be running already): w is
		// left to it, not reused.
		s.forget(req.Id)
		return nil, ctx.Err()
	}
}

// waiter is do's wait for one answer: done, the callback given to start,
// sends it on ch. Reused through waiters once its answer was received.
type waiter struct {
	ch   chan *tuttipb.Response // capacity 1
	done func(*tuttipb.Response)
}

var waiters = sync.Pool{New: func() any {
	w := &waiter{ch: make(chan *tuttipb.Response, 1)}
	w.done = func(r *tuttipb.Response) { w.ch <- r }
	return w
}}

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
	if s.mu.queue == nil {
		s.mu.queue = make([]*tuttipb.Request, 0, max(4, s.mu.queueHint))
	}
	s.mu.queue = append(s.mu.queue, req)
	if flush {
		s.flushLocked()
	}
	s.mu.Unlock()
	return s, nil
}

// queueDecisions queues the decision (commit or abort) of tid at each of
// memnodes mns on the session to their leader (this conn), to leave with
// the session's next batch: riding on a logged request of that batch for
// the memnode, or in a decision request of its own. At most limit
// decisions share one request. When they leave: an idle session (no
// request awaiting its answer) sends them at once, since nothing else
// would carry them soon. A busy one keeps them for a batch that a caller
// flushes anyway (under load, callers flush constantly) and has a request
// for their memnode to ride on; the backstops, which send them in
// decision requests of their own, are the session going idle (recvLoop)
// and a timer of decisionDelay, so no decision waits longer than about a
// millisecond. On an error none was queued.
func (c *conn) queueDecisions(mns []uint64, commit bool, tid *tuttipb.Tid, limit int) error {
	s, _, err := c.session()
	if err != nil {
		return errors.Join(errNotSent, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.err != nil {
		return errors.Join(errNotSent, s.mu.err)
	}
	for _, mn := range mns {
		b := s.mu.decided[mn]
		if b == nil {
			b = &decisionBuf{}
			s.mu.decided[mn] = b
		}
		if commit {
			b.commits = appendTid(b.commits, tid, b.hint)
		} else {
			b.aborts = appendTid(b.aborts, tid, b.hint)
		}
		s.mu.ndecided++
	}
	s.mu.maxDecision = max(1, limit)
	if len(s.mu.pending) == 0 {
		s.mu.due = true
		s.flushLocked()
		return nil
	}
	s.armLocked()
	return nil
}

// appendTid appends tid to ts; a nil ts starts with room for hint tids
// (what the previous batch took), so that a batch's decisions do not
// grow their slice several times.
func appendTid(ts []*tuttipb.Tid, tid *tuttipb.Tid, hint int) []*tuttipb.Tid {
	if ts == nil {
		ts = make([]*tuttipb.Tid, 0, max(4, hint))
	}
	return append(ts, tid)
}

// armLocked starts the decisionDelay timer unless it is running.
func (s *session) armLocked() {
	if s.mu.timerArmed {
		return
	}
	s.mu.timerArmed = true
	if s.timer == nil {
		s.timer = time.AfterFunc(decisionDelay, s.decisionTimer)
	} else {
		s.timer.Reset(decisionDelay)
	}
}

func (s *session) decisionTimer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.timerArmed = false
	if s.mu.ndecided > 0 && s.mu.err == nil {
		s.mu.due = true
		s.flushLocked()
	}
}

// carries reports whether a request of kind k is logged, so it can carry
// decisions.
func carries(k tuttipb.Kind) bool {
	switch k {
	case tuttipb.Kind_KIND_EXEC, tuttipb.Kind_KIND_EXEC_APPEND, tuttipb.Kind_KIND_PREPARE, tuttipb.Kind_KIND_COMMIT,
		tuttipb.Kind_KIND_ABORT, tuttipb.Kind_KIND_ABORT_UNLESS_VOTED:
		return true
	}
	return false
}

// maxRequestBytes is memnode/service.DefaultMaxRequestBytes: a host refuses
// a larger request, carried decisions included, as invalid. ClusterInfo
// does not announce it.
const maxRequestBytes = 4 << 20

// roomFor reports whether req surely stays within maxRequestBytes encoded
// with n tids more: memnode/service's bound (sizeBound), at most 32 bytes
// per element besides byte strings, 40 per tid (fences too: three varints
// of up to 10 bytes, their tags, the element's tag and length) and per
// reloc, 96 per append besides its data, and 128 in all. A decision must not make a request that is valid on its own fail.
func roomFor(req *tuttipb.Request, n int) bool {
	size := 128 + 32*(len(req.GetParticipants())+len(req.GetReads())) +
		40*(len(req.GetMoreTids())+len(req.GetCommitTids())+len(req.GetAbortTids())+len(req.GetFenceTids())+
			len(req.GetRelocs())+n)
	for _, c := range req.GetCompares() {
		size += 32 + len(c.GetData())
	}
	for _, a := range req.GetAppends() {
		size += 96 + len(a.GetData())
	}
	for _, w := range req.GetWrites() {
		size += 32 + len(w.GetData())
	}
	return size <= maxRequestBytes
}

// attachLocked hands the queued decisions to batch: each rides on a logged
// request of the batch for its memnode; the others, if they are due, go in
// new decision requests appended to the batch, and else keep waiting. It
// returns the batch.
func (s *session) attachLocked(batch []*tuttipb.Request) []*tuttipb.Request {
	for _, req := range batch {
		// A request sent again (after NOT_LEADER, say) drops what it
		// carried before: those riders were answered already.
		req.CommitTids, req.AbortTids = nil, nil
	}
	due := s.mu.due
	s.mu.due = false
	if s.mu.ndecided == 0 {
		return batch
	}
	st := s.c.hooks.stats
	for _, req := range batch {
		if s.mu.ndecided == 0 {
			break
		}
		b := s.mu.decided[req.GetMemnode()]
		if b == nil || len(b.commits)+len(b.aborts) == 0 || !carries(req.GetKind()) || !roomFor(req, s.mu.maxDecision) {
			continue
		}
		r := s.takeLocked(req.GetMemnode(), b)
		req.CommitTids, req.AbortTids = r.commits, r.aborts
		s.addRiderLocked(req.Id, r)
		st.requests.Add(1)
		st.carried.Add(uint64(len(r.commits) + len(r.aborts)))
	}
	if !due {
		if s.mu.ndecided > 0 {
			s.armLocked()
		}
		return batch
	}
	for mn, b := range s.mu.decided {
		for len(b.commits)+len(b.aborts) > 0 {
			r := s.takeLocked(mn, b)
			req := &tuttipb.Request{Id: s.c.nextID.Add(1), Memnode: mn}
			if len(r.commits) > 0 {
				req.Kind, req.Tid, req.CommitTids, req.AbortTids = tuttipb.Kind_KIND_COMMIT, r.commits[0], r.commits[1:], r.aborts
			} else {
				req.Kind, req.Tid, req.AbortTids = tuttipb.Kind_KIND_ABORT, r.aborts[0], r.aborts[1:]
			}
			if len(req.CommitTids) == 0 {
				req.CommitTids = nil
			}
			if len(req.AbortTids) == 0 {
				req.AbortTids = nil
			}
			s.addRiderLocked(req.Id, r)
			st.requests.Add(1)
			batch = append(batch, req)
		}
	}
	return batch
}

// addRiderLocked records that request id carries r. Every request sent
// has an id of its own (start, attachLocked) and carries one rider; were
// another attached to the same id, the earlier one, no longer on the
// request, is sent again on its own.
func (s *session) addRiderLocked(id uint64, r rider) {
	if old, ok := s.mu.riders[id]; ok {
		s.c.hooks.answered(&tuttipb.Response{Id: id, Status: tuttipb.Status_STATUS_UNAVAILABLE, FailedCompare: -1},
			old.mn, old.commits, old.aborts)
	}
	s.mu.riders[id] = r
}

// takeLocked removes up to maxDecision decisions of b (for memnode mn).
func (s *session) takeLocked(mn uint64, b *decisionBuf) rider {
	r := rider{mn: mn}
	n := s.mu.maxDecision
	if len(b.commits) <= n {
		r.commits, b.commits = b.commits, nil
	} else {
		r.commits, b.commits = b.commits[:n:n], b.commits[n:]
	}
	n -= len(r.commits)
	if len(b.aborts) <= n {
		r.aborts, b.aborts = b.aborts, nil
	} else {
		r.aborts, b.aborts = b.aborts[:n:n], b.aborts[n:]
	}
	s.mu.ndecided -= len(r.commits) + len(r.aborts)
	b.hint = min(len(r.commits)+len(r.aborts), 1024)
	return r
}

// flush sends whatever start queued without flushing.
func (s *session) flush() {
	s.mu.Lock()
	s.flushLocked()
	s.mu.Unlock()
}

// flushLocked sends the queue in batches unless another goroutine is already
// doing so; that one will pick up what was queued meanwhile. Every batch
// takes along the queued decisions that can ride on its requests
// (attachLocked); the others leave only when due.
func (s *session) flushLocked() {
	if s.mu.sending {
		return
	}
	s.mu.sending = true
	for s.mu.err == nil && (len(s.mu.queue) > 0 || (s.mu.due && s.mu.ndecided > 0)) {
		n := requestBatchLen(s.mu.queue)
		if n > 0 {
			s.mu.queueHint = min(n, 1024)
		}
		batch := s.attachLocked(s.mu.queue[:n:n])
		if s.mu.queue = s.mu.queue[n:]; len(s.mu.queue) == 0 {
			s.mu.queue = nil
		}
		s.mu.inflight = batch
		s.mu.Unlock()
		err := s.stream.Send(&tuttipb.RequestBatch{Requests: batch})
		s.mu.Lock()
		s.mu.inflight = nil
		switch {
		case err != nil:
			// A failed Send handed nothing to the transport (gRPC's
			// SendMsg either schedules the whole message or fails): the
			// batch never left, so its requests were not applied.
			s.failLocked(err, batch...)
		case s.mu.err != nil:
			// The session broke while the batch was being sent: it may
			// have left.
			s.answerLocked(batch, tuttipb.Status_STATUS_UNKNOWN_OUTCOME, s.mu.err)
		}
	}
	s.mu.sending = false
}

// maxRequestBatchBytes is a soft bound on one RequestBatch: requests queued
// while a batch was being sent (up to the hosts' 4 MiB each) go out in
// batches of about this size, well under the 64 MiB message limit of
// clients and hosts (a batch over it fails to send, and every request in
// it with it).
const maxRequestBatchBytes = 16 << 20

// requestBatchLen returns how many of reqs, at least one, go in the next
// batch; sizes are estimated from the items' data.
func requestBatchLen(reqs []*tuttipb.Request) int {
	size := 0
	for i, r := range reqs {
		n := 64 + 16*(len(r.GetReads())+len(r.GetRelocs()))
		for _, a := range r.GetAppends() {
			n += len(a.GetData()) + 64
		}
		for _, w := range r.GetWrites() {
			n += len(w.GetData()) + 16
		}
		for _, c := range r.GetCompares() {
			n += len(c.GetData()) + 16
		}
		if i > 0 && size+n > maxRequestBatchBytes {
			return i
		}
		size += n
	}
	return len(reqs)
}

// forget drops interest in a request's response.
func (s *session) forget(id uint64) {
	s.mu.Lock()
	delete(s.mu.pending, id)
	s.mu.Unlock()
}

// answerLocked answers the requests of reqs still waiting with status st
// (the session failed with err).
func (s *session) answerLocked(reqs []*tuttipb.Request, st tuttipb.Status, err error) {
	var lost string
	for _, r := range reqs {
		if done, ok := s.mu.pending[r.Id]; ok {
			if lost == "" {
				lost = s.lost(err)
			}
			delete(s.mu.pending, r.Id)
			done(&tuttipb.Response{Id: r.Id, Status: st, FailedCompare: -1, Error: lost})
		}
	}
}

// lost is the error text of requests the session's failure err answers.
func (s *session) lost(err error) string {
	return "connection to " + s.c.addr + " lost: " + err.Error()
}

// failLocked breaks the session: every waiting request learns its outcome is
// unknown (it may have been sent), queued ones and those of notSent (a batch
// whose Send failed) that were never sent learn so. The requests of a batch
// being sent meanwhile are answered when its Send returns (flushLocked).
func (s *session) failLocked(err error, notSent ...*tuttipb.Request) {
	if s.mu.err != nil {
		s.answerLocked(notSent, tuttipb.Status_STATUS_UNAVAILABLE, s.mu.err)
		return
	}
	s.mu.err = err
	s.broken.Store(true)
	s.answerLocked(notSent, tuttipb.Status_STATUS_UNAVAILABLE, err)
	s.answerLocked(s.mu.queue, tuttipb.Status_STATUS_UNAVAILABLE, err)
	s.mu.queue = nil
	sending := map[uint64]bool{}
	for _, r := range s.mu.inflight {
		sending[r.Id] = true
	}
	lost := s.lost(err)
	for id, done := range s.mu.pending {
		if sending[id] {
			continue
		}
		delete(s.mu.pending, id)
		done(&tuttipb.Response{Id: id, Status: tuttipb.Status_STATUS_UNKNOWN_OUTCOME, FailedCompare: -1, Error: lost})
	}
	// Decisions that went out may or may not have been applied; queued ones
	// were not. Either way they are sent again.
	for id, r := range s.mu.riders {
		s.c.hooks.answered(&tuttipb.Response{Id: id, Status: tuttipb.Status_STATUS_UNKNOWN_OUTCOME, FailedCompare: -1, Error: lost},
			r.mn, r.commits, r.aborts)
	}
	clear(s.mu.riders)
	for mn, b := range s.mu.decided {
		if len(b.commits)+len(b.aborts) > 0 {
			s.c.hooks.answered(&tuttipb.Response{Status: tuttipb.Status_STATUS_UNAVAILABLE, FailedCompare: -1, Error: lost},
				mn, b.commits, b.aborts)
		}
	}
	clear(s.mu.decided)
	s.mu.ndecided = 0
	if s.timer != nil {
		s.timer.Stop()
	}
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
		// Answers are taken under the lock and delivered after it, so
		// that callers starting requests meanwhile do not wait for a
		// whole batch's callbacks. Each answer is delivered once: it left
		// pending (or riders) under the lock, so failLocked cannot also
		// answer it.
		s.mu.Lock()
		for _, r := range b.GetResponses() {
			id := r.GetId()
			if done, ok := s.mu.pending[id]; ok {
				delete(s.mu.pending, id)
				s.answers = append(s.answers, r)
				s.fns = append(s.fns, done)
			}
			if rd, ok := s.mu.riders[id]; ok {
				delete(s.mu.riders, id)
				s.riders = append(s.riders, answeredRider{r, rd})
			}
		}
		if s.mu.ndecided > 0 && len(s.mu.pending) == 0 {
			// Idle: nothing will carry the waiting decisions soon.
			s.mu.due = true
			s.flushLocked()
		}
		s.mu.Unlock()
		for i, done := range s.fns {
			done(s.answers[i])
		}
		for _, a := range s.riders {
			s.c.hooks.answered(a.r, a.rd.mn, a.rd.commits, a.rd.aborts)
		}
		clear(s.answers)
		clear(s.fns)
		clear(s.riders)
		s.answers, s.fns, s.riders = s.answers[:0], s.fns[:0], s.riders[:0]
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
