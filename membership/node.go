package membership

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
)

// Errors of a Node. Test with errors.Is.
var (
	// ErrJoin: no seed accepted this process into gossip (unreachable, or
	// a gossip key mismatch: the seeds' logs say which).
	ErrJoin = errors.New("membership: could not join any seed")
	// ErrClosed: the node was closed or left.
	ErrClosed = errors.New("membership: node closed")
	// ErrSuperseded: a newer incarnation of this process id registered;
	// this node stopped.
	ErrSuperseded = errors.New("membership: superseded by a newer incarnation")
)

// opTimeout bounds each table minitransaction the driver runs.
const opTimeout = 5 * time.Second

// maxAttempts bounds compare-failure retries within one driver step.
const maxAttempts = 16

// Node is this process's membership agent: a memberlist node plus the
// driver that keeps the process table true. Safe for concurrent use.
type Node struct {
	cfg    Config
	log    zerolog.Logger
	ml     *memberlist.Memberlist
	del    *gossipDelegate
	gossip string

	// tableWatch notifies writes of the table's header when the cluster
	// serves watch streams (nil otherwise): the driver then polls only as
	// a backup (tableBackupPoll).
	tableWatch *client.Watch
	polls      atomic.Int64 // table polls (refresh), for tests

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	leave  chan chan error
	done   chan struct{}
	paused atomic.Bool // tests only: the driver does nothing (a long pause)

	closeOnce sync.Once
	closeErr  error

	// gossipMu orders memberlist's Leave and Shutdown, which Leave, Close
	// and the driver's stops run from different goroutines: memberlist
	// panics on a Leave after Shutdown. gossipDown: Shutdown ran.
	gossipMu   sync.Mutex
	gossipDown bool

	// Driver-owned (only the driver goroutine, or Start before it runs).
	w          *Watcher
	rowSeen    map[string]seenRow
	evictedInc uint64 // incarnation for which Evicted was emitted
	unsettled  *Plan  // a rejoin whose outcome could not be settled

	mu struct {
		sync.Mutex
		table      Table
		self       Row // Incarnation 0 until registered
		epoch      time.Time
		leaving    bool
		superseded bool
		// clientGone: the client under the node was closed (stopClientGone).
		clientGone bool
		subs       map[*feed]struct{}
		closed     bool
	}
}

type seenRow struct {
	inc uint64
	at  time.Time
}

// Start joins gossip through cfg.Seeds, registers this process in the table
// under a fresh incarnation (the table's maximum + 1) and starts the driver.
// It returns ErrJoin if Seeds are given and none accepts this process.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("membership: config: %w", err)
	}
	log := cfg.Logger.With().Str("component", "membership").Str("process", cfg.ID).Logger()
	n := &Node{cfg: cfg, log: log, leave: make(chan chan error), done: make(chan struct{}), rowSeen: map[string]seenRow{}}
	n.mu.subs = map[*feed]struct{}{}
	var nonce [6]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("membership: gossip name nonce: %w", err)
	}
	n.del = &gossipDelegate{self: gossipName(cfg.ID, hex.EncodeToString(nonce[:])), now: cfg.Now, poke: make(chan struct{}, 1)}
	n.del.mu.lives = map[string]life{}

	// Read the table first: the gossip metadata carries a tentative
	// incarnation (max + 1), marked so (Meta.Tentative) until the
	// registration commits: if this life dies first, the next life of the
	// id may register the same incarnation, and this life's death must not
	// count against that one's row (Decide).
	w, err := NewWatcher(ctx, cfg.Client, cfg.Table)
	if err != nil {
		return nil, fmt.Errorf("membership: reading the process table: %w", err)
	}
	n.w = w
	started := false // else the watch is closed on return
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	tw, err := cfg.Client.Watch(wctx, cfg.Table.Memnode, client.Range{Addr: cfg.Table.Base, Len: headerSize})
	wcancel()
	if err != nil {
		log.Debug().Err(err).Msg("no watch stream: polling the process table")
	} else {
		n.tableWatch = tw
		defer func() {
			if !started {
				tw.Close()
			}
		}()
	}
	t := w.Table()
	n.mu.table = t
	for _, r := range t.Rows {
		n.seen(r)
	}

	mc, err := memberlistConfig(&cfg, n.del, newStdLogger(cfg.Logger, cfg.ID))
	if err != nil {
		return nil, err
	}
	if cfg.wrapTransport != nil {
		host, port, _ := splitHostPort(cfg.Bind)
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: port, Logger: mc.Logger})
		if err != nil {
			return nil, fmt.Errorf("membership: gossip transport: %w", err)
		}
		mc.Transport = cfg.wrapTransport(nt)
	}
	n.del.setMeta(Meta{ID: cfg.ID, Incarnation: t.MaxIncarnation + 1, GRPCAddr: cfg.GRPCAddr, Tentative: true})
	ml, err := memberlist.Create(mc)
	if err != nil {
		if mc.Transport != nil {
			_ = mc.Transport.Shutdown()
		}
		return nil, fmt.Errorf("membership: starting gossip on %s: %w", cfg.Bind, err)
	}
	n.ml = ml
	n.gossip = ml.LocalNode().Address()
	self := Row{ID: cfg.ID, GRPCAddr: cfg.GRPCAddr, GossipAddr: n.gossip}
	n.mu.self = self
	n.del.setMeta(Meta{ID: cfg.ID, Incarnation: t.MaxIncarnation + 1, GRPCAddr: cfg.GRPCAddr, GossipAddr: n.gossip, Tentative: true})

	if len(cfg.Seeds) > 0 {
		if k, err := joinSeeds(ctx, ml, cfg.Seeds, cfg.Timing.JoinTimeout); k == 0 {
			_ = ml.Shutdown()
			hint := ""
			if mc.Keyring != nil {
				hint = " (check that every process uses the same gossip key)"
			} else {
				hint = " (if the cluster encrypts gossip, set the key)"
			}
			log.Error().Err(err).Strs("seeds", cfg.Seeds).Msg("no seed accepted this process into gossip" + hint)
			// %w: a caller can tell its ctx ending (errors.Is) from a refusal.
			return nil, fmt.Errorf("%w %v%s: %w", ErrJoin, cfg.Seeds, hint, err)
		}
	}

	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.register(ctx); err != nil {
		n.cancel()
		_ = ml.Shutdown()
		return nil, err
	}
	started = true
	go n.run()
	return n, nil
}

// joinSeeds joins gossip through every seed at once. memberlist's Join
// tries them one after another, each that does not answer holding it for
// its TCPTimeout (a dial, then a push-pull with that deadline): silent
// seeds listed before a live one delayed Start by a second each, and with
// a bound on the whole join, enough of them made it fail every time. It
// returns when every attempt ended, or when ctx ends or timeout passes;
// attempts still running then end in the background within their
// TCPTimeout and count for nothing. It returns how many seeds answered and
// the errors of those that did not (and why it stopped waiting).
func joinSeeds(ctx context.Context, ml *memberlist.Memberlist, seeds []string, timeout time.Duration) (int, error) {
	type result struct {
		k   int
		err error
	}
	results := make(chan result, len(seeds)) // never blocks a late attempt
	for _, s := range seeds {
		go func() {
			k, err := ml.Join([]string{s})
			results <- result{k, err}
		}()
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	joined := 0
	var errs []error
	for i := range seeds {
		var stop error
		select {
		case r := <-results:
			joined += r.k
			if r.err != nil {
				errs = append(errs, r.err)
			}
			continue
		case <-ctx.Done():
			stop = ctx.Err()
		case <-timer.C:
			stop = fmt.Errorf("JoinTimeout (%v) passed", timeout)
		}
		if joined > 0 {
			return joined, nil // the others may still answer: gossip spreads anyway
		}
		errs = append(errs, fmt.Errorf("%d of %d seeds did not answer: %w", len(seeds)-i, len(seeds), stop))
		break
	}
	return joined, errors.Join(errs...)
}

// register runs the registration plan until it commits.
func (n *Node) register(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		if err := n.refresh(ctx); err != nil {
			return fmt.Errorf("membership: registering: %w", err)
		}
		d := Decide(n.input(n.cfg.Now()))
		if d.Action != ActRegister {
			return fmt.Errorf("membership: registering: unexpected decision %v", d.Action)
		}
		if d.Plan.Base.cfg.MaxRows == 0 {
			return fmt.Errorf("membership: registering %s: %w", n.cfg.ID, ErrTableFull)
		}
		ok, err := n.execute(ctx, d.Plan)
		if err != nil {
			return fmt.Errorf("membership: registering: %w", err)
		}
		if ok {
			n.registered(d.Plan)
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("membership: registering: %w", err)
		}
	}
}

// registered installs a committed (re)registration: new incarnation, new
// epoch, new gossip metadata.
func (n *Node) registered(p Plan) {
	n.mu.Lock()
	n.mu.self.Incarnation = p.New.Incarnation
	n.mu.epoch = n.cfg.Now()
	self := n.mu.self
	n.mu.Unlock()
	n.del.setMeta(Meta{ID: self.ID, Incarnation: self.Incarnation, GRPCAddr: self.GRPCAddr, GossipAddr: self.GossipAddr})
	if err := n.ml.UpdateNode(n.cfg.Timing.LeaveTimeout); err != nil {
		n.log.Debug().Err(err).Msg("gossip metadata update not yet acknowledged")
	}
	n.log.Info().Uint64("incarnation", self.Incarnation).Uint64("version", p.Version()).Msg("registered in the process table")
	if err := n.refresh(n.ctxOr()); err != nil && n.ctxOr().Err() == nil {
		n.log.Warn().Err(err).Msg("reading the process table")
	}
}

func (n *Node) ctxOr() context.Context {
	if n.ctx != nil {
		return n.ctx
	}
	return context.Background()
}

// ID returns the process id.
func (n *Node) ID() string { return n.cfg.ID }

// Incarnation returns this process's current incarnation.
func (n *Node) Incarnation() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.self.Incarnation
}

// GossipAddr returns the gossip address other processes use as a seed (the
// real port when Bind asked for port 0).
func (n *Node) GossipAddr() string { return n.gossip }

// Join contacts more gossip seeds after Start and returns how many answered.
// A process that had to start a new gossip cluster because none of its
// peers was up yet (the first of a symmetric set of servers) calls it until
// one answers, so the processes that started alone end up in one gossip
// cluster instead of declaring each other absent.
func (n *Node) Join(seeds []string) (int, error) {
	if n.ctx.Err() != nil {
		return 0, ErrClosed
	}
	return n.ml.Join(seeds)
}

// GossipMembers returns how many processes this node's gossip currently
// shows alive, itself included (memberlist's view, not the table's): a
// process whose older life gossip has not declared dead yet counts once.
func (n *Node) GossipMembers() int { return 1 + n.del.aliveProcesses(n.cfg.ID) }

// Table reads the process table from the memnodes (linearizable).
func (n *Node) Table(ctx context.Context) (Table, error) { return n.readTable(ctx) }

// Known returns the table as this node last read it (no I/O).
func (n *Node) Known() Table {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.table.clone()
}

// Subscribe returns the table changes confirmed after this call, in version
// order, with local notices (Evicted, Superseded) in between. The channel
// never blocks the node (changes queue); it is closed by cancel or Close.
func (n *Node) Subscribe() (<-chan Change, func()) {
	f := newFeed()
	n.mu.Lock()
	if n.mu.closed {
		n.mu.Unlock()
		f.close()
		return f.ch, func() {}
	}
	n.mu.subs[f] = struct{}{}
	n.mu.Unlock()
	return f.ch, func() {
		n.mu.Lock()
		delete(n.mu.subs, f)
		n.mu.Unlock()
		f.close()
	}
}

func (n *Node) emit(cs ...Change) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.emitLocked(cs...)
}

func (n *Node) emitLocked(cs ...Change) {
	for f := range n.mu.subs {
		f.push(cs...)
	}
}

// Leave marks this process left in the table (one minitransaction), then
// leaves gossip and closes the node. Others see the departure at once.
func (n *Node) Leave(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case n.leave <- reply:
	case <-n.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	var err error
	select {
	case err = <-reply:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if n.cfg.beforeGossipLeave != nil {
		n.cfg.beforeGossipLeave()
	}
	// Gossip may be down already: the node stopped as superseded or for a
	// closed client, or a concurrent Close shut it.
	n.leaveGossip()
	return errors.Join(err, n.Close())
}

// leaveGossip broadcasts this process's leave, unless gossip was shut down.
func (n *Node) leaveGossip() {
	n.gossipMu.Lock()
	defer n.gossipMu.Unlock()
	if n.gossipDown {
		return
	}
	if err := n.ml.Leave(n.cfg.Timing.LeaveTimeout); err != nil {
		n.log.Debug().Err(err).Msg("gossip leave broadcast")
	}
}

// shutdownGossip stops memberlist (idempotent).
func (n *Node) shutdownGossip() error {
	n.gossipMu.Lock()
	defer n.gossipMu.Unlock()
	n.gossipDown = true
	return n.ml.Shutdown()
}

// Close stops the node without leaving: to the others it looks like a
// crash, and they declare it dead. Use Leave for a graceful exit.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		<-n.done
		if n.tableWatch != nil {
			n.tableWatch.Close()
		}
		n.closeErr = n.shutdownGossip()
		n.mu.Lock()
		n.mu.closed = true
		subs := n.mu.subs
		n.mu.subs = nil
		n.mu.Unlock()
		for f := range subs {
			f.close()
		}
	})
	return n.closeErr
}

// run is the driver: it reads the table on every tick and memberlist
// event, asks Decide, and executes the plan.
func (n *Node) run() {
	defer close(n.done)
	var watchC <-chan client.WatchEvent
	poll := n.cfg.Timing.PollInterval
	if n.tableWatch != nil {
		watchC = n.tableWatch.C()
		poll = tableBackupPoll * n.cfg.Timing.PollInterval
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := n.step()
		if next.IsZero() {
			timer.Reset(time.Hour)
		} else {
			timer.Reset(max(time.Millisecond, next.Sub(n.cfg.Now())))
		}
		n.mu.Lock()
		stop, leaveErr := n.mu.superseded || n.mu.clientGone, ErrSuperseded
		if n.mu.clientGone {
			leaveErr = client.ErrClosed
		}
		n.mu.Unlock()
		if stop {
			for {
				select {
				case <-n.ctx.Done():
					return
				case reply := <-n.leave:
					reply <- leaveErr
				}
			}
		}
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		case _, ok := <-watchC:
			if !ok {
				// The watch ended (its client closed, or it gave up):
				// poll as without one.
				watchC = nil
				tick.Reset(n.cfg.Timing.PollInterval)
			}
		case <-n.del.poke:
		case <-timer.C:
		case reply := <-n.leave:
			reply <- n.doLeave()
		}
	}
}

// tableBackupPoll: with a watch stream on the table's header the driver
// reads the header every tableBackupPoll × PollInterval (1 s by default)
// instead of every PollInterval: the watch notifies every change at once,
// and the poll only backs it up.
const tableBackupPoll = 4

// step refreshes the table and runs decisions until none is due; it
// returns when to decide again (zero: on the next tick or event).
func (n *Node) step() time.Time {
	if n.paused.Load() {
		return time.Time{}
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err := n.refresh(n.ctx); err != nil {
			if n.ctx.Err() == nil && errors.Is(err, client.ErrClosed) {
				n.stopClientGone(err)
			} else if n.ctx.Err() == nil {
				n.log.Warn().Err(err).Msg("reading the process table")
			}
			return time.Time{}
		}
		n.adoptUnsettled()
		now := n.cfg.Now()
		in := n.input(now)
		n.noticeEviction(in)
		d := Decide(in)
		switch d.Action {
		case ActNone:
			return d.Next
		case ActSuperseded:
			n.supersede()
			return time.Time{}
		}
		if d.Plan.Base.cfg.MaxRows == 0 { // no plan possible yet (table full)
			n.log.Warn().Stringer("action", d.Action).Err(ErrTableFull).Msg("cannot rejoin")
			return d.Next
		}
		ok, err := n.execute(n.ctx, d.Plan)
		if err != nil {
			if d.Action == ActRejoin {
				n.unsettled = &d.Plan // it may still commit: adoptUnsettled
			}
			if n.ctx.Err() == nil && errors.Is(err, client.ErrClosed) {
				n.stopClientGone(err)
			} else if n.ctx.Err() == nil {
				n.log.Warn().Err(err).Stringer("action", d.Action).Str("target", d.Plan.New.ID).Msg("table change failed")
			}
			return time.Time{}
		}
		if !ok {
			continue // someone else changed the table first: re-read, re-decide
		}
		ev := n.log.Info()
		if d.Action == ActMarkDead || d.Action == ActMarkLeft {
			ev = ev.Str("target", d.Plan.New.ID).Uint64("target_incarnation", d.Plan.New.Incarnation)
		}
		ev.Stringer("action", d.Action).Uint64("version", d.Plan.Version()).Msg("process table changed")
		if d.Action == ActRejoin {
			n.registered(d.Plan)
		}
	}
	return time.Time{}
}

// adoptUnsettled installs a rejoin whose outcome execute could not settle
// once the table shows it committed. Without it the process, still holding
// its old incarnation, would take its own new row for a newer copy of
// itself and stop (Superseded). Incarnations are unique, so a row of this
// id with the plan's incarnation and gossip address is the plan's; once the
// table's maximum incarnation reached the plan's without it, the plan did
// not commit, or its row was replaced since.
func (n *Node) adoptUnsettled() {
	p := n.unsettled
	if p == nil {
		return
	}
	n.mu.Lock()
	t := n.mu.table
	n.mu.Unlock()
	if r, ok := t.Lookup(p.New.ID); ok && r.Incarnation == p.New.Incarnation && r.GossipAddr == p.New.GossipAddr {
		n.unsettled = nil
		n.log.Info().Uint64("incarnation", r.Incarnation).Msg("a rejoin of unknown outcome committed")
		n.registered(*p)
		return
	}
	if t.MaxIncarnation >= p.New.Incarnation {
		n.unsettled = nil
	}
}

// noticeEviction emits Evicted once per incarnation found declared dead.
func (n *Node) noticeEviction(in Input) {
	if in.Leaving || in.Self.Incarnation == 0 || n.evictedInc == in.Self.Incarnation {
		return
	}
	r, ok := in.Table.Lookup(in.Self.ID)
	if ok && r.Incarnation == in.Self.Incarnation && r.State.Live() {
		return
	}
	if ok && r.Incarnation > in.Self.Incarnation {
		return // superseded, not evicted
	}
	n.evictedInc = in.Self.Incarnation
	n.log.Warn().Uint64("incarnation", in.Self.Incarnation).Uint64("version", in.Table.Version).
		Msg("this process was declared dead while alive; rejoining under a new incarnation")
	n.emit(Change{Version: in.Table.Version, Kind: Evicted, Row: r, Old: r})
}

func (n *Node) supersede() {
	n.mu.Lock()
	n.mu.superseded = true
	t, self := n.mu.table, n.mu.self
	n.mu.Unlock()
	r, _ := t.Lookup(self.ID)
	n.log.Error().Uint64("incarnation", self.Incarnation).Uint64("newer", r.Incarnation).
		Msg("a newer incarnation of this process id registered; stopping")
	_ = n.shutdownGossip()
	n.emit(Change{Version: t.Version, Kind: Superseded, Row: r})
}

// stopClientGone stops a node whose client the application closed under
// it: without a client it can neither read nor change the process table,
// and gossip alone would go on saying that the process is alive, so the
// others would never declare it dead and nothing it was a member of (gcs
// groups) would remove it. It says so once at error level, leaves gossip
// (the others see the departure at once and declare the process dead, as
// the table still says alive) and decides nothing more; Leave answers
// client.ErrClosed, Close ends it.
func (n *Node) stopClientGone(err error) {
	n.mu.Lock()
	n.mu.clientGone = true
	n.mu.Unlock()
	n.log.Error().Err(err).Msg("the client under this membership node was closed: it can no longer read or change the process table; leaving gossip so that the other processes declare this one dead")
	n.leaveGossip()
	_ = n.shutdownGossip()
}

func (n *Node) doLeave() error {
	n.mu.Lock()
	n.mu.leaving = true
	superseded := n.mu.superseded
	n.mu.Unlock()
	if superseded {
		return ErrSuperseded
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err := n.refresh(n.ctx); err != nil {
			return err
		}
		n.adoptUnsettled() // a committed rejoin is left, not left behind alive
		n.mu.Lock()
		t, self := n.mu.table, n.mu.self
		n.mu.Unlock()
		p, ok := planLeave(t, self, n.cfg.Now())
		if !ok {
			return nil // already declared dead: nothing to record
		}
		committed, err := n.execute(n.ctx, p)
		if err != nil {
			return fmt.Errorf("membership: marking %s left: %w", self.ID, err)
		}
		if committed {
			n.log.Info().Uint64("version", p.Version()).Msg("left the process table")
			return n.refresh(n.ctx)
		}
	}
	return fmt.Errorf("membership: marking left: the table kept changing (%d attempts)", maxAttempts)
}

func (n *Node) input(now time.Time) Input {
	n.mu.Lock()
	in := Input{Self: n.mu.self, Leaving: n.mu.leaving, Table: n.mu.table, Epoch: n.mu.epoch, Now: now, Timing: n.cfg.Timing}
	n.mu.Unlock()
	in.View = n.del.view()
	in.RowSeen = make(map[string]time.Time, len(n.rowSeen))
	for id, s := range n.rowSeen {
		in.RowSeen[id] = s.at
	}
	return in
}

// execute runs p; committed reports whether it applied. An unknown outcome
// is resolved by reading the log entry the plan would have written (resolve).
func (n *Node) execute(ctx context.Context, p Plan) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	do := func() (*client.Result, error) { return n.cfg.Client.Exec(ctx, p.Tx()) }
	var res *client.Result
	var err error
	if n.cfg.execFault != nil {
		res, err = n.cfg.execFault(p, do)
	} else {
		res, err = do()
	}
	if errors.Is(err, client.ErrUnknownOutcome) {
		return n.resolve(ctx, p, err)
	}
	if err != nil {
		return false, err
	}
	return res.Committed, nil
}

// The settling read is a logged step that fences the attempt (attempt is
// its error; client.Client.Settle, client.Tx.Fence): a plain read
// (ReadIndex) does not wait for an attempt the memnode's leader appended
// and not yet committed, so it called such an attempt not committed a
// moment before it committed (a rejoin then looked like a newer copy of
// this process, which stopped as superseded), and an unfenced logged read
// can still come before an attempt on its way to the leader. Settle
// refuses (client.ErrInvalid, nothing sent) an attempt that ran on another
// memnode than the table's, whose fence would settle nothing. It runs on a
// context of its own when ctx ended, often why the outcome is unknown,
// unless the node is closing: then it gives up without a read.
func (n *Node) resolve(ctx context.Context, p Plan, attempt error) (bool, error) {
	c := n.cfg.Table
	if ctx.Err() != nil && n.ctxOr().Err() == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(n.ctxOr(), opTimeout)
		defer cancel()
	}
	for {
		if err := ctx.Err(); err != nil {
			// The node is closing, or opTimeout passed: give up here
			// (Settle would read on a context of its own).
			return false, err
		}
		do := func() (*client.Result, error) {
			return n.cfg.Client.Settle(ctx, client.NewTx().
				Read(c.Memnode, c.Base, headerSize).
				Read(c.Memnode, c.entryAddr(p.Version()), entrySize), attempt)
		}
		var res *client.Result
		var err error
		if n.cfg.resolveFault != nil {
			res, err = n.cfg.resolveFault(do)
		} else {
			res, err = do()
		}
		if err != nil {
			// The settling step is logged, so its own outcome can be
			// unknown too (its leader lost its term): it writes nothing
			// and fencing the attempt again changes nothing, so it is
			// simply run again. Returning the error failed what the plan
			// was for (Start's registration, Leave) on a leader change
			// that the next step would have ridden out.
			if (errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrUnknownOutcome)) && ctx.Err() == nil {
				continue
			}
			return false, err
		}
		if n.cfg.afterResolveRead != nil {
			n.cfg.afterResolveRead()
		}
		h, err := decodeHeader(res.Reads[0], c)
		if err != nil {
			return false, err
		}
		if h.version < p.Version() {
			return false, nil
		}
		// The entry is overwritten only LogSize versions later; then the
		// row tells (its Since and By are this plan's).
		if v, _, _ := decodeEntry(res.Reads[1]); v == p.Version() {
			return bytes.Equal(res.Reads[1], encodeEntry(p.Version(), p.New)), nil
		}
		t, err := n.readTable(ctx)
		if err != nil {
			return false, err
		}
		r := t.slotRow(p.New.Slot)
		return bytes.Equal(encodeRow(r), encodeRow(p.New)), nil
	}
}

func (n *Node) readTable(ctx context.Context) (Table, error) {
	return ReadTable(ctx, n.cfg.Client, n.cfg.Table)
}

func (n *Node) seen(r Row) {
	if !r.State.Live() {
		delete(n.rowSeen, r.ID)
		return
	}
	if s, ok := n.rowSeen[r.ID]; !ok || s.inc != r.Incarnation {
		n.rowSeen[r.ID] = seenRow{r.Incarnation, n.cfg.Now()}
	}
}

// refresh brings the cached table up to date through the watcher and
// publishes the changes, under the lock that Subscribe takes, so a
// subscriber gets exactly the versions after its call.
func (n *Node) refresh(ctx context.Context) error {
	n.polls.Add(1)
	cs, err := n.w.Poll(ctx)
	if len(cs) == 0 {
		return err
	}
	t := n.w.Table()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mu.table = t
	for _, r := range t.Rows {
		n.seen(r)
	}
	n.emitLocked(cs...)
	return err
}
