package gcs

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
)

// Parallel delivery (P-SMR): a scheduler that applies totally ordered
// messages on several goroutines while keeping, for every conflict key, the
// order of the messages that carry that key equal to the total order.

var (
	// ErrParallelClosed is returned by Submit after Close. It wraps
	// ErrClosed.
	ErrParallelClosed = fmt.Errorf("%w: parallel scheduler", ErrClosed)
	// ErrApplyPanic is wrapped by the error that stops a Parallel whose apply
	// panicked (or called runtime.Goexit).
	ErrApplyPanic = errors.New("gcs: parallel apply panicked")
)

// ParallelConfig configures a Parallel scheduler. Zero fields take the
// defaults of DefaultParallelConfig.
type ParallelConfig struct {
	// Workers is the number of goroutines that run apply. Default:
	// runtime.GOMAXPROCS(0).
	Workers int
	// MaxInFlight bounds, in messages, how many submitted messages may not
	// yet be applied (waiting for a conflicting predecessor, ready, or
	// running). Submit blocks at the bound, which is the backpressure on the
	// delivery loop and bounds the scheduler's memory. A bound below Workers
	// leaves workers idle. Default: 1024.
	MaxInFlight int
}

// DefaultParallelConfig returns the defaults: one worker per usable CPU and
// 1024 messages in flight.
func DefaultParallelConfig() ParallelConfig {
	return ParallelConfig{Workers: runtime.GOMAXPROCS(0), MaxInFlight: 1024}
}

func (c *ParallelConfig) defaults() {
	d := DefaultParallelConfig()
	if c.Workers == 0 {
		c.Workers = d.Workers
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = d.MaxInFlight
	}
}

// Validate reports every problem with c (after defaults for zero fields).
func (c ParallelConfig) Validate() error {
	c.defaults()
	var errs []error
	if c.Workers < 1 {
		errs = append(errs, fmt.Errorf("Workers must be at least 1, got %d", c.Workers))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("MaxInFlight must be at least 1, got %d", c.MaxInFlight))
	}
	return errors.Join(errs...)
}

// ParallelStats is a snapshot of a Parallel scheduler's counters.
type ParallelStats struct {
	Submitted uint64 // messages accepted by Submit
	Applied   uint64 // messages whose apply returned nil
	InFlight  int    // submitted and not yet applied (≤ MaxInFlight)
	Ready     int    // in flight, no unapplied predecessor, not yet running
	Running   int    // in apply now (≤ Workers)
	Blocked   bool   // a Submit is waiting for room (backpressure)
}

// Parallel applies messages delivered in total order on several worker
// goroutines, serializing only messages that conflict.
//
// Each message has a conflict key set, given by the keys function. Two
// messages conflict when their key sets intersect, or when either set is
// empty: a message with no keys is a barrier, applied after every earlier
// message and before any later one. Parallel guarantees that whenever two
// messages conflict, the one submitted first has been applied (apply has
// returned, and its writes are visible) before apply starts on the other.
// Messages that do not conflict may be applied concurrently and in any
// order.
//
// # Why this is deterministic
//
// A replicated state machine stays deterministic under this scheduler if
//
//  1. keys is a deterministic function of the message alone (not of the
//     state, which other workers are changing, nor of time or the replica);
//  2. apply of a message reads and writes only the part of the state owned by
//     its keys, so that messages with disjoint key sets commute; operations
//     that touch everything (a snapshot, a global count, a reconfiguration)
//     are given no keys and so run as barriers.
//
// Every replica delivers the same total order and computes the same key sets,
// so it builds the same conflict order: a partial order that contains the
// total order's restriction to every pair of conflicting messages. Any
// execution that respects it is obtained from the sequential one by swapping
// adjacent non-conflicting messages, and by (2) each swap changes neither the
// final state nor any message's result. So every replica ends in the state,
// and returns the results, of applying the total order sequentially, however
// its workers happen to interleave.
//
// # Scheduling
//
// The scheduler keeps a lock table keyed by conflict key: for each key, the
// last submitted message with that key that has not been applied. A new
// message waits for the entry of each of its keys (and for the last barrier)
// and then becomes the entry itself; when its last predecessor is applied it
// becomes ready and a worker runs it. Waiting on the last message of a key is
// enough because that message in turn waited for the one before it. A barrier
// waits for every entry of the table and then empties it; later messages wait
// for the barrier. Submit costs O(len(keys)) (a barrier O(keys in the table));
// the completion of a message costs O(len(keys) + messages waiting on it).
// Bookkeeping takes one short mutex; apply and keys run outside it.
//
// # Threading
//
// Submit, Wait and Close are meant to be called by one goroutine, the
// delivery loop, in that order of life (they are safe to call concurrently,
// but Wait then waits for messages submitted during it). Err and Stats may be
// called from any goroutine. apply is called from up to Workers goroutines at
// once, never for two conflicting messages at once; keys is called by Submit
// in the caller's goroutine. The scheduler keeps the slice keys returns until
// the message is applied: keys must not modify it afterwards.
//
// # Failures
//
// If apply returns an error or panics, the scheduler stops: no further
// message starts (messages already running finish), and Err, Wait, Close and
// every later Submit return an error that wraps apply's error, or
// ErrApplyPanic with the panic value and stack. Which messages were applied
// before the stop depends on timing: the set is closed under the conflict
// order (a message was applied only if every conflicting predecessor was) but
// need not be a prefix of the total order. A replica whose apply failed has
// therefore left the deterministic path and must be rebuilt, for instance
// from a state transfer.
type Parallel[M any] struct {
	cfg      ParallelConfig
	keys     func(M) []string
	apply    func(M) error
	lowWater int // in flight at which a blocked Submit is woken

	wg    sync.WaitGroup
	work  sync.Cond // signalled when ready gains a message or on close/failure
	space sync.Cond // signalled when inFlight drops below MaxInFlight
	idle  sync.Cond // broadcast when Wait's condition may have become true

	mu struct {
		sync.Mutex
		// last maps a key to the last submitted, unapplied message with that
		// key. Every message in it is unapplied: completion removes the
		// message's own entries.
		last map[string]*parTask[M]
		// barrier is the last submitted barrier if it is unapplied, else nil.
		barrier *parTask[M]
		// ready holds messages whose predecessors are all applied, in the
		// order they became ready. Empty once err is set.
		ready     []*parTask[M]
		inFlight  int // submitted, not applied; ≤ cfg.MaxInFlight
		running   int // in apply; ≤ cfg.Workers
		blocked   int // Submit calls waiting for space
		submitted uint64
		applied   uint64
		err       error // first failure; once set, nothing new starts
		closed    bool
	}
}

// parTask is one submitted message. deps and succ are guarded by
// Parallel.mu.
type parTask[M any] struct {
	msg  M
	seq  uint64   // submission index, from 0
	keys []string // nil or empty: a barrier
	// deps counts the unapplied messages this one waits for; it is ready at 0.
	deps int
	// succ lists the messages waiting for this one, each once per edge.
	succ []*parTask[M]
}

// after makes t wait for p, unless p is nil, t itself, or already waited for.
// t is the newest message, so an existing edge p→t is p.succ's last.
func (t *parTask[M]) after(p *parTask[M]) {
	if p == nil || p == t {
		return
	}
	if n := len(p.succ); n > 0 && p.succ[n-1] == t {
		return
	}
	p.succ = append(p.succ, t)
	t.deps++
}

// NewParallelOf starts a scheduler with cfg.Workers goroutines that apply
// messages of type M. keys gives a message's conflict key set (nil or empty:
// a barrier); apply applies it, and a non-nil error stops the scheduler (see
// Parallel). Close must be called to stop the goroutines. Errors wrap
// ErrInvalid.
func NewParallelOf[M any](cfg ParallelConfig, keys func(M) []string, apply func(M) error) (*Parallel[M], error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: parallel config: %w", ErrInvalid, err)
	}
	if keys == nil || apply == nil {
		return nil, fmt.Errorf("%w: parallel: keys and apply are required", ErrInvalid)
	}
	cfg.defaults()
	p := &Parallel[M]{cfg: cfg, keys: keys, apply: apply,
		lowWater: cfg.MaxInFlight - max(1, cfg.MaxInFlight/4)}
	p.work.L = &p.mu
	p.space.L = &p.mu
	p.idle.L = &p.mu
	p.mu.last = make(map[string]*parTask[M])
	p.wg.Add(cfg.Workers)
	for range cfg.Workers {
		go p.worker()
	}
	return p, nil
}

// Submit hands m, the next message in total order, to the scheduler. It
// blocks while MaxInFlight messages are in flight. It returns
// ErrParallelClosed after Close, and the scheduler's error once apply has
// failed; m is not applied then.
func (p *Parallel[M]) Submit(m M) error {
	keys := p.keys(m)
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.mu.err != nil {
			return p.mu.err
		}
		if p.mu.closed {
			return ErrParallelClosed
		}
		if p.mu.inFlight < p.cfg.MaxInFlight {
			break
		}
		p.mu.blocked++
		p.space.Wait()
		p.mu.blocked--
	}
	t := &parTask[M]{msg: m, seq: p.mu.submitted, keys: keys}
	p.mu.submitted++
	p.mu.inFlight++
	t.after(p.mu.barrier)
	if len(keys) == 0 {
		for _, q := range p.mu.last {
			t.after(q)
		}
		clear(p.mu.last)
		p.mu.barrier = t
	} else {
		for _, k := range keys {
			t.after(p.mu.last[k])
			p.mu.last[k] = t
		}
	}
	if t.deps == 0 {
		p.mu.ready = append(p.mu.ready, t)
		p.work.Signal()
	}
	return nil
}

// Wait blocks until every message submitted so far has been applied, and
// returns nil; or, once apply has failed, until no apply is running, and
// returns the scheduler's error.
func (p *Parallel[M]) Wait() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.quiescentLocked() {
		p.idle.Wait()
	}
	return p.mu.err
}

// Close waits as Wait does, then stops the workers and returns when they have
// exited, with Wait's result. Later Submits return ErrParallelClosed (or the
// failure). Close may be called more than once.
func (p *Parallel[M]) Close() error {
	p.mu.Lock()
	for !p.quiescentLocked() {
		p.idle.Wait()
	}
	p.mu.closed = true
	p.work.Broadcast()
	p.space.Broadcast()
	err := p.mu.err
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// Err returns the error that stopped the scheduler, or nil.
func (p *Parallel[M]) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.err
}

// Stats returns a snapshot of the scheduler's counters.
func (p *Parallel[M]) Stats() ParallelStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ParallelStats{
		Submitted: p.mu.submitted,
		Applied:   p.mu.applied,
		InFlight:  p.mu.inFlight,
		Ready:     len(p.mu.ready),
		Running:   p.mu.running,
		Blocked:   p.mu.blocked > 0,
	}
}

// quiescentLocked reports whether nothing more will be applied without new
// submissions: everything is applied, or the scheduler failed and no apply is
// still running.
func (p *Parallel[M]) quiescentLocked() bool {
	return p.mu.inFlight == 0 || (p.mu.err != nil && p.mu.running == 0)
}

func (p *Parallel[M]) worker() {
	defer p.wg.Done()
	p.mu.Lock()
	for {
		t := p.nextLocked()
		if t == nil {
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		err := p.run(t)
		p.mu.Lock()
		p.finishLocked(t, err)
	}
}

// nextLocked takes the next ready message, waiting for one; it returns nil
// when the worker should exit: after Close, with nothing left that could
// become ready.
func (p *Parallel[M]) nextLocked() *parTask[M] {
	for len(p.mu.ready) == 0 {
		if p.mu.closed && (p.mu.inFlight == 0 || p.mu.err != nil) {
			return nil
		}
		p.work.Wait()
	}
	t := p.mu.ready[0]
	p.mu.ready[0] = nil
	p.mu.ready = p.mu.ready[1:]
	p.mu.running++
	if len(p.mu.ready) > 0 {
		// Pass the wakeup on: finishLocked makes several messages ready at
		// once without signalling.
		p.work.Signal()
	}
	return t
}

// run applies t, turning a panic or runtime.Goexit in apply into an error.
func (p *Parallel[M]) run(t *parTask[M]) (err error) {
	returned := false
	defer func() {
		if returned {
			return
		}
		r := recover()
		if r == nil {
			// runtime.Goexit: this goroutine ends here, so finish t now.
			err = fmt.Errorf("%w: message #%d: runtime.Goexit", ErrApplyPanic, t.seq)
			p.mu.Lock()
			p.finishLocked(t, err)
			p.mu.Unlock()
			return
		}
		err = fmt.Errorf("%w: message #%d: %v\n%s", ErrApplyPanic, t.seq, r, debug.Stack())
	}()
	err = p.apply(t.msg)
	returned = true
	if err != nil {
		err = fmt.Errorf("gcs: parallel apply of message #%d: %w", t.seq, err)
	}
	return err
}

// finishLocked records that apply of t returned err and releases the
// messages that waited for t.
func (p *Parallel[M]) finishLocked(t *parTask[M], err error) {
	p.mu.running--
	p.mu.inFlight--
	if err != nil {
		if p.mu.err == nil {
			p.mu.err = err
			clear(p.mu.ready)
			p.mu.ready = p.mu.ready[:0]
			p.work.Broadcast()
			p.space.Broadcast()
		}
	} else {
		p.mu.applied++
	}
	for _, k := range t.keys {
		if p.mu.last[k] == t {
			delete(p.mu.last, k)
		}
	}
	if p.mu.barrier == t {
		p.mu.barrier = nil
	}
	for _, s := range t.succ {
		s.deps--
		if s.deps == 0 && p.mu.err == nil {
			p.mu.ready = append(p.mu.ready, s)
		}
	}
	t.succ = nil
	// Wake a blocked Submit once a quarter of MaxInFlight is free, so that
	// it refills in bursts instead of one handoff per message; or at once if
	// the workers are about to run out of work.
	if p.mu.blocked > 0 && (p.mu.inFlight <= p.lowWater || len(p.mu.ready) == 0) {
		p.space.Signal()
	}
	if p.quiescentLocked() {
		p.idle.Broadcast()
		if p.mu.closed {
			p.work.Broadcast()
		}
	}
}

// NewParallel starts a scheduler for a group's messages: the application's
// event loop passes each *Message it receives from Group.Events to Submit.
// It is NewParallelOf for *Message.
//
// keys must depend on the message (typically its Payload) only. Events
// other than messages are not submitted; before acting on one that reads the
// state, call Wait. In particular JoinOptions.Snapshot must call Wait first:
// it runs once the event loop has received the admitting *View, so every
// earlier message has been submitted, but not necessarily applied.
func NewParallel(cfg ParallelConfig, keys func(*Message) []string, apply func(*Message) error) (*Parallel[*Message], error) {
	return NewParallelOf(cfg, keys, apply)
}
