package replication

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
)

// reclaimer removes truncated log prefixes from the engine's tables.
//
// A truncation is a range deletion committed with the snapshot that allows
// it; it hides the entries at once, but their bytes stay in the tables it
// covers until a compaction reads and rewrites them, and Pebble's
// delete-only compactions cannot drop tables of L0 (where a log's tables
// live until compacted). Each table flushed from the shared memtable holds
// entries of every group on the host, so no group's truncation covers a
// table whole. Once a truncation's batch is committed, the reclaimer
// excises its span (pebble.DB.Excise): tables inside it are dropped, tables
// across its edges are narrowed to virtual tables over the same files, and
// a file goes once no table uses it, so the deleted entries are never read
// or rewritten. See doc.go, "Truncated entries excised".
//
// The span holds only deleted entries when it is excised: entries of a
// group up to a truncated index are never written again by that replica
// (appends start above the commit index, a restored snapshot is newer),
// and RemoveGroup forgets a removed replica's spans (forget) before the
// host can hold the group again, whose new replica starts its log at the
// bottom.
//
// One excise runs at a time, on a goroutine of its own, once the memtable
// that holds the truncation's range deletion has been flushed, as far as
// the reclaimer can tell: once the first flush that began after the
// truncation was handed over has ended. Issued while the range deletion is
// still in the memtable, the excise overlaps it, and Pebble cuts the
// memtable short to queue the excise behind it (a flushable, format
// FormatFlushableIngestExcises): a fresh memtable per truncation, whose
// arena costs page faults, and a small table. Should the guess be wrong
// (the memtable had not been rotated when that flush began), Pebble does
// just that: correct, only dearer. A truncation waits at most maxDefer,
// from its group's first pending one, for such a flush (with few writes
// memtables rarely fill). See doc.go, "Truncated entries excised".
type reclaimer struct {
	db  *pebble.DB
	log zerolog.Logger

	mu sync.Mutex
	// maxDefer: how long a truncation waits for its memtable's flush
	// before it is excised anyway.
	maxDefer time.Duration
	cond     *sync.Cond               // busy changed
	wake     chan struct{}            // pending, flushes or closed changed
	pending  map[uint64]pendingExcise // by group
	order    []uint64                 // groups of pending, in arrival order
	busy     bool                     // an excise runs, of group cur
	cur      uint64
	closed   bool
	done     chan struct{}
	// Flushes begun and ended (Pebble runs one at a time): the flush that
	// began as the begunth has ended once ended >= begun.
	begun, ended uint64

	excised, failed atomic.Uint64

	// beforeExcise, if set (tests), runs before each excise, without mu.
	beforeExcise func(g, upto uint64)
}

// pendingExcise: a group's entries up to upto are deleted by committed
// batches; excise them once flush number after has ended, or at deadline.
type pendingExcise struct {
	upto, after uint64
	deadline    time.Time
}

// defaultMaxDefer: at multicast saturation a host's memtable fills in
// about a second.
const defaultMaxDefer = 5 * time.Second

// newReclaimer returns a reclaimer whose listener must be given to Pebble
// and whose db must be set before the first add.
func newReclaimer(log zerolog.Logger) *reclaimer {
	r := &reclaimer{log: log, maxDefer: defaultMaxDefer, pending: map[uint64]pendingExcise{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// setMaxDefer replaces maxDefer for later truncations.
func (r *reclaimer) setMaxDefer(d time.Duration) {
	r.mu.Lock()
	r.maxDefer = d
	r.mu.Unlock()
}

func (r *reclaimer) start(db *pebble.DB) {
	r.db = db
	go r.run()
}

// listener tells the reclaimer of Pebble's flushes.
func (r *reclaimer) listener() pebble.EventListener {
	return pebble.EventListener{
		FlushBegin: func(pebble.FlushInfo) {
			r.mu.Lock()
			r.begun++
			r.mu.Unlock()
		},
		FlushEnd: func(info pebble.FlushInfo) {
			if info.Err != nil {
				return
			}
			r.mu.Lock()
			r.ended = r.begun
			r.mu.Unlock()
			r.poke()
		},
	}
}

func (r *reclaimer) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// add asks for the entries of group g up to index upto, deleted by a
// committed batch, to be excised.
func (r *reclaimer) add(g, upto uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	p, ok := r.pending[g]
	if !ok {
		r.order = append(r.order, g)
		p.deadline = time.Now().Add(r.maxDefer)
	}
	// The newest range deletion decides when the span leaves the memtable;
	// the oldest when it is excised anyway (a group truncated more often
	// than maxDefer must not wait for ever).
	p.upto, p.after = max(p.upto, upto), r.begun+1
	r.pending[g] = p
	r.poke()
}

// forget drops what is pending for group g and waits for an excise of it
// in progress: the group's replica is gone, and a new one may write low
// indices again.
func (r *reclaimer) forget(g uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.pending[g]; ok {
		delete(r.pending, g)
		for i, o := range r.order {
			if o == g {
				r.order = append(r.order[:i], r.order[i+1:]...)
				break
			}
		}
	}
	for r.busy && r.cur == g {
		r.cond.Wait()
	}
}

// idle reports whether nothing is pending or running (tests).
func (r *reclaimer) idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order) == 0 && !r.busy
}

// close stops the reclaimer after the excise in progress; what is pending
// is dropped (the range deletions keep the entries deleted, and
// compactions drop their bytes).
func (r *reclaimer) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.poke()
	if r.db != nil {
		<-r.done
	}
}

// next takes the first pending group whose span is ready to excise, or
// returns the time until one will be (0 if none is pending).
func (r *reclaimer) next(now time.Time) (g, upto uint64, ok bool, wait time.Duration) {
	for i, o := range r.order {
		p := r.pending[o]
		if r.ended >= p.after || !now.Before(p.deadline) {
			r.order = append(r.order[:i], r.order[i+1:]...)
			delete(r.pending, o)
			return o, p.upto, true, 0
		}
		if d := p.deadline.Sub(now); wait == 0 || d < wait {
			wait = d
		}
	}
	return 0, 0, false, wait
}

func (r *reclaimer) run() {
	defer close(r.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		g, upto, ok, wait := r.next(time.Now())
		if !ok {
			r.mu.Unlock()
			if wait > 0 {
				timer.Reset(wait)
			} else {
				timer.Stop()
			}
			select {
			case <-r.wake:
			case <-timer.C:
			}
			continue
		}
		r.busy, r.cur = true, g
		r.mu.Unlock()

		if f := r.beforeExcise; f != nil {
			f(g, upto)
		}
		err := r.db.Excise(context.Background(), pebble.KeyRange{Start: entryKey(g, 0), End: entryKey(g, upto+1)})
		if err != nil {
			r.failed.Add(1)
			r.log.Warn().Err(err).Uint64("group", g).Uint64("upto", upto).
				Msg("excising truncated log entries; compactions will drop them")
		} else {
			r.excised.Add(1)
		}

		r.mu.Lock()
		r.busy = false
		r.cond.Broadcast()
		r.mu.Unlock()
	}
}
