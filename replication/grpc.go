package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/bufpool"
)

// Tuning of the gRPC transport that is not worth a config field.
const (
	// grpcMaxBatchBytes is a soft bound on one RaftBatch frame: a drained
	// queue is split into frames of about this size so that frames stay well
	// under gRPC's default 4 MiB receive limit. A single larger message goes
	// alone in its frame.
	grpcMaxBatchBytes = 1 << 20
	// grpcMinBackoff and grpcMaxBackoff bound the wait between attempts to
	// open a stream to a peer after a failure; the wait doubles per failure.
	grpcMinBackoff = 50 * time.Millisecond
	grpcMaxBackoff = time.Second
	// grpcWarnAfter: a peer is reported unreachable (at warn level) once
	// sends to it have failed for this long; shorter outages — a peer
	// restarting, or a whole local cluster shutting down, where every
	// host's peers see the others go — log at debug level only.
	grpcWarnAfter = time.Second
	// grpcConnectTimeout bounds opening a stream.
	grpcConnectTimeout = 5 * time.Second
	// grpcUnreachableInterval: at most one ReportUnreachable per (group, peer)
	// per interval.
	grpcUnreachableInterval = 100 * time.Millisecond
	// grpcSnapshotsPerPeer bounds concurrent outgoing snapshots per peer;
	// more wait their turn.
	grpcSnapshotsPerPeer = 2
	// grpcMinSnapshotTimeout and grpcSnapshotRate bound one snapshot RPC: it
	// may take grpcMinSnapshotTimeout plus one second per grpcSnapshotRate
	// bytes.
	grpcMinSnapshotTimeout = 30 * time.Second
	grpcSnapshotRate       = 1 << 20
)

// GRPCConfig configures a GRPCTransport. Zero fields take the defaults stated.
type GRPCConfig struct {
	// ID is this host's id, > 0. Incoming batches must be addressed to it.
	ID uint64
	// Logger; the zero value logs nothing.
	Logger zerolog.Logger
	// DialOptions are applied after the transport's defaults (insecure
	// credentials, reconnect backoff 50 ms → 1 s), so they can override them.
	DialOptions []grpc.DialOption
	// QueueSize bounds the messages waiting to be sent to one peer; a message
	// sent to a full queue is dropped. Default 4096.
	QueueSize int
	// ChunkSize is the snapshot data carried per chunk, in bytes. Default
	// 1 MiB. The receiving server's MaxRecvMsgSize must exceed it.
	ChunkSize int
	// MaxSnapshotBytes bounds the data of one incoming snapshot, in bytes.
	// Default 1 GiB.
	MaxSnapshotBytes int64
	// AuthorizePeer, if set, decides whether a stream may carry Raft
	// traffic of host (a peer, at addr): it is called with the stream's
	// context (peer.FromContext gives its transport credentials) before
	// the stream's first batch or snapshot from host is taken, and again
	// if the stream names another sender. An error refuses the stream
	// (PermissionDenied) and nothing of it is delivered. With mutual TLS it
	// ties a certificate to a host id (cmd/tutti: the certificate must be
	// valid for the name its dialers verify the host's certificate for).
	AuthorizePeer func(ctx context.Context, host uint64, addr string) error
	// UnknownPeer, if set, is called (and must not block) when a batch or
	// snapshot from a host that is not a peer is refused: say, a host
	// added since this one last learnt the cluster's hosts, which the
	// caller may then look up (SetPeer) instead of waiting for its next
	// poll.
	UnknownPeer func(host uint64)
}

// Defaults of GRPCConfig.
const (
	DefaultGRPCQueueSize        = 4096
	DefaultGRPCChunkSize        = 1 << 20
	DefaultGRPCMaxSnapshotBytes = 1 << 30
)

// Validate reports every problem of c, zero fields taking their defaults.
func (c GRPCConfig) Validate() error {
	var errs []error
	if c.ID == 0 {
		errs = append(errs, errors.New("ID must be > 0"))
	}
	if c.QueueSize < 0 {
		errs = append(errs, fmt.Errorf("QueueSize %d is negative", c.QueueSize))
	}
	if c.ChunkSize < 0 {
		errs = append(errs, fmt.Errorf("ChunkSize %d is negative", c.ChunkSize))
	}
	if c.MaxSnapshotBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxSnapshotBytes %d is negative", c.MaxSnapshotBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("replication: invalid GRPCConfig: %w", err)
	}
	return nil
}

func (c GRPCConfig) withDefaults() GRPCConfig {
	if c.QueueSize == 0 {
		c.QueueSize = DefaultGRPCQueueSize
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = DefaultGRPCChunkSize
	}
	if c.MaxSnapshotBytes == 0 {
		c.MaxSnapshotBytes = DefaultGRPCMaxSnapshotBytes
	}
	return c
}

// GRPCTransport is the Transport between tutti hosts over gRPC.
//
// Outgoing: each peer set with SetPeer has a bounded queue and one sender
// goroutine. The sender opens one long-lived Raft.Stream to the peer on the
// first message and sends whatever is queued as one RaftBatch (many groups'
// messages per frame). After a failure it drops the batch, reports the peer
// unreachable for the groups concerned and retries with capped exponential
// backoff. A MsgSnap goes on its own Raft.Snapshot stream in chunks, in its
// own goroutine; its outcome is reported with Handler.ReportSnapshot.
//
// Incoming: Register adds the Raft service to a server the caller owns. Each
// received batch is checked (addressed to this host, decodable) and handed to
// the Handler with one HandleMessages call; a bad batch ends the stream with
// codes.InvalidArgument.
//
// Threading: Send, SetPeer and RemovePeer may be called concurrently. Send
// never blocks on the network and never calls the Handler itself; reports
// are delivered by the transport's own goroutine. HandleMessages may be
// called concurrently from different incoming streams. No Handler method is
// called once Close has returned.
//
// Ownership: Send encodes ordinary messages before returning. For a MsgSnap
// the transport keeps reading Snapshot.Data until it reports the outcome; the
// caller must not modify it (Raft snapshots are immutable).
type GRPCTransport struct {
	cfg      GRPCConfig
	log      zerolog.Logger
	dialOpts []grpc.DialOption

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc

	closed atomic.Bool

	mu struct {
		sync.RWMutex
		started bool
		closed  bool
		peers   map[uint64]*grpcPeer
	}

	// recv gates deliveries to the handler: delivering holds the read lock;
	// Close takes the write lock to wait out deliveries in progress.
	recv struct {
		sync.RWMutex
		handler Handler // nil before Start and after Close
	}

	reports grpcReporter
}

// NewGRPCTransport returns a transport for host cfg.ID. It starts no
// goroutine until Start and opens no connection until a message is sent.
func NewGRPCTransport(cfg GRPCConfig) (*GRPCTransport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	t := &GRPCTransport{
		cfg: cfg,
		log: cfg.Logger.With().Str("component", "raft-transport").Uint64("host", cfg.ID).Logger(),
	}
	t.dialOpts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		experimental.WithBufferPool(bufpool.Pool),
		grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(4 << 20),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(bufpool.Codec)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  grpcMinBackoff,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   grpcMaxBackoff,
			},
			MinConnectTimeout: grpcConnectTimeout,
		}),
	}, cfg.DialOptions...)
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.mu.peers = make(map[uint64]*grpcPeer)
	t.reports.init()
	return t, nil
}

// Register adds the Raft service to s. Call it before s serves.
func (t *GRPCTransport) Register(s grpc.ServiceRegistrar) {
	tuttipb.RegisterRaftServer(s, &grpcRaftServer{t: t})
}

// Start begins delivering incoming messages and reports to h.
func (t *GRPCTransport) Start(h Handler) error {
	if h == nil {
		return errors.New("replication: nil handler")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return ErrStopped
	}
	if t.mu.started {
		return errors.New("replication: grpc transport already started")
	}
	t.mu.started = true
	t.recv.Lock()
	t.recv.handler = h
	t.recv.Unlock()
	go t.reports.run(h)
	return nil
}

// SetPeer sets the address of host; messages to host go there from now on.
// Changing the address drops what is queued for the old one.
func (t *GRPCTransport) SetPeer(host uint64, addr string) {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return
	}
	old := t.mu.peers[host]
	if old != nil && old.addr == addr {
		t.mu.Unlock()
		return
	}
	p := newGRPCPeer(t, host, addr)
	t.mu.peers[host] = p
	t.mu.Unlock()
	go p.run()
	if old != nil {
		old.stop()
	}
}

// RemovePeer forgets host; messages to it are dropped and reported
// unreachable. It waits for the peer's goroutines to end.
func (t *GRPCTransport) RemovePeer(host uint64) {
	t.mu.Lock()
	p := t.mu.peers[host]
	delete(t.mu.peers, host)
	t.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// Send queues msgs for their destinations. It never blocks on the network:
// a message to an unknown peer or to a full queue is dropped and the peer
// reported unreachable for its group (rate-limited).
func (t *GRPCTransport) Send(msgs []GroupMessage) {
	if t.closed.Load() {
		return
	}
	var woken []*grpcPeer
	for _, m := range msgs {
		if m.Msg == nil {
			continue
		}
		to := m.Msg.GetTo()
		if m.Msg.GetType() == raftpb.MsgSnap {
			t.sendSnapshot(m)
			continue
		}
		t.mu.RLock()
		p := t.mu.peers[to]
		t.mu.RUnlock()
		if p == nil {
			t.reports.unreachable(m.Group, to)
			continue
		}
		// Encoded by the peer's sender, into the frame itself (sendFrame).
		if !p.enqueue(&tuttipb.GroupRaftMessage{Group: m.Group, Message: m.Msg}) {
			t.reports.unreachable(m.Group, to)
			continue
		}
		if len(woken) == 0 || woken[len(woken)-1] != p {
			woken = append(woken, p)
		}
	}
	for _, p := range woken {
		p.wakeUp()
	}
}

// sendSnapshot starts sending a MsgSnap on its own stream.
func (t *GRPCTransport) sendSnapshot(m GroupMessage) {
	to := m.Msg.GetTo()
	head, data, err := snapshotHead(m.Msg)
	if err != nil {
		t.log.Error().Err(err).Uint64("group", m.Group).Msg("cannot encode snapshot message; dropped")
		t.reports.snapshot(m.Group, to, false)
		return
	}
	t.mu.RLock()
	p := t.mu.peers[to]
	if p != nil {
		p.snaps.Add(1) // before stop can remove p and wait
	}
	t.mu.RUnlock()
	if p == nil {
		t.reports.snapshot(m.Group, to, false)
		t.reports.unreachable(m.Group, to)
		return
	}
	go p.sendSnapshot(m.Group, head, data)
}

// snapshotHead encodes m without its snapshot data and returns the data.
func snapshotHead(m *raftpb.Message) (head, data []byte, err error) {
	h := &raftpb.Message{}
	dst := h.ProtoReflect()
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Name() != "snapshot" {
			dst.Set(fd, v) // shares memory with m; only read by Marshal below
		}
		return true
	})
	snap := m.GetSnapshot()
	if snap != nil {
		h.Snapshot = &raftpb.Snapshot{Metadata: snap.GetMetadata()}
	}
	head, err = proto.Marshal(h)
	return head, snap.GetData(), err
}

// Close stops the senders, closes the client connections, and waits for the
// transport's goroutines and for HandleMessages calls in progress (so the
// handler must not wait for Close). Incoming streams still open are refused
// from then on; the server itself belongs to the caller. Outgoing snapshots
// in flight are canceled and their reports dropped. Safe to call more than
// once.
func (t *GRPCTransport) Close() error {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return nil
	}
	t.mu.closed = true
	t.closed.Store(true)
	started := t.mu.started
	peers := t.mu.peers
	t.mu.peers = nil
	t.mu.Unlock()

	// Wait out deliveries in progress; none start after this.
	t.recv.Lock()
	t.recv.handler = nil
	t.recv.Unlock()

	t.cancel()
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(p.stop)
	}
	wg.Wait()
	if started {
		t.reports.close()
	}
	return nil
}

// deliver hands msgs to the handler unless the transport is not started or
// closed; it reports whether it did.
func (t *GRPCTransport) deliver(msgs []GroupMessage) bool {
	t.recv.RLock()
	defer t.recv.RUnlock()
	if t.recv.handler == nil {
		return false
	}
	t.recv.handler.HandleMessages(msgs)
	return true
}

// grpcPeer is the outgoing side towards one host at one address.
type grpcPeer struct {
	t    *GRPCTransport
	id   uint64
	addr string
	log  zerolog.Logger

	ctx    context.Context // canceled by stop
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1
	done   chan struct{} // closed when run returns
	snaps  sync.WaitGroup
	// snapSem bounds concurrent outgoing snapshots.
	snapSem chan struct{}

	mu struct {
		sync.Mutex
		q []*tuttipb.GroupRaftMessage // bounded by QueueSize
	}
	connMu struct {
		sync.Mutex
		conn *grpc.ClientConn // created on first use
	}
}

func newGRPCPeer(t *GRPCTransport, id uint64, addr string) *grpcPeer {
	p := &grpcPeer{
		t:       t,
		id:      id,
		addr:    addr,
		log:     t.log.With().Uint64("peer", id).Str("addr", addr).Logger(),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		snapSem: make(chan struct{}, grpcSnapshotsPerPeer),
	}
	p.ctx, p.cancel = context.WithCancel(t.ctx)
	return p
}

// enqueue adds m to the queue unless it is full.
func (p *grpcPeer) enqueue(m *tuttipb.GroupRaftMessage) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.mu.q) >= p.t.cfg.QueueSize {
		return false
	}
	p.mu.q = append(p.mu.q, m)
	return true
}

func (p *grpcPeer) wakeUp() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// stop ends the peer's goroutines and closes its connection.
func (p *grpcPeer) stop() {
	p.cancel()
	<-p.done
	p.snaps.Wait()
	p.connMu.Lock()
	conn := p.connMu.conn
	p.connMu.conn = nil
	p.connMu.Unlock()
	if conn != nil {
		if err := conn.Close(); err != nil {
			p.log.Debug().Err(err).Msg("closing connection")
		}
	}
}

// client returns a client on the peer's connection, creating it on first use.
func (p *grpcPeer) client() (tuttipb.RaftClient, error) {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if err := p.ctx.Err(); err != nil {
		return nil, err
	}
	if p.connMu.conn == nil {
		conn, err := grpc.NewClient(p.addr, p.t.dialOpts...)
		if err != nil {
			return nil, fmt.Errorf("replication: connecting to host %d at %q: %w", p.id, p.addr, err)
		}
		p.connMu.conn = conn
	}
	return tuttipb.NewRaftClient(p.connMu.conn), nil
}

// openStream opens the long-lived batch stream; cancel ends it.
func (p *grpcPeer) openStream() (s tuttipb.Raft_StreamClient, cancel context.CancelFunc, err error) {
	c, err := p.client()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(p.ctx)
	timer := time.AfterFunc(grpcConnectTimeout, cancel)
	s, err = c.Stream(ctx)
	if !timer.Stop() && err == nil {
		err = fmt.Errorf("replication: opening stream to host %d: timed out after %v", p.id, grpcConnectTimeout)
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return s, cancel, nil
}

// run is the peer's sender goroutine: it drains the queue into batches.
func (p *grpcPeer) run() {
	defer close(p.done)
	var (
		stream tuttipb.Raft_StreamClient
		cancel context.CancelFunc
		wait   time.Duration // current backoff
		since  time.Time     // first failure of the current outage; zero: healthy
		warned bool          // the outage was logged at warn level
	)
	defer func() {
		if cancel != nil {
			cancel()
		}
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		}
		// The queue's array is handed to gRPC, which may keep reading the
		// messages after Send returns: never reused.
		p.mu.Lock()
		pending := p.mu.q
		p.mu.q = nil
		p.mu.Unlock()
		if len(pending) == 0 {
			continue
		}
		var err error
		if stream == nil {
			stream, cancel, err = p.openStream()
		}
		if err == nil {
			err = p.sendBatches(stream, pending)
			if err != nil {
				cancel()
				stream, cancel = nil, nil
			}
		}
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			p.failed(pending)
			if since.IsZero() {
				since = time.Now()
			}
			if d := time.Since(since); !warned && d >= grpcWarnAfter {
				p.log.Warn().Err(err).Dur("for", d).Msg("raft peer unreachable")
				warned = true
			} else {
				p.log.Debug().Err(err).Msg("raft peer unreachable")
			}
			wait = min(max(2*wait, grpcMinBackoff), grpcMaxBackoff)
			timer.Reset(wait)
			select {
			case <-p.ctx.Done():
				return
			case <-timer.C:
			}
			p.wakeUp() // retry with what queued meanwhile
		} else {
			if warned {
				p.log.Info().Dur("after", time.Since(since)).Msg("raft peer reachable again")
			}
			since, warned, wait = time.Time{}, false, 0
		}
	}
}

// sendBatches sends pending as frames of about grpcMaxBatchBytes.
func (p *grpcPeer) sendBatches(s tuttipb.Raft_StreamClient, pending []*tuttipb.GroupRaftMessage) error {
	start, size := 0, 0
	for i, m := range pending {
		n := proto.Size(m.GetMessage()) + 16
		if i > start && size+n > grpcMaxBatchBytes {
			if err := p.sendFrame(s, pending[start:i]); err != nil {
				return err
			}
			start, size = i, 0
		}
		size += n
	}
	return p.sendFrame(s, pending[start:])
}

// sendFrame sends msgs as one RaftBatch. It sends the wire-identical
// RaftBatchMessages, so each Raft message is encoded once, straight into the
// frame (as bytes in a GroupMessage it was encoded, then copied).
func (p *grpcPeer) sendFrame(s tuttipb.Raft_StreamClient, msgs []*tuttipb.GroupRaftMessage) error {
	err := s.SendMsg(&tuttipb.RaftBatchMessages{From: p.t.cfg.ID, To: p.id, Messages: msgs})
	if errors.Is(err, io.EOF) {
		// The server ended the stream; its status says why.
		_, err = s.CloseAndRecv()
		if err == nil {
			err = fmt.Errorf("replication: host %d closed the stream", p.id)
		}
	}
	return err
}

// failed reports the groups of a lost batch unreachable.
func (p *grpcPeer) failed(pending []*tuttipb.GroupRaftMessage) {
	for _, m := range pending {
		p.t.reports.unreachable(m.GetGroup(), p.id)
	}
}

// sendSnapshot sends one MsgSnap and reports the outcome. p.snaps was
// incremented by the caller.
func (p *grpcPeer) sendSnapshot(group uint64, head, data []byte) {
	defer p.snaps.Done()
	err := p.streamSnapshot(group, head, data)
	if err != nil && p.ctx.Err() == nil {
		p.log.Warn().Err(err).Uint64("group", group).Int("bytes", len(data)).Msg("sending snapshot failed")
	}
	p.t.reports.snapshot(group, p.id, err == nil)
	if err != nil {
		p.t.reports.unreachable(group, p.id)
	}
}

func (p *grpcPeer) streamSnapshot(group uint64, head, data []byte) error {
	select {
	case p.snapSem <- struct{}{}:
		defer func() { <-p.snapSem }()
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	c, err := p.client()
	if err != nil {
		return err
	}
	timeout := grpcMinSnapshotTimeout + time.Duration(len(data)/grpcSnapshotRate)*time.Second
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	s, err := c.Snapshot(ctx)
	if err != nil {
		return err
	}
	chunk := &tuttipb.SnapshotChunk{From: p.t.cfg.ID, To: p.id, Group: group, Message: head, Last: len(data) == 0}
	for {
		if err := s.Send(chunk); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server's status follows
			}
			return err
		}
		if chunk.Last {
			break
		}
		n := min(len(data), p.t.cfg.ChunkSize)
		chunk = &tuttipb.SnapshotChunk{Data: data[:n], Last: n == len(data)}
		data = data[n:]
	}
	_, err = s.CloseAndRecv()
	return err
}

// grpcRaftServer serves the Raft service for a GRPCTransport.
type grpcRaftServer struct {
	tuttipb.UnimplementedRaftServer
	t *GRPCTransport
}

var errNotServing = status.Error(codes.Unavailable, "replication: raft transport not started or closed")

// Stream receives batches from one peer and delivers each with one
// HandleMessages call. It ends when the transport closes, even while the
// peer is silent: a peer's stream never ends by itself, and a server's
// GracefulStop waits for every stream to end.
func (s *grpcRaftServer) Stream(stream tuttipb.Raft_StreamServer) error {
	t := s.t
	done := make(chan error, 1)
	go func() { done <- t.receive(stream) }()
	select {
	case err := <-done:
		return err
	case <-t.ctx.Done():
		// Returning ends the stream; the receiving goroutine's Recv then
		// fails and it exits.
		return errNotServing
	}
}

// receive is Stream's loop. Batches are RaftBatch on the wire and decoded as
// the wire-identical RaftBatchMessages: each Raft message is decoded once,
// from the frame itself.
func (t *GRPCTransport) receive(stream tuttipb.Raft_StreamServer) error {
	var authorized uint64 // the sender this stream was admitted for
	for {
		b := &tuttipb.RaftBatchMessages{}
		err := stream.RecvMsg(b)
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&tuttipb.RaftAck{})
		}
		if err != nil {
			// A batch that does not decode has already been answered by
			// gRPC (Internal, "failed to unmarshal"); nothing of it is
			// delivered.
			if status.Code(err) == codes.Internal {
				t.log.Warn().Err(err).Msg("refused raft batch")
			}
			return err
		}
		msgs, err := t.decodeBatch(b)
		if err == nil && b.GetFrom() != authorized {
			if err = t.admit(stream.Context(), "batch", b.GetFrom()); err == nil {
				authorized = b.GetFrom()
			}
		}
		if err != nil {
			t.log.Warn().Err(err).Uint64("from", b.GetFrom()).Msg("refused raft batch")
			return err
		}
		if len(msgs) == 0 {
			continue
		}
		if !t.deliver(msgs) {
			return errNotServing
		}
	}
}

// admit decides whether a stream may carry Raft traffic (a batch or a
// snapshot: what) of host, once per stream and sender; the error is a gRPC
// status. Traffic is taken only from peers (SetPeer): a host this one
// cannot answer (no address) has no business in its groups, and a stale or
// misconfigured process claiming a host id it was never given is refused
// rather than heard; GRPCConfig.UnknownPeer is told. Then
// GRPCConfig.AuthorizePeer decides.
func (t *GRPCTransport) admit(ctx context.Context, what string, host uint64) error {
	t.mu.Lock()
	p := t.mu.peers[host]
	t.mu.Unlock()
	if p == nil {
		if f := t.cfg.UnknownPeer; f != nil {
			f(host)
		}
		return status.Errorf(codes.PermissionDenied,
			"replication: %s from host %d, which is not a peer of host %d", what, host, t.cfg.ID)
	}
	if f := t.cfg.AuthorizePeer; f != nil {
		if err := f(ctx, host, p.addr); err != nil {
			return status.Errorf(codes.PermissionDenied, "replication: host %d refuses Raft traffic as host %d: %v", t.cfg.ID, host, err)
		}
	}
	return nil
}

// decodeBatch checks and decodes b; errors are gRPC statuses.
func (t *GRPCTransport) decodeBatch(b *tuttipb.RaftBatchMessages) ([]GroupMessage, error) {
	if b.GetTo() != t.cfg.ID {
		return nil, status.Errorf(codes.InvalidArgument,
			"replication: batch from host %d is addressed to host %d but this is host %d", b.GetFrom(), b.GetTo(), t.cfg.ID)
	}
	msgs := make([]GroupMessage, len(b.GetMessages()))
	for i, gm := range b.GetMessages() {
		m := gm.GetMessage()
		if m == nil {
			return nil, status.Errorf(codes.InvalidArgument,
				"replication: message %d of group %d from host %d is empty", i, gm.GetGroup(), b.GetFrom())
		}
		if m.GetTo() != t.cfg.ID || m.GetFrom() != b.GetFrom() {
			return nil, status.Errorf(codes.InvalidArgument,
				"replication: message %d of group %d in a batch from host %d to host %d is from host %d to host %d",
				i, gm.GetGroup(), b.GetFrom(), b.GetTo(), m.GetFrom(), m.GetTo())
		}
		msgs[i] = GroupMessage{Group: gm.GetGroup(), Msg: m}
	}
	return msgs, nil
}

// Snapshot receives one snapshot in chunks, reassembles it and delivers the
// MsgSnap. The ack tells the sender the message was handed to the handler.
func (s *grpcRaftServer) Snapshot(stream tuttipb.Raft_SnapshotServer) error {
	t := s.t
	m, group, err := t.receiveSnapshot(stream)
	if err != nil {
		t.log.Warn().Err(err).Msg("refused snapshot")
		return err
	}
	if !t.deliver([]GroupMessage{{Group: group, Msg: m}}) {
		return errNotServing
	}
	return stream.SendAndClose(&tuttipb.SnapshotAck{})
}

func (t *GRPCTransport) receiveSnapshot(stream tuttipb.Raft_SnapshotServer) (*raftpb.Message, uint64, error) {
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, 0, status.Error(codes.InvalidArgument, "replication: empty snapshot stream")
		}
		return nil, 0, err
	}
	from, group := first.GetFrom(), first.GetGroup()
	if first.GetTo() != t.cfg.ID {
		return nil, 0, status.Errorf(codes.InvalidArgument,
			"replication: snapshot from host %d is addressed to host %d but this is host %d", from, first.GetTo(), t.cfg.ID)
	}
	if err := t.admit(stream.Context(), "snapshot", from); err != nil {
		return nil, 0, err
	}
	m := &raftpb.Message{}
	if err := proto.Unmarshal(first.GetMessage(), m); err != nil {
		return nil, 0, status.Errorf(codes.InvalidArgument, "replication: undecodable snapshot message from host %d: %v", from, err)
	}
	if m.GetType() != raftpb.MsgSnap || m.GetTo() != t.cfg.ID || m.GetFrom() != from || len(m.GetSnapshot().GetData()) != 0 {
		return nil, 0, status.Errorf(codes.InvalidArgument,
			"replication: first snapshot chunk from host %d must carry a MsgSnap to host %d without data, got %v from %d to %d",
			from, t.cfg.ID, m.GetType(), m.GetFrom(), m.GetTo())
	}
	var data []byte
	add := func(c *tuttipb.SnapshotChunk) error {
		if int64(len(data))+int64(len(c.GetData())) > t.cfg.MaxSnapshotBytes {
			return status.Errorf(codes.ResourceExhausted,
				"replication: snapshot of group %d from host %d exceeds %d bytes", group, from, t.cfg.MaxSnapshotBytes)
		}
		data = append(data, c.GetData()...)
		return nil
	}
	if err := add(first); err != nil {
		return nil, 0, err
	}
	for last := first.GetLast(); !last; {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, 0, status.Errorf(codes.InvalidArgument,
				"replication: snapshot of group %d from host %d ended without its last chunk", group, from)
		}
		if err != nil {
			return nil, 0, err
		}
		if len(c.GetMessage()) != 0 || (c.GetFrom() != 0 && c.GetFrom() != from) ||
			(c.GetTo() != 0 && c.GetTo() != t.cfg.ID) || (c.GetGroup() != 0 && c.GetGroup() != group) {
			return nil, 0, status.Errorf(codes.InvalidArgument,
				"replication: snapshot of group %d from host %d has an inconsistent chunk", group, from)
		}
		if err := add(c); err != nil {
			return nil, 0, err
		}
		last = c.GetLast()
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		if err == nil {
			return nil, 0, status.Errorf(codes.InvalidArgument,
				"replication: snapshot of group %d from host %d has chunks after the last", group, from)
		}
		return nil, 0, err
	}
	if m.Snapshot == nil {
		m.Snapshot = &raftpb.Snapshot{}
	}
	m.Snapshot.Data = data
	return m, group, nil
}

// grpcReporter delivers ReportUnreachable and ReportSnapshot from its own
// goroutine, so that Send never calls the handler. Unreachable reports are
// coalesced and rate-limited per (group, peer).
type grpcReporter struct {
	wake chan struct{} // capacity 1
	stop chan struct{}
	done chan struct{}

	mu struct {
		sync.Mutex
		unreach map[[2]uint64]struct{}  // pending, by {group, to}
		last    map[[2]uint64]time.Time // when last queued
		snaps   []grpcSnapReport
	}
}

type grpcSnapReport struct {
	group, to uint64
	ok        bool
}

func (r *grpcReporter) init() {
	r.wake = make(chan struct{}, 1)
	r.stop = make(chan struct{})
	r.done = make(chan struct{})
	r.mu.unreach = make(map[[2]uint64]struct{})
	r.mu.last = make(map[[2]uint64]time.Time)
}

func (r *grpcReporter) unreachable(group, to uint64) {
	key := [2]uint64{group, to}
	now := time.Now()
	r.mu.Lock()
	if last, ok := r.mu.last[key]; ok && now.Sub(last) < grpcUnreachableInterval {
		r.mu.Unlock()
		return
	}
	if len(r.mu.last) > 1<<16 {
		for k, at := range r.mu.last {
			if now.Sub(at) >= grpcUnreachableInterval {
				delete(r.mu.last, k)
			}
		}
	}
	r.mu.last[key] = now
	r.mu.unreach[key] = struct{}{}
	r.mu.Unlock()
	r.signal()
}

func (r *grpcReporter) snapshot(group, to uint64, ok bool) {
	r.mu.Lock()
	r.mu.snaps = append(r.mu.snaps, grpcSnapReport{group: group, to: to, ok: ok})
	r.mu.Unlock()
	r.signal()
}

func (r *grpcReporter) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run delivers reports to h until close; reports pending at close are
// dropped.
func (r *grpcReporter) run(h Handler) {
	defer close(r.done)
	var unreach [][2]uint64
	var snaps []grpcSnapReport
	for {
		select {
		case <-r.stop:
			return
		case <-r.wake:
		}
		r.mu.Lock()
		unreach = unreach[:0]
		for k := range r.mu.unreach {
			unreach = append(unreach, k)
		}
		clear(r.mu.unreach)
		snaps, r.mu.snaps = r.mu.snaps, snaps[:0]
		r.mu.Unlock()
		for _, k := range unreach {
			h.ReportUnreachable(k[0], k[1])
		}
		for _, s := range snaps {
			h.ReportSnapshot(s.group, s.to, s.ok)
		}
		clear(snaps)
	}
}

func (r *grpcReporter) close() {
	close(r.stop)
	<-r.done
}

var _ Transport = (*GRPCTransport)(nil)
