package kvstore

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/tutti-gcs/tutti/gcs"
)

// ErrNoState: the replica joined a group whose other members offered no
// snapshot (the oldest member is not a kv replica, e.g. `tutti tail`), so
// it cannot know the state. It left again.
var ErrNoState = errors.New("kv: joined without state: the group's oldest member offers no snapshot")

// ErrStopped: the replica left, was evicted, or its apply failed.
var ErrStopped = errors.New("kv: replica stopped")

// Config configures a Replica.
type Config struct {
	// Workers apply commands with disjoint keys in parallel (default:
	// GOMAXPROCS). 1 applies sequentially.
	Workers int
	// MaxInFlight bounds delivered, unapplied commands (default 1024).
	MaxInFlight int

	// applyHook, tests only: called by every apply, on the worker.
	applyHook func()
}

// State is a consistent cut of a replica: the state after exactly the
// commands with Pos <= State.Pos.
type State struct {
	Group   string   `json:"group"`
	Member  string   `json:"member"`
	View    uint64   `json:"view"`
	Members []string `json:"members"`
	// Pos: the last applied position in the group's total order.
	Pos uint64 `json:"pos"`
	// Keys and Digest (hex SHA-256 of the sorted map) describe the state;
	// replicas at the same Pos have the same Digest.
	Keys   int    `json:"keys"`
	Digest string `json:"digest"`
	// RestoredAt is the Pos of the snapshot this replica started from
	// (0: it started the group, or the group was empty).
	RestoredAt uint64 `json:"restored_at"`
	// MaxParallel is the most commands this replica has seen in apply at
	// once.
	MaxParallel int64 `json:"max_parallel"`
}

// op is one scheduled unit: a delivered command, or a local probe (a
// read-only barrier that takes a consistent State).
type op struct {
	cmd   Command
	id    uint64
	mine  bool
	pos   uint64
	probe chan State
}

// Replica is one member of a kv group: it multicasts commands and applies
// every delivered command to its Store with a gcs.Parallel scheduler, the
// command's keys being its conflict keys.
type Replica struct {
	g     *gcs.Group
	group string
	store *Store
	par   *gcs.Parallel[*op]
	cfg   Config

	nextID     atomic.Uint64
	appliedPos atomic.Uint64 // max Pos applied; under a barrier, the cut
	restoredAt atomic.Uint64
	running    atomic.Int64
	maxPar     atomic.Int64
	done       chan struct{} // closed when the event loop ended

	mu struct {
		sync.Mutex
		waiters map[uint64]chan Result
		view    *gcs.View
		err     error
	}
}

// Join joins group on n as a kv replica: it restores the state from the
// oldest member (state transfer at the view that admits it) and then
// applies every command delivered from that view on.
func Join(ctx context.Context, n *gcs.Node, group string, cfg Config) (*Replica, error) {
	r := &Replica{group: group, store: NewStore(), cfg: cfg, done: make(chan struct{})}
	r.mu.waiters = map[uint64]chan Result{}
	par, err := gcs.NewParallelOf(gcs.ParallelConfig{Workers: cfg.Workers, MaxInFlight: cfg.MaxInFlight},
		func(o *op) []string { return o.cmd.ConflictKeys() }, r.apply)
	if err != nil {
		return nil, err
	}
	r.par = par
	restored := false
	g, err := n.Join(ctx, group, gcs.JoinOptions{
		Snapshot: r.snapshot,
		Restore: func(b []byte) error {
			restored = true
			return r.restore(b)
		},
	})
	if err != nil {
		par.Close()
		return nil, err
	}
	r.g = g
	// The first event is the view that admitted us. Others in it and no
	// state: the provider had no Snapshot.
	ev, ok := <-g.Events()
	v, isView := ev.(*gcs.View)
	if !ok || !isView || (!restored && len(v.Members) > 1) {
		go func() {
			for range g.Events() {
			}
		}()
		lerr := g.Leave(ctx)
		par.Close()
		if ok && isView {
			return nil, errors.Join(fmt.Errorf("%w (view %d: %v)", ErrNoState, v.ID, v.Members), lerr)
		}
		return nil, errors.Join(fmt.Errorf("%w: first event %T", ErrStopped, ev), lerr)
	}
	r.mu.view = v
	go r.loop()
	return r, nil
}

// Name is this replica's member name.
func (r *Replica) Name() string { return r.g.Name() }

// loop is the application's event loop: views are recorded, commands are
// handed to the scheduler in delivery order.
func (r *Replica) loop() {
	defer close(r.done)
	var stop error
	for ev := range r.g.Events() {
		switch ev := ev.(type) {
		case *gcs.View:
			r.mu.Lock()
			r.mu.view = ev
			r.mu.Unlock()
		case *gcs.Message:
			if stop != nil {
				continue // drain, so that Leave can finish
			}
			c, id, err := DecodeCommand(ev.Payload)
			if err != nil {
				c = Command{Op: opNoop} // every replica skips it alike
			}
			if err := r.par.Submit(&op{cmd: c, id: id, mine: ev.Sender == r.g.Name(), pos: ev.Pos}); err != nil {
				stop = err
				r.setErr(err)
			}
		case *gcs.Evicted:
			r.setErr(fmt.Errorf("%w: %w in view %d: %s", ErrStopped, gcs.ErrEvicted, ev.View, ev.Reason))
		}
	}
	if err := r.par.Close(); err != nil {
		r.setErr(err)
	}
	r.setErr(ErrStopped)
}

func (r *Replica) setErr(err error) {
	r.mu.Lock()
	if r.mu.err == nil {
		r.mu.err = err
	}
	ws := r.mu.waiters
	r.mu.waiters = map[uint64]chan Result{}
	r.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

// apply runs on the scheduler's workers.
func (r *Replica) apply(o *op) error {
	if o.probe != nil {
		o.probe <- r.cut()
		return nil
	}
	cur := r.running.Add(1)
	for m := r.maxPar.Load(); cur > m && !r.maxPar.CompareAndSwap(m, cur); m = r.maxPar.Load() {
	}
	if r.cfg.applyHook != nil {
		r.cfg.applyHook()
	}
	res := r.store.Apply(o.cmd)
	res.Pos = o.pos
	r.running.Add(-1)
	for p := r.appliedPos.Load(); o.pos > p && !r.appliedPos.CompareAndSwap(p, o.pos); p = r.appliedPos.Load() {
	}
	if o.mine {
		r.mu.Lock()
		w := r.mu.waiters[o.id]
		delete(r.mu.waiters, o.id)
		r.mu.Unlock()
		if w != nil {
			w <- res
		}
	}
	return nil
}

// cut describes the state; called when nothing else applies (a barrier,
// or a stopped scheduler).
func (r *Replica) cut() State {
	n, d := r.store.Digest()
	r.mu.Lock()
	v := r.mu.view
	r.mu.Unlock()
	return State{Group: r.group, Member: r.g.Name(), View: v.ID, Members: v.Members, Pos: r.appliedPos.Load(),
		Keys: n, Digest: hex.EncodeToString(d[:]), RestoredAt: r.restoredAt.Load(), MaxParallel: r.maxPar.Load()}
}

// snapshot is the provider's side of state transfer: called after the
// event loop received the admitting view, so every earlier command was
// submitted; Wait makes them applied.
func (r *Replica) snapshot() ([]byte, error) {
	if err := r.par.Wait(); err != nil {
		return nil, err
	}
	b := binary.AppendUvarint(nil, r.appliedPos.Load())
	return append(b, r.store.Snapshot()...), nil
}

func (r *Replica) restore(b []byte) error {
	pos, n := binary.Uvarint(b)
	if n <= 0 {
		return fmt.Errorf("%w: snapshot header", ErrBadCommand)
	}
	if err := r.store.Restore(b[n:]); err != nil {
		return err
	}
	r.appliedPos.Store(pos)
	r.restoredAt.Store(pos)
	return nil
}

// Do multicasts c and waits until this replica applied it: the result is
// the one every replica computed, and later reads here see it.
func (r *Replica) Do(ctx context.Context, c Command) (Result, error) {
	id := r.nextID.Add(1)
	b, err := EncodeCommand(c, id)
	if err != nil {
		return Result{}, err
	}
	w := make(chan Result, 1)
	r.mu.Lock()
	if err := r.mu.err; err != nil {
		r.mu.Unlock()
		return Result{}, err
	}
	r.mu.waiters[id] = w
	r.mu.Unlock()
	drop := func() {
		r.mu.Lock()
		delete(r.mu.waiters, id)
		r.mu.Unlock()
	}
	if err := r.g.Multicast(ctx, b); err != nil {
		drop()
		return Result{}, err
	}
	select {
	case res, ok := <-w:
		if !ok {
			return Result{}, r.Err()
		}
		return res, nil
	case <-ctx.Done():
		drop()
		return Result{}, ctx.Err()
	}
}

// Get reads k from this replica's state (commands this replica's Do
// returned for are visible).
func (r *Replica) Get(k string) ([]byte, bool) { return r.store.Get(k) }

// State returns a consistent cut: a local read-only barrier runs after
// every command delivered so far and before any later one.
func (r *Replica) State(ctx context.Context) (State, error) {
	ch := make(chan State, 1)
	if err := r.par.Submit(&op{probe: ch}); err != nil {
		// Stopped: once the event loop ended nothing applies any more.
		select {
		case <-r.done:
			return r.cut(), nil
		case <-ctx.Done():
			return State{}, errors.Join(err, ctx.Err())
		}
	}
	select {
	case s := <-ch:
		return s, nil
	case <-ctx.Done():
		return State{}, ctx.Err()
	}
}

// Done is closed when the replica stopped applying commands (evicted from
// the group, the group or its node closed, or after Leave); Err says why.
func (r *Replica) Done() <-chan struct{} { return r.done }

// Err returns why the replica stopped, or nil.
func (r *Replica) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.err
}

// Leave leaves the group and waits until the event loop and the scheduler
// stopped.
func (r *Replica) Leave(ctx context.Context) error {
	err := r.g.Leave(ctx)
	select {
	case <-r.done:
	case <-ctx.Done():
		return errors.Join(err, ctx.Err())
	}
	return err
}
