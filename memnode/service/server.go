package service

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/bufpool"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

// Clock gives the service its notion of now. Only the leader's clock reaches
// a memnode, stamped into entries.
type Clock interface {
	Now() time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// WallClock is the real clock.
var WallClock Clock = wallClock{}

// MemnodeSpec places one memnode: its id (also its Raft group id) and the
// hosts that hold its replicas.
type MemnodeSpec struct {
	ID       uint64
	Replicas []uint64
}

// DefaultMaxRequestBytes bounds the encoded size of one request.
const DefaultMaxRequestBytes = 4 << 20

// proposer is the part of replication.Host the server uses; tests may fake
// it. A read's done owns its result (the server puts it back into
// bufpool.Pool once its response is sent): no result goes to two dones.
// Once a proposal's done is called, its command is not used again (the
// server puts it back into bufpool.Pool).
type proposer interface {
	ProposeAsync(group uint64, cmd []byte, done func(result []byte, err error))
	ReadAsync(group uint64, query []byte, done func(result []byte, err error))
	Leader(group uint64) uint64
}

// Server is the gRPC memnode service of one host. It turns requests into
// proposals (or ReadIndex reads) of the memnode's Raft group on this host.
type Server struct {
	tuttipb.UnimplementedMemnodeServer

	hostID uint64
	// lay is the routing layout (directory.go): hosts, memnodes, and the
	// groups running here; replaced whole by the reconciler.
	lay   atomic.Pointer[layout]
	layMu sync.Mutex // serializes layout writers
	dirs  directorySource
	// cfgHosts are the configured host addresses (HostConfig.Hosts).
	cfgHosts map[uint64]string
	members  membershipSource
	mcfg     memnode.Config
	maxReq   int
	clock    Clock
	log      zerolog.Logger
	rep      proposer
	watch    *watchHub // watch subscribers (watch.go)
	// instance names this process in the Replicas RPC's instanceHeader,
	// so a host probing an address can tell itself from another process
	// with its id (reconcile.go).
	instance string
	// firstBoot and lost are what the Replicas RPC tells other hosts about
	// this host's state (doc.go, "Lost state"): a first boot that has not
	// found the cluster running, and the memnodes whose replica it lost.
	// bootNonce is this host's boot nonce while firstBoot; bootPeers the
	// hosts (and their nonces) that answered first_boot when this host
	// decided its first boot.
	firstBoot atomic.Bool
	bootNonce atomic.Uint64
	bootPeers atomic.Pointer[[]*tuttipb.BootNonce]
	lost      atomic.Pointer[[]uint64]
}

func newServer(hostID uint64, hosts map[uint64]string, specs []MemnodeSpec, mcfg memnode.Config,
	clock Clock, log zerolog.Logger, rep proposer) *Server {
	s := &Server{
		hostID:   hostID,
		cfgHosts: hosts,
		mcfg:     mcfg,
		maxReq:   DefaultMaxRequestBytes,
		clock:    clock,
		log:      log,
		rep:      rep,
		watch:    newWatchHub(),
		instance: strconv.FormatUint(rand.Uint64(), 16),
	}
	l := newLayout(hosts, specs)
	for _, m := range specs {
		if slices.Contains(m.Replicas, hostID) {
			l.local[m.ID] = true
		}
	}
	if ms, ok := rep.(membershipSource); ok {
		s.members = ms
	}
	s.lay.Store(l)
	return s
}

// Session serves one client stream: every request is handed to the Raft
// group at once (the group batches concurrent proposals into one entry), and
// responses are sent back in batches by one sender goroutine as they complete.
func (s *Server) Session(stream tuttipb.Memnode_SessionServer) error {
	ob := newOutbox()
	senderDone := make(chan error, 1)
	go func() { senderDone <- ob.run(stream) }()

	var recvErr error
	for {
		batch, err := stream.Recv()
		if err != nil {
			recvErr = err
			break
		}
		for _, req := range batch.GetRequests() {
			s.handle(req, ob)
		}
	}
	// The client closed its side (io.EOF) or the stream broke. Let requests
	// already handed to Raft finish so their responses are not lost, but do
	// not wait past the stream's life.
	ob.drain(stream.Context())
	ob.close()
	sendErr := <-senderDone
	if recvErr != nil && !isEOF(recvErr) && status.Code(recvErr) != codes.Canceled {
		s.log.Debug().Err(recvErr).Msg("session ended")
	}
	if sendErr != nil && !errors.Is(sendErr, context.Canceled) {
		return sendErr
	}
	return nil
}

func isEOF(err error) bool { return err != nil && err.Error() == "EOF" }

// handle validates a request and starts it; the response goes to ob.
func (s *Server) handle(req *tuttipb.Request, ob *outbox) {
	id := req.GetId()
	mn := req.GetMemnode()
	lay := s.layout()
	if !lay.local[mn] {
		spec, ok := lay.memnodes[mn]
		if !ok {
			ob.push(&tuttipb.Response{Id: id, Status: tuttipb.Status_STATUS_UNKNOWN_MEMNODE, FailedCompare: -1,
				Error: fmt.Sprintf("memnode %d does not exist", mn)})
			return
		}
		// A memnode that lives elsewhere: point the client at one of its hosts.
		r := &tuttipb.Response{Id: id, Status: tuttipb.Status_STATUS_NOT_LEADER, FailedCompare: -1}
		if len(spec.Replicas) > 0 {
			r.LeaderHost = spec.Replicas[0]
			r.LeaderAddr = lay.hosts[r.LeaderHost]
		}
		ob.push(r)
		return
	}
	if sizeBound(req) > s.maxReq { // else surely small enough
		if sz := protoSize(req); sz > s.maxReq {
			ob.push(invalid(id, fmt.Sprintf("request of %d bytes exceeds the limit of %d bytes", sz, s.maxReq)))
			return
		}
	}
	kind, ok := kindFromWire(req.GetKind())
	op := opFromWire(req)
	if !ok && req.GetKind() != tuttipb.Kind_KIND_READ {
		ob.push(invalid(id, fmt.Sprintf("unknown request kind %d", req.GetKind())))
		return
	}
	vk := kind
	if req.GetKind() == tuttipb.Kind_KIND_READ {
		vk = memnode.KindExec
		if len(op.Writes) > 0 {
			ob.push(invalid(id, "a read-only request carries write items"))
			return
		}
		if len(op.Appends) > 0 || len(op.Relocs) > 0 {
			ob.push(invalid(id, "a read-only request carries appends"))
			return
		}
	}
	if err := s.mcfg.ValidateOp(vk, &op); err != nil {
		ob.push(invalid(id, err.Error()))
		return
	}
	var readBytes uint64
	for _, r := range op.Reads {
		readBytes += uint64(r.Len)
	}
	if readBytes > maxResponseReadBytes {
		ob.push(invalid(id, fmt.Sprintf("reads of %d bytes exceed the limit of %d bytes per request", readBytes, maxResponseReadBytes)))
		return
	}
	if kind == memnode.KindPrepare {
		// Recovery asks exactly these memnodes and sends them the
		// decision: a list without this memnode would leave the tid in
		// doubt here for good. The memnode checks the rest again.
		ps := req.GetParticipants()
		if err := memnode.CheckParticipants(ps); err != nil {
			ob.push(invalid(id, err.Error()))
			return
		}
		if !slices.Contains(ps, mn) {
			ob.push(invalid(id, fmt.Sprintf("Prepare at memnode %d names participants %v, not including it", mn, ps)))
			return
		}
		// Nor may it name a memnode that does not exist: recovery could
		// never reach it, and the tid would hold its locks here for good.
		// Memnodes are never removed, so one in the layout exists; one
		// missing may have been added since this host last read the
		// directory: not proposed, retry-safe, and the directory is read
		// again at once.
		for _, p := range ps {
			if _, ok := lay.memnodes[p]; !ok {
				if s.dirs != nil {
					s.dirs.kick()
				}
				ob.push(&tuttipb.Response{Id: id, Status: tuttipb.Status_STATUS_UNAVAILABLE, FailedCompare: -1,
					Error: fmt.Sprintf("Prepare at memnode %d names memnode %d, which this host does not know (directory version %d)", mn, p, lay.version)})
				return
			}
		}
	}
	var more []memnode.TID
	if mt := req.GetMoreTids(); len(mt) > 0 {
		if kind != memnode.KindCommit && kind != memnode.KindAbort {
			ob.push(invalid(id, fmt.Sprintf("only commit and abort requests carry more tids, not %v", req.GetKind())))
			return
		}
		if len(mt) > s.mcfg.MaxItems {
			ob.push(invalid(id, fmt.Sprintf("%d more tids exceed the limit of %d", len(mt), s.mcfg.MaxItems)))
			return
		}
		more = tidsFromWire(mt)
	}
	commits, aborts := req.GetCommitTids(), req.GetAbortTids()
	if len(commits) > 0 || len(aborts) > 0 {
		if req.GetKind() == tuttipb.Kind_KIND_READ {
			ob.push(invalid(id, "a read-only request carries decisions"))
			return
		}
		if n := len(commits) + len(aborts); n > s.mcfg.MaxItems {
			ob.push(invalid(id, fmt.Sprintf("%d carried decisions exceed the limit of %d", n, s.mcfg.MaxItems)))
			return
		}
	}
	fences := req.GetFenceTids()
	if len(fences) > 0 {
		if k := req.GetKind(); k != tuttipb.Kind_KIND_EXEC && k != tuttipb.Kind_KIND_EXEC_APPEND {
			ob.push(invalid(id, fmt.Sprintf("only exec requests carry fences, not %v", req.GetKind())))
			return
		}
		if len(fences) > s.mcfg.MaxItems {
			ob.push(invalid(id, fmt.Sprintf("%d fences exceed the limit of %d", len(fences), s.mcfg.MaxItems)))
			return
		}
	}
	now := s.clock.Now().UnixNano()
	ob.begin()
	done := func(res []byte, err error) {
		ob.push(s.response(id, mn, res, err))
		ob.end()
	}
	if req.GetKind() == tuttipb.Kind_KIND_READ {
		s.rep.ReadAsync(mn, memnode.AppendQuery(nil, now, &op), func(res []byte, err error) {
			// res (machine.Query's, from bufpool.Pool) is what the
			// response's reads alias: put back once it is sent.
			ob.pushOwning(s.response(id, mn, res, err), res)
			ob.end()
		})
		return
	}
	t := req.GetTid()
	e := memnode.Entry{
		Kind:         kind,
		Now:          now,
		TID:          memnode.TID{Client: t.GetClient(), Seq: t.GetSeq(), Time: t.GetTime()},
		Participants: req.GetParticipants(),
		Op:           op,
		More:         more,
		Commits:      tidsFromWire(commits),
		Aborts:       tidsFromWire(aborts),
		Fences:       tidsFromWire(fences),
	}
	// The command is encoded into a pooled buffer (not zeroed first, as a
	// fresh one is), put back once replication is done with it.
	cmd := memnode.AppendEntry((*bufpool.Pool.Get(memnode.EntrySizeBound(&e)))[:0], &e)
	s.rep.ProposeAsync(mn, cmd, func(res []byte, err error) {
		done(res, err)
		bufpool.Pool.Put(&cmd)
	})
}

// response turns a replication outcome into a wire response.
func (s *Server) response(id, mn uint64, res []byte, err error) *tuttipb.Response {
	r := &tuttipb.Response{Id: id, FailedCompare: -1}
	if err != nil {
		var nl *replication.NotLeaderError
		switch {
		case errors.As(err, &nl):
			r.Status = tuttipb.Status_STATUS_NOT_LEADER
			r.LeaderHost = nl.Leader
			r.LeaderAddr = s.layout().hosts[nl.Leader]
		case errors.Is(err, replication.ErrUnknownGroup):
			r.Status = tuttipb.Status_STATUS_UNKNOWN_MEMNODE
		case errors.Is(err, replication.ErrTooLarge):
			r.Status = tuttipb.Status_STATUS_INVALID
		case errors.Is(err, replication.ErrStopped), errors.Is(err, replication.ErrDropped):
			// Not proposed: safe to retry.
			r.Status = tuttipb.Status_STATUS_UNAVAILABLE
		default:
			r.Status = tuttipb.Status_STATUS_UNKNOWN_OUTCOME
		}
		r.Error = err.Error()
		return r
	}
	mr, derr := memnode.DecodeResult(res)
	if derr != nil {
		r.Status = tuttipb.Status_STATUS_UNKNOWN_OUTCOME
		r.Error = fmt.Sprintf("memnode %d: undecodable result: %v", mn, derr)
		return r
	}
	if mr.Err != nil {
		r.Status = tuttipb.Status_STATUS_INVALID
		r.Error = mr.Err.Error()
		return r
	}
	r.Status = tuttipb.Status_STATUS_OK
	r.Vote = tuttipb.Vote(mr.Vote)
	r.FailedCompare = int32(mr.FailedCompare)
	r.Reads = mr.Reads
	r.Appended = appendedToWire(mr.Appended)
	r.Outcome = tuttipb.Outcome(mr.Outcome)
	return r
}

func invalid(id uint64, msg string) *tuttipb.Response {
	return &tuttipb.Response{Id: id, Status: tuttipb.Status_STATUS_INVALID, FailedCompare: -1, Error: msg}
}

// maxResponseBatchBytes is a soft bound on one ResponseBatch: responses that
// complete together (reads of up to MaxItemBytes each) are sent in batches
// of about this size, so that one batch stays well under the 64 MiB message
// limit of hosts and clients (a batch over it breaks the session and loses
// every response in flight on it). A larger response goes alone.
const maxResponseBatchBytes = 4 << 20

// maxResponseReadBytes bounds the data one request reads: its response
// must fit in one message under that limit (MaxItems reads of MaxItemBytes
// each would be 1 GiB), with room for the rest of the response.
const maxResponseReadBytes = 60 << 20

// responseBatchLen returns how many of rs, at least one, go in the next
// batch. Sizes are estimated from the variable-length fields.
func responseBatchLen(rs []*tuttipb.Response) int {
	size := 0
	for i, r := range rs {
		n := 64 + len(r.GetError()) + len(r.GetLeaderAddr()) + 24*len(r.GetAppended())
		for _, b := range r.GetReads() {
			n += len(b) + 8
		}
		if i > 0 && size+n > maxResponseBatchBytes {
			return i
		}
		size += n
	}
	return len(rs)
}

// outbox collects responses from Raft callbacks (which must not block) for
// the stream's one sender goroutine, which sends whatever has accumulated as
// one batch.
type outbox struct {
	mu struct {
		sync.Mutex
		pending  []*tuttipb.Response
		owned    [][]byte // buffers pending responses alias, put back once sent
		closed   bool
		inflight int
	}
	notify chan struct{}
	idle   chan struct{} // signalled when inflight drops to zero
	// release takes back a buffer of owned once the responses that alias
	// it were sent (marshaled: gRPC copies a message as it sends it).
	release func([]byte)
}

func newOutbox() *outbox {
	return &outbox{notify: make(chan struct{}, 1), idle: make(chan struct{}, 1),
		release: func(b []byte) { bufpool.Pool.Put(&b) }}
}

func (o *outbox) push(r *tuttipb.Response) { o.pushOwning(r, nil) }

// pushOwning queues r, whose fields may alias buf: buf is released once r
// was sent, and left to the collector if it never is.
func (o *outbox) pushOwning(r *tuttipb.Response, buf []byte) {
	o.mu.Lock()
	if o.mu.closed {
		o.mu.Unlock()
		return
	}
	o.mu.pending = append(o.mu.pending, r)
	if cap(buf) > 0 {
		o.mu.owned = append(o.mu.owned, buf)
	}
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

func (o *outbox) begin() {
	o.mu.Lock()
	o.mu.inflight++
	o.mu.Unlock()
}

func (o *outbox) end() {
	o.mu.Lock()
	o.mu.inflight--
	zero := o.mu.inflight == 0
	o.mu.Unlock()
	if zero {
		select {
		case o.idle <- struct{}{}:
		default:
		}
	}
}

// drain waits until no request is in flight or ctx ends.
func (o *outbox) drain(ctx context.Context) {
	for {
		o.mu.Lock()
		n := o.mu.inflight
		o.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-o.idle:
		case <-ctx.Done():
			return
		}
	}
}

func (o *outbox) close() {
	o.mu.Lock()
	o.mu.closed = true
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

func (o *outbox) run(stream tuttipb.Memnode_SessionServer) error {
	for {
		select {
		case <-o.notify:
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
		o.mu.Lock()
		batch, owned := o.mu.pending, o.mu.owned
		o.mu.pending, o.mu.owned = nil, nil
		closed := o.mu.closed
		o.mu.Unlock()
		for len(batch) > 0 {
			n := responseBatchLen(batch)
			if err := stream.Send(&tuttipb.ResponseBatch{Responses: batch[:n]}); err != nil {
				return err
			}
			batch = batch[n:]
		}
		for _, b := range owned {
			o.release(b)
		}
		if closed {
			return nil
		}
	}
}
