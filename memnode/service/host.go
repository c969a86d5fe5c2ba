package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/bufpool"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

// startGroupHook, if set (tests), runs before each replica StartHost starts.
var startGroupHook func(host, memnode uint64) error

// HostConfig describes one tutti host: its identity, where it listens, the
// cluster's hosts and memnode placement, and its data directory.
type HostConfig struct {
	// ID of this host, > 0. It is also its replica id in every Raft group.
	ID uint64
	// Listen is the TCP address to bind, e.g. "127.0.0.1:7400" or ":7400".
	// Clients and other hosts use the same port.
	Listen string
	// Listener, if set, is used instead of binding Listen.
	Listener net.Listener
	// Hosts maps every host id (this one included) to the address others
	// reach it at.
	Hosts map[uint64]string
	// Memnodes places memnodes on hosts at the cluster's first bootstrap
	// (it becomes the directory's initial content); afterwards the
	// directory in memnode 0 is authoritative (see doc.go).
	Memnodes []MemnodeSpec
	// DirectoryPoll is how often the host reads the directory and
	// reconciles its replicas with it; DefaultDirectoryPoll if 0. Negative
	// turns the directory off: the placement stays Memnodes.
	DirectoryPoll time.Duration
	// DataDir holds this host's Raft log engine. Required.
	DataDir string
	// Memnode bounds every memnode hosted here.
	Memnode memnode.Config
	// Replication tunes the Raft host; ID, DataDir, Transport and Logger are
	// filled in from this config.
	Replication replication.Config
	// Clock stamps entries; WallClock if nil.
	Clock Clock
	// Logger for everything the host does.
	Logger zerolog.Logger
	// ServerOptions are extra gRPC server options (credentials, limits).
	ServerOptions []grpc.ServerOption
	// DialOptions are used to reach other hosts; insecure if empty.
	DialOptions []grpc.DialOption
	// AuthorizeRaftPeer, if set, decides whether a stream may carry Raft
	// traffic of another host (replication.GRPCConfig.AuthorizePeer).
	AuthorizeRaftPeer func(ctx context.Context, host uint64, addr string) error
	// Recovery tunes the recovery coordinator for in-doubt tids.
	Recovery RecoveryConfig
	// WrapTransport, if set, wraps the Raft transport (tests: fault injection).
	WrapTransport func(host uint64, t replication.Transport) replication.Transport
}

// Validate reports every problem with the configuration.
// staticPlacement reports whether the configured placement stays the
// cluster's for good: no directory (DirectoryPoll < 0, or memnodes too
// small to hold one), so no reconciler and no online changes.
func (c *HostConfig) staticPlacement() bool {
	return c.DirectoryPoll < 0 || c.Memnode.Size < client.DirectoryAddr+client.DirectoryRegion
}

func (c *HostConfig) Validate() error {
	var errs []error
	if c.ID == 0 {
		errs = append(errs, errors.New("host id must be > 0"))
	}
	if c.Listen == "" && c.Listener == nil {
		errs = append(errs, errors.New("listen address is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data directory is required"))
	}
	if _, ok := c.Hosts[c.ID]; !ok && c.ID != 0 {
		errs = append(errs, fmt.Errorf("host %d is not in the host list", c.ID))
	}
	seen := map[uint64]bool{}
	for _, m := range c.Memnodes {
		if seen[m.ID] {
			errs = append(errs, fmt.Errorf("memnode %d listed twice", m.ID))
		}
		seen[m.ID] = true
		if len(m.Replicas) == 0 {
			errs = append(errs, fmt.Errorf("memnode %d has no replicas", m.ID))
		}
		for _, r := range m.Replicas {
			if _, ok := c.Hosts[r]; !ok {
				errs = append(errs, fmt.Errorf("memnode %d: replica host %d is not in the host list", m.ID, r))
			}
		}
	}
	if err := c.Memnode.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Host is a running tutti host: a gRPC server carrying the memnode service
// and the Raft transport, a replication host with one Raft group per local
// memnode replica, and the memnode state machines.
type Host struct {
	cfg       HostConfig
	lis       net.Listener
	grpc      *grpc.Server
	transport *replication.GRPCTransport
	rep       *replication.Host
	server    *Server
	health    *health.Server
	serveDone chan error
	recovery  *recoverer // nil if disabled
	log       zerolog.Logger
	watch     *watchHub // watch subscribers (watch.go)

	// The directory watcher (reconcile.go); dir is nil if it is off.
	dir     *dirIO
	recStop context.CancelFunc
	recDone chan struct{}
	peers   map[uint64]string // transport peers set so far (reconciler only)
	// badDirLogged: when the reconciler last logged a corrupt directory
	// (reconciler only).
	badDirLogged time.Time
	// idTakenLogged: when the reconciler last logged that another running
	// host has this host's id (reconciler only).
	idTakenLogged time.Time
	// listed: a directory this process read listed this host; one that no
	// longer does means an operator removed it (client.Directory.
	// RemoveHost), and the reconciler must not register it again.
	// removedLogged: when it last logged that (reconciler only).
	listed        bool
	removedLogged time.Time
	// booting: this host started with an empty log engine and a
	// configured placement, and has not decided yet whether that is the
	// cluster's first boot; bootPending: the configured replicas it then
	// bootstraps (firstBootProbe; reconciler only).
	booting     bool
	bootPending []bootStart
	// bootNonce: while booting, the random number this data directory
	// holds since its log engine was found empty (bootNonceFile).
	bootNonce uint64
	// bootWaitLogged: when firstBootProbe last logged whom it waits for.
	bootWaitLogged time.Time
	// suspect: this host's log engine was empty in a cluster that already
	// ran (its data directory was lost, or it joined empty): a replica it
	// holds no trace of may be one it had and forgot, so it starts one only
	// as a new member of the group (doc.go, "Lost state"). Set before the
	// reconciler starts, or by firstBootProbe; read by the reconciler.
	suspect bool
	// lostLogged: when the reconciler last logged each lost replica.
	lostLogged map[uint64]time.Time

	closeOnce sync.Once
	closeErr  error
}

// StartHost binds the listener, starts or recovers every local memnode
// replica, and serves until Close.
func StartHost(cfg HostConfig) (*Host, error) {
	cfg.Memnode = cfg.Memnode.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tutti host: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = WallClock
	}
	log := cfg.Logger.With().Uint64("host", cfg.ID).Logger()

	lis := cfg.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("tutti host %d: listen: %w", cfg.ID, err)
		}
	}
	dial := cfg.DialOptions
	if len(dial) == 0 {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	var started atomic.Pointer[Host]
	tr, err := replication.NewGRPCTransport(replication.GRPCConfig{ID: cfg.ID, Logger: log, DialOptions: dial,
		AuthorizePeer: cfg.AuthorizeRaftPeer,
		// Raft from a host this one does not know yet (added since its
		// last directory read): read the directory now, not at the
		// next poll.
		UnknownPeer: func(uint64) {
			if h := started.Load(); h != nil {
				h.Reconcile()
			}
		}})
	if err != nil {
		lis.Close()
		return nil, err
	}
	for id, addr := range cfg.Hosts {
		if id != cfg.ID {
			tr.SetPeer(id, addr)
		}
	}
	opts := append([]grpc.ServerOption{
		experimental.BufferPool(bufpool.Pool),
		grpc.ForceServerCodecV2(bufpool.Codec),
		grpc.MaxRecvMsgSize(64 << 20),
		grpc.MaxSendMsgSize(64 << 20),
		grpc.InitialWindowSize(client.WindowSize), grpc.InitialConnWindowSize(client.ConnWindowSize),
		// Clients ping every client.KeepaliveTime to find hosts that stopped
		// answering; accept that, and find dead clients the same way.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: client.KeepaliveTime / 2, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: client.KeepaliveTime, Timeout: client.KeepaliveTimeout}),
	}, cfg.ServerOptions...)
	gs := grpc.NewServer(opts...)
	tr.Register(gs)

	rcfg := cfg.Replication
	def := replication.DefaultConfig()
	if rcfg.TickInterval == 0 {
		rcfg.TickInterval = def.TickInterval
	}
	if rcfg.ElectionTicks == 0 {
		rcfg.ElectionTicks = def.ElectionTicks
	}
	if rcfg.HeartbeatTicks == 0 {
		rcfg.HeartbeatTicks = def.HeartbeatTicks
	}
	if rcfg.SnapshotEntries == 0 {
		rcfg.SnapshotEntries = def.SnapshotEntries
	}
	if rcfg.MaxProposalBytes == 0 {
		rcfg.MaxProposalBytes = 2 * DefaultMaxRequestBytes
	}
	rcfg.ID = cfg.ID
	rcfg.DataDir = cfg.DataDir
	rcfg.Transport = tr
	if cfg.WrapTransport != nil {
		rcfg.Transport = cfg.WrapTransport(cfg.ID, tr)
	}
	rcfg.Logger = log
	rh, err := replication.NewHost(rcfg)
	if err != nil {
		gs.Stop()
		tr.Close()
		lis.Close()
		return nil, fmt.Errorf("tutti host %d: %w", cfg.ID, err)
	}
	h := &Host{cfg: cfg, lis: lis, grpc: gs, transport: tr, rep: rh, serveDone: make(chan error, 1), log: log,
		peers: map[uint64]string{}, watch: newWatchHub(), lostLogged: map[uint64]time.Time{}}
	for id, addr := range cfg.Hosts {
		h.peers[id] = addr
	}
	specs := append([]MemnodeSpec(nil), cfg.Memnodes...)
	sort.Slice(specs, func(i, j int) bool { return specs[i].ID < specs[j].ID })
	// First boot (an empty log engine): bootstrap the configured replicas.
	// Later boots recover the groups the engine holds: since the first
	// boot, the directory decides the placement, not the configuration.
	// A host whose every replica was moved away holds no group but their
	// tombstones: it is not new, and bootstrapping the configured placement
	// again would create second, empty groups of those memnodes (memnode 0
	// among them, which it would then fill with a fresh directory).
	stored, err := rh.StoredGroups()
	var removed []uint64
	if err == nil {
		removed, err = rh.RemovedGroups()
	}
	if err != nil {
		rh.Close()
		gs.Stop()
		lis.Close()
		return nil, fmt.Errorf("tutti host %d: %w", cfg.ID, err)
	}
	var starts []bootStart
	empty := len(stored) == 0 && len(removed) == 0
	if empty {
		for _, m := range specs {
			if slices.Contains(m.Replicas, cfg.ID) {
				starts = append(starts, bootStart{m.ID, m.Replicas})
			}
		}
	} else {
		for _, g := range stored {
			starts = append(starts, bootStart{id: g})
		}
		if cfg.staticPlacement() {
			// Without a directory nothing but this boot starts a
			// configured replica: one a crash kept the first boot
			// from starting is bootstrapped now, with the same
			// configured peers its first start would have had.
			for _, m := range specs {
				if slices.Contains(m.Replicas, cfg.ID) && !slices.Contains(stored, m.ID) && !slices.Contains(removed, m.ID) {
					starts = append(starts, bootStart{m.ID, m.Replicas})
				}
			}
		}
	}
	// An empty log engine is a first boot only if the cluster does not
	// run yet: a host that lost its data directory must not bootstrap its
	// configured replicas afresh as the voter it was (doc.go, "Lost
	// state"). With a directory the reconciler asks the other hosts first
	// (firstBootProbe); an empty engine with nothing to bootstrap (--join)
	// is suspect from the start, and so is one that was found empty
	// before (the marker file).
	var firstBoot, suspect bool
	var nonce uint64
	var bootPeers []*tuttipb.BootNonce
	if !cfg.staticPlacement() {
		marked, err := lostStateMarked(cfg.DataDir)
		if err == nil {
			bootPeers, err = readFirstBootPeers(cfg.DataDir)
		}
		if err == nil && empty && len(specs) > 0 && !marked {
			nonce, err = bootNonce(cfg.DataDir)
		} else if err == nil && !empty {
			// A first boot that crashed between bootstrapping and
			// removing its nonce: the nonce belongs to an empty engine.
			err = removeBootNonce(cfg.DataDir)
		}
		if err != nil {
			rh.Close()
			gs.Stop()
			lis.Close()
			return nil, fmt.Errorf("tutti host %d: %w", cfg.ID, err)
		}
		switch {
		case empty && len(specs) > 0 && !marked:
			// A first boot, or a host that lost its data directory:
			// the reconciler tells them apart (by the boot nonce). A
			// host with no configured replica (a spare) asks too: it
			// must know whether it may have had replicas since.
			firstBoot = true
			h.booting, h.bootPending, starts = true, starts, nil
		case empty && !marked: // --join: the cluster runs
			if err := markLostState(cfg.DataDir); err != nil {
				rh.Close()
				gs.Stop()
				lis.Close()
				return nil, fmt.Errorf("tutti host %d: %w", cfg.ID, err)
			}
			suspect = true
		default:
			suspect = marked
		}
	}
	h.suspect = suspect
	local := map[uint64]bool{}
	for _, st := range starts {
		if fn := startGroupHook; fn != nil {
			if err := fn(cfg.ID, st.id); err != nil {
				h.Close()
				return nil, fmt.Errorf("tutti host %d: memnode %d: %w", cfg.ID, st.id, err)
			}
		}
		mn, err := memnode.New(cfg.Memnode)
		if err != nil {
			h.Close()
			return nil, err
		}
		if err := rh.StartGroup(st.id, st.peers, &machine{m: mn, w: h.watch.target(st.id)}); err != nil {
			h.Close()
			return nil, fmt.Errorf("tutti host %d: memnode %d: %w", cfg.ID, st.id, err)
		}
		local[st.id] = true
	}
	h.server = newServer(cfg.ID, cfg.Hosts, specs, cfg.Memnode, cfg.Clock, log, rh)
	h.server.watch = h.watch
	h.bootNonce = nonce
	h.server.bootNonce.Store(nonce)
	h.server.bootPeers.Store(&bootPeers)
	h.server.firstBoot.Store(firstBoot)
	h.server.updateLayout(func(l *layout) { l.local = local })
	tuttipb.RegisterMemnodeServer(gs, h.server)
	h.health = health.NewServer()
	healthpb.RegisterHealthServer(gs, h.health)
	switch {
	case cfg.DirectoryPoll < 0:
	case cfg.staticPlacement():
		log.Warn().Uint64("memnode_size", cfg.Memnode.Size).
			Msg("memnodes smaller than 4 GiB cannot hold the directory; the placement stays static")
	default:
		h.startReconciler() // before serving: the Cluster RPC uses it
	}
	go func() { h.serveDone <- gs.Serve(lis) }()
	if !cfg.Recovery.Disabled {
		h.recovery = newRecoverer(h, log)
		h.recovery.start()
	}
	started.Store(h) // its reconciler, if any, runs: UnknownPeer may kick it
	log.Info().Str("addr", lis.Addr().String()).Int("memnodes", len(specs)).Msg("host started")
	return h, nil
}

// Addr is the address the host listens on.
func (h *Host) Addr() string { return h.lis.Addr().String() }

// ID is the host's id.
func (h *Host) ID() uint64 { return h.cfg.ID }

// Replication exposes the Raft host (for status and tests).
func (h *Host) Replication() *replication.Host { return h.rep }

// Close stops serving, then stops the Raft groups and the log engine.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		if h.recovery != nil {
			h.recovery.stop()
		}
		h.stopReconciler()
		h.watch.close() // watch streams would hold GracefulStop up
		if h.health != nil {
			h.health.Shutdown()
		}
		// So would the peers' Raft streams, which never end by
		// themselves: closing the transport first ends them (Raft
		// tolerates the messages lost) and stops sending to peers, which
		// would otherwise see this host vanish and warn while their own
		// hosts close.
		tErr := h.transport.Close()
		stopped := make(chan struct{})
		go func() { h.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			h.grpc.Stop()
			<-stopped
		}
		var errs []error
		if h.rep != nil {
			errs = append(errs, h.rep.Close())
		}
		errs = append(errs, tErr)
		h.closeErr = errors.Join(errs...)
	})
	return h.closeErr
}
