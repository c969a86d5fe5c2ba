package client

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/bufpool"
)

// Connection health. A host that stops answering while its connection stays
// open (a paused process, a network cut without resets) is detected by
// HTTP/2 pings: no answer within KeepaliveTime+KeepaliveTimeout closes the
// connection, its requests end (an Exec then returns ErrUnknownOutcome,
// reads are retried), and later requests go to other replicas, which elect
// a new leader meanwhile. Connecting gives up after ConnectTimeout (a
// listening socket whose process does not answer). Hosts accept pings
// every KeepaliveTime (service.HostConfig). DialOptions may override these.
const (
	KeepaliveTime    = 2 * time.Second
	KeepaliveTimeout = 2 * time.Second
	ConnectTimeout   = 2 * time.Second
)

// WindowSize and ConnWindowSize are the HTTP/2 flow-control windows of a
// client's streams and connections (hosts use the same). A window set
// explicitly turns off gRPC's bandwidth-delay estimation, which sent a
// ping (and got its ack) for nearly every burst of small messages:
// on loopback, with many small requests and watch notifications, those
// pings and the window updates of small windows were a large share of
// the system calls.
const (
	WindowSize     = 1 << 20
	ConnWindowSize = 4 << 20
)

// Config configures a Client.
type Config struct {
	// Seeds are addresses of any hosts of the cluster; one that answers is
	// enough. Required.
	Seeds []string
	// ID identifies this client in minitransaction ids; random if 0.
	ID uint64
	// DialOptions for every host; insecure credentials if empty.
	DialOptions []grpc.DialOption
	// Logger; disabled if zero.
	Logger zerolog.Logger
	// Retry bounds retries after BAD-LOCK votes and leader changes.
	Retry RetryPolicy
	// Now is the clock stamped into tids (for age-based garbage collection
	// at memnodes); time.Now if nil.
	Now func() time.Time
	// Crash, for tests of recovery only: called at each CrashPoint of a
	// two-phase attempt; when it returns true the coordinator stops there
	// as if its process died (it sends nothing more for that tid) and Exec
	// returns an error wrapping ErrCoordinatorCrashed. Nil in production.
	Crash func(point CrashPoint, tid TID) bool
}

// RetryPolicy is randomized exponential backoff: attempt k waits a uniform
// random time in [0, min(Max, Initial*2^k)].
type RetryPolicy struct {
	Initial     time.Duration // default 500µs
	Max         time.Duration // default 100ms
	MaxAttempts int           // default 64; then ErrContention/ErrUnavailable
}

// DefaultRetryPolicy is used for zero fields.
var DefaultRetryPolicy = RetryPolicy{Initial: 500 * time.Microsecond, Max: 100 * time.Millisecond, MaxAttempts: 64}

// Client executes minitransactions against a tutti cluster. It is safe for
// concurrent use; concurrent minitransactions share one stream per host and
// are batched on it.
type Client struct {
	cfg  Config
	log  zerolog.Logger
	seq  atomic.Uint64
	dial []grpc.DialOption

	mu struct {
		sync.Mutex
		hosts    map[uint64]string // host id → address
		memnodes map[uint64][]uint64
		leader   map[uint64]uint64 // memnode → believed leader host
		conns    map[string]*conn
		rng      *rand.Rand
		closed   bool
		limits   *tuttipb.ClusterInfo
	}
	// routes caches route's answers (memnode → leader's conn) for a
	// lock-free fast path; nil after any change of mu's hosts, memnodes,
	// leader or conns, refilled by route under mu.
	routes atomic.Pointer[map[uint64]routeEntry]
	bg     sync.WaitGroup // background commit/abort senders

	watches watchSet // open watches (watch.go), closed by Close

	stats decisionStats
	hooks decisionHooks // for conns: decisionAnswered and stats

	refreshMu   sync.Mutex // serializes layout refreshes after errors (admin.go)
	refreshedAt time.Time
}

// New connects to the cluster through one of cfg.Seeds and learns its hosts
// and memnodes.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Seeds) == 0 {
		return nil, errors.New("tutti: at least one seed address is required")
	}
	if cfg.ID == 0 {
		var b [8]byte
		if _, err := crand.Read(b[:]); err != nil {
			return nil, err
		}
		cfg.ID = binary.LittleEndian.Uint64(b[:]) | 1
	}
	if cfg.Retry.Initial <= 0 {
		cfg.Retry.Initial = DefaultRetryPolicy.Initial
	}
	if cfg.Retry.Max <= 0 {
		cfg.Retry.Max = DefaultRetryPolicy.Max
	}
	if cfg.Retry.MaxAttempts <= 0 {
		cfg.Retry.MaxAttempts = DefaultRetryPolicy.MaxAttempts
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Client{cfg: cfg, log: cfg.Logger}
	c.hooks = decisionHooks{answered: c.decisionAnswered, stats: &c.stats}
	c.dial = []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20), grpc.ForceCodecV2(bufpool.Codec)),
		experimental.WithBufferPool(bufpool.Pool),
		grpc.WithInitialWindowSize(WindowSize), grpc.WithInitialConnWindowSize(ConnWindowSize),
		// A host that stops answering (paused, cut off) must not hold
		// requests until their deadlines: pings detect it, and reconnecting
		// gives up quickly, so requests move to other replicas.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: ConnectTimeout,
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}}),
	}
	if len(cfg.DialOptions) == 0 {
		c.dial = append(c.dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	c.dial = append(c.dial, cfg.DialOptions...) // last wins
	c.mu.conns = map[string]*conn{}
	c.mu.leader = map[uint64]uint64{}
	c.mu.rng = rand.New(rand.NewPCG(cfg.ID, uint64(time.Now().UnixNano())))
	if err := c.Refresh(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Refresh asks the seeds (then any known host) for the cluster's layout.
// An answer from an older directory than the one the client knows (a host
// that cannot read memnode 0 answers from the layout it last installed,
// after a restart its configured placement) is passed over for the next
// host's; if no host knows as much, the client keeps its layout.
func (c *Client) Refresh(ctx context.Context) error {
	addrs := append([]string(nil), c.cfg.Seeds...)
	c.mu.Lock()
	for _, a := range c.mu.hosts {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	c.mu.Unlock()
	var errs []error
	older := false
	for _, a := range addrs {
		cn, err := c.conn(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		info, err := cn.rpc.Cluster(cctx, &tuttipb.ClusterRequest{})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
			continue
		}
		if !c.install(info) {
			older = true
			continue
		}
		return nil
	}
	if older {
		return nil // every answer was older than what the client knows
	}
	return fmt.Errorf("tutti: no seed answered: %w", errors.Join(errs...))
}

// install makes info the client's layout unless it comes from an older
// directory than the layout installed; it reports whether it did.
func (c *Client) install(info *tuttipb.ClusterInfo) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if info.GetDirectoryVersion() < c.mu.limits.GetDirectoryVersion() {
		return false
	}
	c.routes.Store(nil)
	c.mu.hosts = map[uint64]string{}
	for _, h := range info.GetHosts() {
		c.mu.hosts[h.GetId()] = h.GetAddr()
	}
	c.mu.memnodes = map[uint64][]uint64{}
	for _, m := range info.GetMemnodes() {
		c.mu.memnodes[m.GetId()] = m.GetReplicas()
		if l, ok := c.mu.leader[m.GetId()]; ok && !slices.Contains(m.GetReplicas(), l) {
			delete(c.mu.leader, m.GetId()) // the replica moved away
		}
		if l := m.GetLeader(); l != 0 {
			c.mu.leader[m.GetId()] = l
		} else if _, ok := c.mu.leader[m.GetId()]; !ok && len(m.GetReplicas()) > 0 {
			c.mu.leader[m.GetId()] = m.GetReplicas()[0]
		}
	}
	c.mu.limits = info
	return true
}

// Cluster returns the layout the client knows.
func (c *Client) Cluster() *tuttipb.ClusterInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.limits
}

func (c *Client) conn(addr string) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connLocked(addr)
}

func (c *Client) connLocked(addr string) (*conn, error) {
	if c.mu.closed {
		return nil, ErrClosed
	}
	if cn, ok := c.mu.conns[addr]; ok {
		return cn, nil
	}
	cn, err := newConn(addr, c.dial, &c.hooks)
	if err != nil {
		return nil, err
	}
	c.mu.conns[addr] = cn
	return cn, nil
}

// Close waits for background commit messages and closes all connections.
func (c *Client) Close() error {
	c.bg.Wait()
	c.watches.closeAll()
	c.mu.Lock()
	c.mu.closed = true
	conns := c.mu.conns
	c.mu.conns = nil
	c.routes.Store(nil)
	c.mu.Unlock()
	var errs []error
	for _, cn := range conns {
		errs = append(errs, cn.close())
	}
	return errors.Join(errs...)
}

func (c *Client) newTid() *tuttipb.Tid {
	return c.stampTid(new(tuttipb.Tid))
}

// stampTid makes tid, a zero Tid, the client's next one and returns it.
func (c *Client) stampTid(tid *tuttipb.Tid) *tuttipb.Tid {
	tid.Client, tid.Seq, tid.Time = c.cfg.ID, c.seq.Add(1), c.cfg.Now().UnixNano()
	return tid
}

// backoff sleeps for attempt's randomized exponential delay or until ctx ends.
func (c *Client) backoff(ctx context.Context, attempt int) error {
	d := c.cfg.Retry.Initial << min(attempt, 20)
	if d > c.cfg.Retry.Max || d <= 0 {
		d = c.cfg.Retry.Max
	}
	c.mu.Lock()
	d = time.Duration(c.mu.rng.Int64N(int64(d) + 1))
	c.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// route returns the connection to the believed leader of memnode.
func (c *Client) route(mn uint64) (*conn, uint64, error) {
	if m := c.routes.Load(); m != nil {
		if r, ok := (*m)[mn]; ok {
			return r.cn, r.host, nil
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	reps, ok := c.mu.memnodes[mn]
	if !ok {
		return nil, 0, &Error{Memnode: mn, Err: ErrUnknownMemnode, Detail: fmt.Sprintf("the cluster has no memnode %d", mn)}
	}
	h := c.mu.leader[mn]
	if h == 0 && len(reps) > 0 {
		h = reps[0]
	}
	cn, err := c.connLocked(c.mu.hosts[h])
	if err != nil {
		return nil, h, err
	}
	old := c.routes.Load()
	m := make(map[uint64]routeEntry, 1+lenRoutes(old))
	if old != nil {
		maps.Copy(m, *old)
	}
	m[mn] = routeEntry{cn, h}
	c.routes.Store(&m)
	return cn, h, nil
}

// routeEntry is one of Client.routes: memnode's believed leader and its
// connection.
type routeEntry struct {
	cn   *conn
	host uint64
}

func lenRoutes(m *map[uint64]routeEntry) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// leaderAnswered records that host h answered for memnode mn as its leader.
func (c *Client) leaderAnswered(mn, h uint64) {
	if m := c.routes.Load(); m != nil {
		if r, ok := (*m)[mn]; ok && r.host == h {
			return // already what route answers
		}
	}
	c.mu.Lock()
	if c.mu.leader[mn] != h {
		c.mu.leader[mn] = h
		c.routes.Store(nil)
	}
	c.mu.Unlock()
}

// redirect records a NOT_LEADER answer: follow the hint, else try the next
// replica.
func (c *Client) redirect(mn, tried uint64, r *tuttipb.Response) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.routes.Store(nil)
	if r != nil && r.GetLeaderHost() != 0 && r.GetLeaderHost() != tried {
		c.mu.leader[mn] = r.GetLeaderHost()
		if a := r.GetLeaderAddr(); a != "" {
			c.mu.hosts[r.GetLeaderHost()] = a
		}
		return
	}
	reps := c.mu.memnodes[mn]
	for i, h := range reps {
		if h == tried {
			c.mu.leader[mn] = reps[(i+1)%len(reps)]
			return
		}
	}
	if len(reps) > 0 {
		c.mu.leader[mn] = reps[0]
	}
}

// call sends req to memnode's leader, following redirects and retrying while
// it is safe (the request was not applied), until a definite answer, ctx's
// end, or the retry budget. It never retries a request whose outcome is
// unknown; it returns that response.
func (c *Client) call(ctx context.Context, req *tuttipb.Request) (*tuttipb.Response, error) {
	mn := req.GetMemnode()
	var last string
	refreshed := false // the layout was refreshed for an unknown memnode
	for attempt := 0; attempt < c.cfg.Retry.MaxAttempts; attempt++ {
		if attempt > 0 {
			if err := c.backoff(ctx, attempt-1); err != nil {
				return nil, &Error{Memnode: mn, Err: err, Detail: last}
			}
		}
		if err := ctx.Err(); err != nil {
			// Not sent: a request must not leave once its caller has
			// given up, only to apply with nobody told.
			return nil, &Error{Memnode: mn, Err: err, Detail: last}
		}
		cn, h, err := c.route(mn)
		if err != nil {
			if errors.Is(err, ErrUnknownMemnode) && !refreshed {
				// Perhaps a memnode added since the last refresh.
				refreshed = true
				if c.refreshLayout(ctx) {
					attempt--
					continue
				}
			}
			return nil, err
		}
		r, err := cn.do(ctx, req)
		if err != nil {
			if errors.Is(err, errNotSent) {
				last = err.Error()
				c.redirect(mn, h, nil)
				if attempt%4 == 3 {
					c.refreshLayout(ctx) // hosts may have new addresses
				}
				continue
			}
			// The context ended while the request was out. The host may
			// have stopped answering: try another replica next time.
			c.redirect(mn, h, nil)
			if req.GetKind() == tuttipb.Kind_KIND_READ {
				return nil, &Error{Memnode: mn, Err: err}
			}
			return nil, &Error{Memnode: mn, Err: ErrUnknownOutcome, Detail: err.Error()}
		}
		switch r.GetStatus() {
		case tuttipb.Status_STATUS_OK:
			c.leaderAnswered(mn, h)
			return r, nil
		case tuttipb.Status_STATUS_NOT_LEADER, tuttipb.Status_STATUS_UNAVAILABLE:
			last = r.GetError()
			c.redirect(mn, h, r)
			if r.GetLeaderHost() == 0 || r.GetLeaderHost() == h || attempt%8 == 7 {
				// No usable hint: the replicas may have moved.
				c.refreshLayout(ctx)
			}
			continue
		case tuttipb.Status_STATUS_UNKNOWN_OUTCOME:
			// The connection broke (or the host lost track of the
			// proposal): try another replica next.
			c.redirect(mn, h, nil)
			if req.GetKind() == tuttipb.Kind_KIND_READ {
				last = r.GetError()
				continue
			}
			return r, nil
		case tuttipb.Status_STATUS_UNKNOWN_MEMNODE:
			// The host no longer (or not yet) holds a replica, or the
			// memnode is new: look at the directory again once.
			if !refreshed {
				refreshed = true
				if c.refreshLayout(ctx) {
					c.redirect(mn, h, nil)
					continue
				}
			}
			return nil, &Error{Memnode: mn, Err: ErrUnknownMemnode, Detail: r.GetError()}
		case tuttipb.Status_STATUS_INVALID:
			d := r.GetError()
			if req.GetKind() == tuttipb.Kind_KIND_EXEC_APPEND && strings.HasPrefix(d, "unknown request kind") {
				// Nothing applied: such a server refuses the whole request.
				d = "the memnode's host does not know append items (upgrade memnode hosts before clients that append): " + d
			}
			return nil, &Error{Memnode: mn, Err: ErrInvalid, Detail: d}
		default:
			return nil, &Error{Memnode: mn, Err: ErrUnavailable, Detail: fmt.Sprintf("unexpected status %v: %s", r.GetStatus(), r.GetError())}
		}
	}
	return nil, &Error{Memnode: mn, Err: ErrUnavailable, Detail: fmt.Sprintf("gave up after %d attempts: %s", c.cfg.Retry.MaxAttempts, last)}
}
