package membership

import (
	"fmt"
	"sync"
)

// ChangeKind says what a Change did.
type ChangeKind uint8

// Change kinds. Joined..Updated are table changes, seen identically by every
// observer; Evicted and Superseded are local notices about this process.
const (
	Joined     ChangeKind = iota + 1 // a process took a row (a new id, or a reused slot)
	Rejoined                         // a process came back under a new incarnation, replacing its old row
	Died                             // a process was declared dead
	Left                             // a process left gracefully
	Updated                          // any other change of a row
	Evicted                          // local: this process found itself declared dead; it rejoins
	Superseded                       // local: a newer incarnation of this id exists; this node stopped
)

func (k ChangeKind) String() string {
	switch k {
	case Joined:
		return "joined"
	case Rejoined:
		return "rejoined"
	case Died:
		return "died"
	case Left:
		return "left"
	case Updated:
		return "updated"
	case Evicted:
		return "evicted"
	case Superseded:
		return "superseded"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Change is one confirmed change of the process table, or a local notice.
type Change struct {
	// Version is the table version the change installed (for local
	// notices: the version at which this process noticed).
	Version uint64
	Kind    ChangeKind
	// Row is the row after the change; Old the row before (zero State for
	// a slot that was empty).
	Row, Old Row
	// Resync is set when the observer fell more than LogSize versions
	// behind and derived the change by comparing snapshots: versions in
	// between were not seen one by one.
	Resync bool
}

// Local reports whether c is a notice about this process rather than a
// table change.
func (c Change) Local() bool { return c.Kind == Evicted || c.Kind == Superseded }

func classify(old, nw Row) ChangeKind {
	switch nw.State {
	case StateDead:
		return Died
	case StateLeft:
		return Left
	case StateAlive, StateSuspect:
		switch {
		case old.State == StateEmpty || old.ID != nw.ID:
			return Joined
		case old.Incarnation != nw.Incarnation:
			return Rejoined
		}
	}
	return Updated
}

// feed delivers changes to one subscriber in order without ever blocking
// the node: an unbounded queue drained by one goroutine.
type feed struct {
	ch   chan Change
	mu   sync.Mutex
	q    []Change
	wake chan struct{} // capacity 1
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func newFeed() *feed {
	f := &feed{ch: make(chan Change), wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go f.run()
	return f
}

func (f *feed) push(cs ...Change) {
	if len(cs) == 0 {
		return
	}
	f.mu.Lock()
	f.q = append(f.q, cs...)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *feed) run() {
	defer close(f.done)
	defer close(f.ch)
	for {
		f.mu.Lock()
		q := f.q
		f.q = nil
		f.mu.Unlock()
		for _, c := range q {
			select {
			case f.ch <- c:
			case <-f.stop:
				return
			}
		}
		select {
		case <-f.wake:
		case <-f.stop:
			return
		}
	}
}

func (f *feed) close() {
	f.once.Do(func() { close(f.stop) })
	<-f.done
}
