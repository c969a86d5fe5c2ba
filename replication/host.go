package replication

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// More errors (see api.go for the rest).
var (
	// ErrDropped: raft refused the proposal or configuration change without
	// appending it (leadership transfer in progress, too many uncommitted
	// bytes, or another configuration change pending). Nothing was proposed;
	// retrying is safe.
	ErrDropped = errors.New("replication: proposal dropped")
	// ErrGroupExists: StartGroup for a group this host already runs.
	ErrGroupExists = errors.New("replication: group already started")
)

// Raft settings that are not in Config.
const (
	maxSizePerMsg             = 1 << 20
	maxInflightMsgs           = 256
	maxCommittedSizePerReady  = 8 << 20
	minUncommittedEntriesSize = 64 << 20
	// maxTicksPerCycle bounds the ticks a worker replays after a long cycle;
	// a stalled worker slows logical time rather than firing elections.
	maxTicksPerCycle = 2
)

// Host runs replicas of many Raft groups in one process over one log engine
// and one transport. See the package documentation for the contract.
type Host struct {
	cfg         Config
	log         zerolog.Logger
	eng         *engine
	incarnation uint64 // random per Host value; tells our proposals from a previous run's
	workers     []*worker
	stop        chan struct{}
	wg          sync.WaitGroup
	stats       stats
	startWG     sync.WaitGroup // StartGroup calls doing I/O; Close waits for them

	mu struct {
		sync.RWMutex
		closed   bool
		groups   map[uint64]*group
		starting map[uint64]bool // StartGroup in progress
		next     int             // round-robin worker assignment
	}
	closeOnce sync.Once
	closeErr  error
}

// NewHost opens the log engine in cfg.DataDir, starts the workers and the
// ticker, and starts cfg.Transport with the Host as its Handler. From then on
// the Host owns the Transport and closes it in Close. Groups are started with
// StartGroup (StoredGroups lists those the engine holds from a previous run).
func NewHost(cfg Config) (*Host, error) { return newHost(cfg, nil) }

// newHost is NewHost with the log engine on fs (the OS's if nil).
func newHost(cfg Config, fs vfs.FS) (*Host, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With().Str("component", "replication").Uint64("host", cfg.ID).Logger()
	eng, err := openEngine(cfg.DataDir, fs, log)
	if err != nil {
		return nil, err
	}
	if cfg.exciseMaxDefer > 0 {
		eng.rec.setMaxDefer(cfg.exciseMaxDefer)
	}
	if cfg.segmentInlineMax != 0 {
		eng.seg.inlineMax = max(cfg.segmentInlineMax, -1)
	}
	if cfg.segmentTarget > 0 {
		eng.seg.target = cfg.segmentTarget
	}
	if cfg.segmentPressureBytes > 0 {
		eng.seg.pressureBytes = cfg.segmentPressureBytes
	}
	if cfg.segmentGCInterval > 0 {
		eng.seg.mu.Lock()
		eng.seg.interval = cfg.segmentGCInterval
		eng.seg.mu.Unlock()
	}
	// Snapshot files of groups removed just before a stop (see
	// removeUnregisteredSnapFiles).
	if err := eng.removeUnregisteredSnapFiles(); err != nil {
		log.Warn().Err(err).Msg("removing snapshot files of removed groups")
	}
	var b [8]byte
	_, _ = crand.Read(b[:])
	h := &Host{
		cfg:         cfg,
		log:         log,
		eng:         eng,
		incarnation: binary.LittleEndian.Uint64(b[:]),
		stop:        make(chan struct{}),
	}
	h.mu.groups = make(map[uint64]*group)
	h.mu.starting = make(map[uint64]bool)
	h.workers = make([]*worker, cfg.Workers)
	for i := range h.workers {
		h.workers[i] = newWorker(h)
	}
	if err := cfg.Transport.Start(h); err != nil {
		return nil, errors.Join(fmt.Errorf("replication: start transport: %w", err), eng.close())
	}
	for _, w := range h.workers {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			w.run(h.stop)
		}()
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.tickLoop()
	}()
	return h, nil
}

// withDefaults fills zero fields with DefaultConfig's values and validates,
// reporting every problem.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.TickInterval <= 0 {
		c.TickInterval = d.TickInterval
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = d.ElectionTicks
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = d.HeartbeatTicks
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = d.SnapshotEntries
	}
	if c.SnapshotBytes == 0 {
		c.SnapshotBytes = d.SnapshotBytes
	}
	if c.LogCacheBytes == 0 {
		c.LogCacheBytes = d.LogCacheBytes
	}
	if c.MaxProposalBytes <= 0 {
		c.MaxProposalBytes = d.MaxProposalBytes
	}
	var errs []error
	if c.ID == 0 {
		errs = append(errs, errors.New("ID must be > 0"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("DataDir is required"))
	}
	if c.Transport == nil {
		errs = append(errs, errors.New("Transport is required"))
	}
	if c.ElectionTicks <= c.HeartbeatTicks {
		errs = append(errs, fmt.Errorf("ElectionTicks (%d) must exceed HeartbeatTicks (%d)", c.ElectionTicks, c.HeartbeatTicks))
	}
	if c.MaxProposalBytes < 64 {
		errs = append(errs, fmt.Errorf("MaxProposalBytes (%d) must be at least 64", c.MaxProposalBytes))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("replication: invalid config: %w", errors.Join(errs...))
	}
	return c, nil
}

func (h *Host) tickLoop() {
	t := time.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			for _, w := range h.workers {
				w.tick()
			}
		}
	}
}

// StartGroup starts this host's replica of group with state machine sm.
//
// If the log engine holds state for the group (a previous run), the replica
// is recovered: the latest snapshot is restored into sm and raft re-delivers
// the committed entries after it; peers is ignored. Otherwise, if peers is
// non-empty, the group is bootstrapped with peers (host ids) as voters; every
// initial replica must be started with the same peers, and this host must be
// one of them. With peers empty the replica joins an existing group: it
// starts with no configuration and waits for the leader (after a
// ChangeReplicas that adds this host) to send it a snapshot.
func (h *Host) StartGroup(group uint64, peers []uint64, sm StateMachine) error {
	if sm == nil {
		return errors.New("replication: nil StateMachine")
	}
	// Reserve the id, then do the I/O without holding the lock.
	h.mu.Lock()
	if h.mu.closed {
		h.mu.Unlock()
		return ErrStopped
	}
	if _, ok := h.mu.groups[group]; ok || h.mu.starting[group] {
		h.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrGroupExists, group)
	}
	h.mu.starting[group] = true
	h.startWG.Add(1)
	defer h.startWG.Done()
	w := h.workers[h.mu.next%len(h.workers)]
	h.mu.next++
	h.mu.Unlock()

	g, err := h.openGroup(group, peers, sm, w)

	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.mu.starting, group)
	if err != nil {
		return err
	}
	if h.mu.closed {
		return ErrStopped
	}
	h.mu.groups[group] = g
	w.addGroup(g)
	return nil
}

// openGroup recovers or bootstraps the group's storage and builds its
// RawNode.
func (h *Host) openGroup(id uint64, peers []uint64, sm StateMachine, w *worker) (*group, error) {
	pg, found, err := h.eng.loadGroup(id)
	if err != nil {
		return nil, err
	}
	ms := raft.NewMemoryStorage()
	g := newGroup(h, id, sm, ms, w)
	var tomb *pb.HardState // a removed predecessor's term and vote
	if !found {
		if tomb, err = h.eng.loadTombstone(id); err != nil {
			return nil, err
		}
	}
	switch {
	case found:
		if pg.snap != nil && !raft.IsEmptySnap(pg.snap) {
			if err := ms.ApplySnapshot(withoutData(pg.snap)); err != nil {
				return nil, err
			}
			if err := g.restore(pg.snap); err != nil {
				return nil, err
			}
		}
		if pg.hs != nil {
			if err := ms.SetHardState(pg.hs); err != nil {
				return nil, err
			}
			g.term = pg.hs.GetTerm()
		}
		if err := ms.Append(pg.ents); err != nil {
			return nil, err
		}
		// The margin kept behind the snapshot counts toward compaction and
		// the cache by bytes; later entries are counted as they are
		// applied again.
		for _, e := range pg.ents {
			if e.GetIndex() <= g.applied {
				g.sizes = append(g.sizes, entrySize{e.GetIndex(), uint64(len(e.GetData()))})
				g.cached += uint64(len(e.GetData()))
			}
		}
		g.lastIndex, _ = ms.LastIndex()
		if n := len(pg.ents); n > 0 && pg.ents[n-1].GetIndex() > g.lastIndex {
			g.lastIndex = pg.ents[n-1].GetIndex()
		}
		h.log.Debug().Uint64("group", id).Uint64("applied", g.applied).Uint64("last", g.lastIndex).Msg("recovered group")
	case len(peers) > 0:
		if !slices.Contains(peers, h.cfg.ID) {
			return nil, fmt.Errorf("replication: bootstrap group %d: host %d is not among peers %v", id, h.cfg.ID, peers)
		}
		voters := slices.Clone(peers)
		slices.Sort(voters)
		voters = slices.Compact(voters)
		// Every initial replica bootstraps identically: a snapshot at index 1,
		// term 1 carrying the configuration and no data.
		snap := &pb.Snapshot{Metadata: &pb.SnapshotMetadata{
			Index:     new(uint64(1)),
			Term:      new(uint64(1)),
			ConfState: pb.EnsureConfState(&pb.ConfState{Voters: voters}),
		}}
		hs := &pb.HardState{Term: new(uint64(1)), Vote: new(uint64(0)), Commit: new(uint64(1))}
		if tomb != nil && tomb.GetTerm() > 1 {
			hs.Term, hs.Vote = new(tomb.GetTerm()), new(tomb.GetVote())
		}
		b := h.eng.newBatch()
		b.registerGroup(id, voters)
		if err := b.setSnapshot(id, snap, true, ""); err != nil {
			b.close()
			return nil, err
		}
		b.setHardState(id, hs)
		err := b.commit(!h.cfg.NoSync)
		b.close()
		if err != nil {
			return nil, err
		}
		if err := ms.ApplySnapshot(snap); err != nil {
			return nil, err
		}
		if err := ms.SetHardState(hs); err != nil {
			return nil, err
		}
		g.term = hs.GetTerm()
		g.applied, g.snapIndex, g.lastIndex = 1, 1, 1
		g.confState = snap.GetMetadata().GetConfState()
	default:
		// An empty replica waiting for the leader's snapshot; if this host
		// had a replica of the group before, it starts from that one's
		// term and vote (loadTombstone).
		b := h.eng.newBatch()
		b.registerGroup(id, nil)
		if tomb != nil {
			b.setHardState(id, tomb)
		}
		err := b.commit(!h.cfg.NoSync)
		b.close()
		if err != nil {
			return nil, err
		}
		if tomb != nil {
			if err := ms.SetHardState(tomb); err != nil {
				return nil, err
			}
			g.term = tomb.GetTerm()
		}
	}
	rc := &raft.Config{
		ID:                        h.cfg.ID,
		ElectionTick:              h.cfg.ElectionTicks,
		HeartbeatTick:             h.cfg.HeartbeatTicks,
		Storage:                   g.st,
		Applied:                   g.applied,
		MaxSizePerMsg:             maxSizePerMsg,
		MaxCommittedSizePerReady:  maxCommittedSizePerReady,
		MaxUncommittedEntriesSize: uint64(max(minUncommittedEntriesSize, 16*h.cfg.MaxProposalBytes)),
		MaxInflightMsgs:           maxInflightMsgs,
		CheckQuorum:               true,
		PreVote:                   true,
		DisableProposalForwarding: true,
		Logger:                    raftLogger{l: h.log.With().Uint64("group", id).Logger()},
	}
	g.st.syncFirst()
	if pg != nil {
		g.snapFile = pg.snapFile
	}
	// Files no batch names: a crash came between writing a snapshot file
	// and committing its name, or between that and removing the older one.
	if err := h.eng.removeSnapFiles(id, g.snapFile); err != nil {
		h.log.Warn().Err(err).Uint64("group", id).Msg("removing stale snapshot files")
	}
	rn, err := raft.NewRawNode(rc)
	if err != nil {
		return nil, err
	}
	g.rn = rn
	g.publishStatus(0)
	return g, nil
}

// StoredGroups lists the groups the log engine holds, including groups not
// started in this run (a restarted host calls StartGroup for each).
func (h *Host) StoredGroups() ([]uint64, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.mu.closed {
		return nil, ErrStopped
	}
	return h.eng.storedGroups()
}

// RemovedGroups lists the groups whose replica RemoveGroup removed from
// this host and that it does not hold again. A host whose engine holds no
// group is not new if it lists any: it must not bootstrap groups as at its
// first start (StartGroup with peers), which would create a second group of
// the same id.
func (h *Host) RemovedGroups() ([]uint64, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.mu.closed {
		return nil, ErrStopped
	}
	return h.eng.removedGroups()
}

// Groups lists the groups started on this host, ascending.
func (h *Host) Groups() []uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]uint64, 0, len(h.mu.groups))
	for id := range h.mu.groups {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func (h *Host) lookup(id uint64) (*group, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.mu.closed {
		return nil, ErrStopped
	}
	g := h.mu.groups[id]
	if g == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownGroup, id)
	}
	return g, nil
}

// Leader returns the host id this host believes leads group, 0 if unknown or
// if the group is not started here. Safe from any goroutine.
func (h *Host) Leader(group uint64) uint64 {
	h.mu.RLock()
	g := h.mu.groups[group]
	h.mu.RUnlock()
	if g == nil {
		return 0
	}
	return g.leader.Load()
}

// GroupStatus is a diagnostic view of one replica.
type GroupStatus struct {
	Group   uint64
	Leader  uint64 // believed leader, 0 if unknown
	Term    uint64
	Commit  uint64 // highest index known committed (persisted locally)
	Applied uint64 // highest index applied to the state machine
}

// Status reports the replica's leader, term, commit and applied index as of
// its last processed Ready.
func (h *Host) Status(group uint64) (GroupStatus, error) {
	g, err := h.lookup(group)
	if err != nil {
		return GroupStatus{}, err
	}
	return GroupStatus{
		Group:   group,
		Leader:  g.leader.Load(),
		Term:    g.stTerm.Load(),
		Commit:  g.stCommit.Load(),
		Applied: g.stApplied.Load(),
	}, nil
}

// framingOverhead bounds the bytes the batch framing adds to one command
// (the entry header plus a proposal id and a length).
const framingOverhead = 1 + 3*binary.MaxVarintLen64 + 8 + 2*binary.MaxVarintLen64

// ProposeAsync proposes cmd to group and calls done exactly once with
// StateMachine.Apply's result for it, or an error: *NotLeaderError (this
// host is not the leader; nothing was proposed; there is no forwarding:
// retry at the hinted leader), ErrUnknownGroup, ErrStopped, ErrTooLarge,
// ErrDropped, or ErrUnknownOutcome (it was handed to raft but leadership
// changed or the host closed before it applied).
//
// The host does not use cmd once done is called: the caller may then
// recycle it. done runs on a host goroutine, never on the caller's before
// ProposeAsync returns, and never while the host holds a lock. It must not block: it runs
// on the worker that drives the group (and its other groups). Hand the
// result to a channel or another goroutine.
func (h *Host) ProposeAsync(group uint64, cmd []byte, done func(result []byte, err error)) {
	if err := h.enqueueProposal(group, cmd, done); err != nil {
		go done(nil, err)
	}
}

// Propose proposes cmd and waits for its result (see ProposeAsync). If ctx
// ends first the error wraps both ctx.Err() and ErrUnknownOutcome.
func (h *Host) Propose(ctx context.Context, group uint64, cmd []byte) ([]byte, error) {
	ch := make(chan result, 1)
	if err := h.enqueueProposal(group, cmd, func(r []byte, err error) { ch <- result{r, err} }); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.val, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrUnknownOutcome, ctx.Err())
	}
}

type result struct {
	val []byte
	err error
}

func (h *Host) enqueueProposal(group uint64, cmd []byte, done func([]byte, error)) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	if len(cmd)+framingOverhead > h.cfg.MaxProposalBytes {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(cmd))
	}
	if l := g.leader.Load(); l != h.cfg.ID {
		return &NotLeaderError{Group: group, Leader: l}
	}
	return g.enqueue(func(in *inbox) { in.props = append(in.props, &proposal{cmd: cmd, done: done}) })
}

// ReadAsync runs query against group's state machine once it is
// linearizable to do so: the leader obtains a ReadIndex (one per batch of
// queued reads, confirmed by a quorum of heartbeats), waits until it has
// applied that index, and calls StateMachine.Query on the worker goroutine.
// A follower fails the read with *NotLeaderError. done follows the rules of
// ProposeAsync; the result it gets is Query's, passed to no one else, so
// the caller may recycle it.
func (h *Host) ReadAsync(group uint64, query []byte, done func(result []byte, err error)) {
	if err := h.enqueueRead(group, query, done); err != nil {
		go done(nil, err)
	}
}

// Read is the synchronous form of ReadAsync. If ctx ends first it returns
// ctx.Err().
func (h *Host) Read(ctx context.Context, group uint64, query []byte) ([]byte, error) {
	ch := make(chan result, 1)
	if err := h.enqueueRead(group, query, func(r []byte, err error) { ch <- result{r, err} }); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.val, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (h *Host) enqueueRead(group uint64, query []byte, done func([]byte, error)) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	if l := g.leader.Load(); l != h.cfg.ID {
		return &NotLeaderError{Group: group, Leader: l}
	}
	return g.enqueue(func(in *inbox) { in.reads = append(in.reads, &readRequest{query: query, done: done}) })
}

// ErrConfChangeInProgress: ChangeReplicas while another one of this host's
// is still running for the group.
var ErrConfChangeInProgress = errors.New("replication: configuration change in progress")

// ChangeReplicas changes the group's replica set with one ConfChangeV2
// (joint consensus when more than one voter changes, left automatically) and
// returns once the change is applied here and the configuration is no
// longer joint. Only the leader accepts it (*NotLeaderError otherwise). A
// host being added must run StartGroup(group, nil, sm) (before or after);
// it catches up from a snapshot. ErrDropped means raft refused it because
// another change was pending; retry.
func (h *Host) ChangeReplicas(ctx context.Context, group uint64, changes []*pb.ConfChangeSingle) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		return nil
	}
	if l := g.leader.Load(); l != h.cfg.ID {
		return &NotLeaderError{Group: group, Leader: l}
	}
	req := &confRequest{
		cc:   &pb.ConfChangeV2{Transition: pb.ConfChangeTransitionAuto.Enum(), Changes: changes},
		done: make(chan error, 1),
	}
	if err := g.enqueue(func(in *inbox) { in.confs = append(in.confs, req) }); err != nil {
		return err
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrUnknownOutcome, ctx.Err())
	}
}

// HandleMessages implements Handler: it queues the messages on their
// groups' workers. Messages for groups not started here are dropped.
func (h *Host) HandleMessages(msgs []GroupMessage) {
	h.mu.RLock()
	closed := h.mu.closed
	var last *group
	for _, m := range msgs {
		if closed {
			break
		}
		g := last
		if g == nil || g.id != m.Group {
			g = h.mu.groups[m.Group]
		}
		if g == nil {
			h.log.Debug().Uint64("group", m.Group).Str("type", m.Msg.GetType().String()).Uint64("from", m.Msg.GetFrom()).Msg("dropping message for unknown group")
			continue
		}
		last = g
		_ = g.enqueue(func(in *inbox) { in.msgs = append(in.msgs, m.Msg) })
	}
	h.mu.RUnlock()
}

// ReportUnreachable implements Handler.
func (h *Host) ReportUnreachable(group, to uint64) {
	if g, err := h.lookup(group); err == nil {
		_ = g.enqueue(func(in *inbox) { in.reports = append(in.reports, report{to: to, unreachable: true}) })
	}
}

// ReportSnapshot implements Handler.
func (h *Host) ReportSnapshot(group, to uint64, ok bool) {
	if g, err := h.lookup(group); err == nil {
		_ = g.enqueue(func(in *inbox) { in.reports = append(in.reports, report{to: to, snapOK: ok}) })
	}
}

// Close stops the workers, fails every pending proposal and read (those
// handed to raft with ErrUnknownOutcome, the others with ErrStopped), closes
// the transport and the log engine. It is idempotent; later calls return
// the first call's error.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.mu.closed = true
		groups := make([]*group, 0, len(h.mu.groups))
		for _, g := range h.mu.groups {
			groups = append(groups, g)
		}
		h.mu.Unlock()

		h.startWG.Wait()
		terr := h.cfg.Transport.Close()
		close(h.stop)
		h.wg.Wait()
		// The workers have exited: their state is ours now (once the
		// snapshot files they handed off are written: writeSnapshotAsync;
		// groups removed before waited in RemoveGroup).
		for _, g := range groups {
			g.snapWG.Wait()
			g.shutdown()
		}
		h.closeErr = errors.Join(terr, h.eng.close())
	})
	return h.closeErr
}

// Stats are cumulative counters of a Host.
type Stats struct {
	Proposals   uint64 // commands handed to raft
	Entries     uint64 // raft entries proposed (each carries a batch of commands)
	Cycles      uint64 // worker cycles that processed at least one Ready
	Readies     uint64 // Readies processed (summed over groups)
	Batches     uint64 // log engine batches committed
	Fsyncs      uint64 // of those, committed with fsync
	Applies     uint64 // StateMachine.Apply calls
	Applied     uint64 // commands applied
	Reads       uint64 // reads answered
	ReadIndexes uint64 // ReadIndex requests issued (each serves a batch of reads)
	Snapshots   uint64 // snapshots taken locally
	Restores    uint64 // snapshots restored (received or at recovery)
	// LogReads counts entries raft read back from the log engine because
	// they had left the in-memory cache (LogCacheBytes): followers that
	// lag by more than the cache.
	LogReads uint64
	// LeaderChanges counts, over this host's replicas, how often the
	// known leader changed to another (non-zero) one, elections at start
	// included. Growth under steady load means leadership churn.
	LeaderChanges uint64
	// LogExcises counts truncated log prefixes removed from the log
	// engine's tables by an excise (reclaim.go); LogExciseErrors those
	// that failed (their bytes go at a later compaction).
	LogExcises, LogExciseErrors uint64
	// LogSegments is the number of segment files holding log entries'
	// data now (segment.go); LogSegmentsRemoved counts those removed or
	// kept for reuse once every entry in them was truncated.
	LogSegments, LogSegmentsRemoved uint64
}

type stats struct {
	proposals, entries, cycles, readies, batches, fsyncs, applies, applied, reads, readIndexes, snapshots, restores atomic.Uint64
	leaderChanges, logReads                                                                                         atomic.Uint64
}

// Stats returns the host's counters.
func (h *Host) Stats() Stats {
	s := &h.stats
	return Stats{
		Proposals: s.proposals.Load(), Entries: s.entries.Load(), Cycles: s.cycles.Load(),
		Readies: s.readies.Load(), Batches: s.batches.Load(), Fsyncs: s.fsyncs.Load(),
		Applies: s.applies.Load(), Applied: s.applied.Load(), Reads: s.reads.Load(),
		ReadIndexes: s.readIndexes.Load(), Snapshots: s.snapshots.Load(), Restores: s.restores.Load(), LeaderChanges: s.leaderChanges.Load(),
		LogReads: s.logReads.Load(), LogExcises: h.eng.rec.excised.Load(), LogExciseErrors: h.eng.rec.failed.Load(),
		LogSegments: h.eng.seg.count(), LogSegmentsRemoved: h.eng.seg.removed.Load(),
	}
}
