package replication

import (
	"context"
	"sync"
	"sync/atomic"

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
// One excise runs at a time, on a goroutine of its own, right after the
// commit, while the range deletion is still in the memtable: Pebble then
// records the excise as a flushable (FormatFlushableIngestExcises) instead
// of flushing the memtable first while commits wait.
type reclaimer struct {
	db  *pebble.DB
	log zerolog.Logger

	mu      sync.Mutex
	cond    *sync.Cond
	pending map[uint64]uint64 // group -> entries up to this index deleted
	order   []uint64          // groups of pending, in arrival order
	busy    bool              // an excise runs, of group cur
	cur     uint64
	closed  bool
	done    chan struct{}

	excised, failed atomic.Uint64

	// beforeExcise, if set (tests), runs before each excise, without mu.
	beforeExcise func(g, upto uint64)
}

func newReclaimer(db *pebble.DB, log zerolog.Logger) *reclaimer {
	r := &reclaimer{db: db, log: log, pending: map[uint64]uint64{}, done: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	go r.run()
	return r
}

// add asks for the entries of group g up to index upto, deleted by a
// committed batch, to be excised.
func (r *reclaimer) add(g, upto uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	cur, ok := r.pending[g]
	if !ok {
		r.order = append(r.order, g)
	}
	r.pending[g] = max(cur, upto)
	r.cond.Broadcast()
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
	r.cond.Broadcast()
	r.mu.Unlock()
	<-r.done
}

func (r *reclaimer) run() {
	defer close(r.done)
	r.mu.Lock()
	for {
		for len(r.order) == 0 && !r.closed {
			r.cond.Wait()
		}
		if r.closed {
			r.mu.Unlock()
			return
		}
		g := r.order[0]
		r.order = r.order[1:]
		upto := r.pending[g]
		delete(r.pending, g)
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
	}
}
