package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/segs"
)

// Range is the byte range [Addr, Addr+Len) of a memnode's address space.
type Range struct {
	Addr, Len uint64
}

// WatchEvent says that applied writes touched watched ranges. Without
// WatchOptions.Data it carries no data: read it with a minitransaction. A
// read issued after receiving an event observes at least the memnode's
// state at Index.
type WatchEvent struct {
	Memnode uint64
	// Index is the Raft log index of the latest applied entry the event
	// covers (0 if unknown).
	Index uint64
	// Ranges are the written bytes within the watched ranges, sorted and
	// disjoint. Empty when Reset is set.
	Ranges []Range
	// Reset: changes may have been missed (the watch moved to a new leader,
	// the serving replica installed a snapshot, a buffer overflowed): re-read
	// every watched range.
	Reset bool
	// Data, only for a watch with WatchOptions.Data and only if the event
	// carries it: Data[i] is the content of Ranges[i] as of Index (the
	// memory after every entry up to Index applied; committed). Every
	// write to a watched range since the previous event of the watch is in
	// Ranges and coalesced events keep the latest bytes, so applying the
	// events' Data in order tracks the watched memory exactly (from a read
	// after the last Reset). Nil when the event is only a hint: Reset, a
	// server without data support, or more data pending than the server
	// (256 KiB per watch) or the client (watchMaxData) keeps. Do not
	// modify the slices.
	Data [][]byte
}

// Bytes returns the content of [addr, addr+n) as of Index if the event's
// Data covers all of it (ranges are merged, so one range must hold it),
// else false. The slice is shared: do not modify it.
func (e *WatchEvent) Bytes(addr, n uint64) ([]byte, bool) {
	if e.Data == nil || len(e.Data) != len(e.Ranges) || addr+n < addr {
		return nil, false
	}
	i, _ := slices.BinarySearchFunc(e.Ranges, addr, func(r Range, a uint64) int {
		if r.Addr+r.Len <= a {
			return -1
		}
		return 1
	})
	if i == len(e.Ranges) {
		return nil, false
	}
	r := e.Ranges[i]
	if r.Addr > addr || addr+n > r.Addr+r.Len || uint64(len(e.Data[i])) != r.Len {
		return nil, false
	}
	off := addr - r.Addr
	return e.Data[i][off : off+n : off+n], true
}

// WatchOptions modify a watch (Client.WatchWith).
type WatchOptions struct {
	// Data asks for the written bytes in the events (WatchEvent.Data), so
	// that a watcher may skip the read. Events may still come without
	// data: read then, as without the option.
	Data bool
}

// watchMaxRanges bounds the ranges a pending event accumulates before it
// becomes a Reset.
const watchMaxRanges = 1024

// watchMaxData bounds the data bytes a pending event keeps; beyond it the
// event goes without data (a hint).
const watchMaxData = 1 << 20

// hasData reports that e carries the content of all its ranges.
func (e *WatchEvent) hasData() bool {
	if e.Reset || len(e.Ranges) == 0 || len(e.Data) != len(e.Ranges) {
		return false
	}
	for i, r := range e.Ranges {
		if uint64(len(e.Data[i])) != r.Len {
			return false
		}
	}
	return true
}

// merge folds o (newer) into e: the union of ranges, the larger index,
// Reset if either was; with data in both, the bytes of o where they
// overlap, else no data.
func (e *WatchEvent) merge(o WatchEvent) {
	e.Index = max(e.Index, o.Index)
	if e.Reset || o.Reset {
		e.Reset, e.Ranges, e.Data = true, nil, nil
		return
	}
	if e.hasData() && o.hasData() {
		e.Ranges, e.Data = mergeData(e.Ranges, e.Data, o.Ranges, o.Data)
	} else {
		// Ranges are rebuilt below: never append into a slice the
		// consumer of an earlier event may hold.
		e.Ranges = mergeRanges(append(slices.Clip(e.Ranges), o.Ranges...))
		e.Data = nil
	}
	if len(e.Ranges) > watchMaxRanges {
		e.Reset, e.Ranges, e.Data = true, nil, nil
	}
}

// mergeData overlays the ranges and data of o on those of e (both sorted,
// disjoint) and returns them merged: adjacent ranges joined, the newer
// bytes where they overlap. Nil data if the result exceeds watchMaxData.
// The inputs are not modified.
func mergeData(er []Range, ed [][]byte, or []Range, od [][]byte) ([]Range, [][]byte) {
	ss := make([]segs.Seg, len(er), len(er)+len(or))
	for i, r := range er {
		ss[i] = segs.Seg{Addr: r.Addr, B: ed[i]}
	}
	for i, r := range or {
		ss, _ = segs.Overlay(ss, segs.Seg{Addr: r.Addr, B: od[i]})
	}
	var rs []Range
	var ds [][]byte
	total := 0
	for _, g := range ss {
		total += len(g.B)
		if k := len(rs) - 1; k >= 0 && rs[k].Addr+rs[k].Len == g.Addr {
			rs[k].Len += uint64(len(g.B))
			ds[k] = append(slices.Clip(ds[k]), g.B...) // a copy: never shares
			continue
		}
		rs = append(rs, Range{g.Addr, uint64(len(g.B))})
		ds = append(ds, g.B)
	}
	if total > watchMaxData {
		ds = nil
	}
	return rs, ds
}

func mergeRanges(rs []Range) []Range {
	if len(rs) < 2 {
		return rs
	}
	slices.SortFunc(rs, func(a, b Range) int { return cmp.Compare(a.Addr, b.Addr) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.Addr <= last.Addr+last.Len {
			last.Len = max(last.Addr+last.Len, r.Addr+r.Len) - last.Addr
			continue
		}
		out = append(out, r)
	}
	return out
}

// Watch is a subscription to writes applied to ranges of one memnode (see
// Client.Watch). Close it when done.
type Watch struct {
	c   *Client
	mn  uint64
	req *tuttipb.WatchRequest

	ctx    context.Context // the watch's life; cancelled by Close
	cancel context.CancelFunc

	out     chan WatchEvent
	notify  chan struct{} // capacity 1: pending changed
	ended   chan struct{} // closed when the receiver stops
	runDone chan struct{}
	outDone chan struct{}
	once    sync.Once

	mu struct {
		sync.Mutex
		pending *WatchEvent
		err     error
	}
}

// Watch subscribes to writes applied to ranges of memnode mn and returns
// once the subscription is established: every write applied after Watch
// returns that touches a range is reported on C at least once. Events are
// hints, coalesced; read the data with a minitransaction (typically: Watch,
// then read, then read again after each event), or ask for the data in the
// events with WatchWith.
//
// ctx bounds only the subscription; the watch lasts until Close (or the
// client's Close). When the memnode's leader changes or the stream breaks,
// the watch subscribes again at the new leader by itself and then delivers
// an event with Reset set, since changes may have been missed meanwhile.
//
// Errors: ErrInvalid (no range, an empty range, a range outside the
// address space), ErrUnknownMemnode, ErrUnavailable (no leader reached
// within the retry budget), ErrClosed, or ctx's error, wrapped in *Error.
func (c *Client) Watch(ctx context.Context, memnode uint64, ranges ...Range) (*Watch, error) {
	return c.WatchWith(ctx, memnode, WatchOptions{}, ranges...)
}

// WatchWith is Watch with options: with opts.Data the events carry the
// written bytes when they can (WatchEvent.Data), so a watcher may apply
// them instead of reading.
func (c *Client) WatchWith(ctx context.Context, memnode uint64, opts WatchOptions, ranges ...Range) (*Watch, error) {
	if len(ranges) == 0 {
		return nil, &Error{Memnode: memnode, Err: ErrInvalid, Detail: "watch names no range"}
	}
	req := &tuttipb.WatchRequest{Memnode: memnode, Ranges: make([]*tuttipb.Range, len(ranges)), WithData: opts.Data}
	for i, r := range ranges {
		if r.Len == 0 || r.Addr+r.Len < r.Addr {
			return nil, &Error{Memnode: memnode, Err: ErrInvalid,
				Detail: fmt.Sprintf("range %d [%#x, +%d) is empty or wraps around", i, r.Addr, r.Len)}
		}
		req.Ranges[i] = &tuttipb.Range{Addr: r.Addr, Len: r.Len}
	}
	w := &Watch{c: c, mn: memnode, req: req, out: make(chan WatchEvent), notify: make(chan struct{}, 1),
		ended: make(chan struct{}), runDone: make(chan struct{}), outDone: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	if !c.watches.add(w) {
		w.cancel()
		return nil, ErrClosed
	}
	st, err := w.subscribe(ctx, c.cfg.Retry.MaxAttempts)
	if err != nil {
		w.cancel()
		close(w.ended)
		close(w.runDone)
		close(w.out)
		close(w.outDone)
		c.watches.remove(w)
		return nil, err
	}
	go w.run(st)
	go w.deliver()
	return w, nil
}

// C delivers the events. A consumer that falls behind never holds the
// stream up: pending events merge into one (Ranges united, Reset if any was
// reset, Data the latest bytes if every merged event had data and they fit
// watchMaxData, else none). C is closed after Close, or when the watch
// fails for good (Err).
func (w *Watch) C() <-chan WatchEvent { return w.out }

// Err returns why C was closed by the watch itself (the memnode vanished,
// the client was closed), or nil.
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.mu.err
}

// Close ends the subscription and closes C. It is idempotent.
func (w *Watch) Close() {
	w.once.Do(w.cancel)
	<-w.runDone
	<-w.outDone
	w.c.watches.remove(w)
}

// watchStream is one subscription at one host.
type watchStream struct {
	st     tuttipb.Memnode_WatchClient
	cancel context.CancelFunc
	first  *tuttipb.WatchEvent
}

// subscribe opens a stream at the memnode's leader and waits for its first
// event, following redirects, for at most maxAttempts attempts (no limit if
// 0) or until ctx ends. The stream itself lives until Close.
func (w *Watch) subscribe(ctx context.Context, maxAttempts int) (*watchStream, error) {
	c, mn := w.c, w.mn
	var last string
	refreshed := false
	for attempt := 0; maxAttempts == 0 || attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := c.backoff(ctx, min(attempt-1, 16)); err != nil {
				return nil, &Error{Memnode: mn, Err: err, Detail: last}
			}
			if w.ctx.Err() != nil {
				return nil, ErrClosed
			}
		}
		cn, h, err := c.route(mn)
		if err != nil {
			if errors.Is(err, ErrUnknownMemnode) && !refreshed {
				refreshed = true
				if c.refreshLayout(ctx) {
					attempt--
					continue
				}
			}
			return nil, err
		}
		sctx, cancel := context.WithCancel(w.ctx)
		stop := context.AfterFunc(ctx, cancel)
		st, err := cn.rpc.Watch(sctx, w.req)
		var first *tuttipb.WatchEvent
		if err == nil {
			first, err = st.Recv()
		}
		if !stop() || err != nil {
			cancel()
		}
		if ctx.Err() != nil {
			return nil, &Error{Memnode: mn, Err: ctx.Err(), Detail: last}
		}
		if w.ctx.Err() != nil {
			return nil, ErrClosed
		}
		if err == nil {
			c.leaderAnswered(mn, h)
			return &watchStream{st: st, cancel: cancel, first: first}, nil
		}
		last = err.Error()
		we := watchError(err)
		switch we.GetStatus() {
		case tuttipb.Status_STATUS_INVALID:
			return nil, &Error{Memnode: mn, Err: ErrInvalid, Detail: status.Convert(err).Message()}
		case tuttipb.Status_STATUS_UNKNOWN_MEMNODE:
			if !refreshed {
				refreshed = true
				if c.refreshLayout(ctx) {
					c.redirect(mn, h, nil)
					continue
				}
			}
			return nil, &Error{Memnode: mn, Err: ErrUnknownMemnode, Detail: status.Convert(err).Message()}
		case tuttipb.Status_STATUS_NOT_LEADER:
			hint := &tuttipb.Response{LeaderHost: we.GetLeaderHost(), LeaderAddr: we.GetLeaderAddr()}
			c.redirect(mn, h, hint)
			if hint.LeaderHost == 0 || hint.LeaderHost == h || attempt%8 == 7 {
				c.refreshLayout(ctx) // no usable hint: the replicas may have moved
			}
		default: // unavailable, transport errors
			if errors.Is(err, ErrClosed) || status.Code(err) == codes.Canceled && c.isClosed() {
				return nil, ErrClosed
			}
			c.redirect(mn, h, nil)
			if attempt%4 == 3 {
				c.refreshLayout(ctx) // hosts may have new addresses
			}
		}
	}
	return nil, &Error{Memnode: mn, Err: ErrUnavailable, Detail: fmt.Sprintf("gave up after %d attempts: %s", maxAttempts, last)}
}

// watchError extracts the WatchError detail of a status, or nil.
func watchError(err error) *tuttipb.WatchError {
	for _, d := range status.Convert(err).Details() {
		if we, ok := d.(*tuttipb.WatchError); ok {
			return we
		}
	}
	return nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.closed
}

// run receives events into pending and re-subscribes when a stream ends.
func (w *Watch) run(s *watchStream) {
	defer close(w.runDone)
	defer close(w.ended)
	for {
		ev, err := s.st.Recv()
		if err == nil {
			w.push(event(w.mn, ev))
			continue
		}
		s.cancel()
		if w.ctx.Err() != nil {
			return
		}
		w.c.log.Debug().Err(err).Uint64("memnode", w.mn).Msg("watch stream ended; subscribing again")
		s, err = w.subscribe(w.ctx, 0)
		if err != nil {
			if w.ctx.Err() == nil {
				w.mu.Lock()
				w.mu.err = err
				w.mu.Unlock()
			}
			return
		}
		// Whatever happened between the streams is unknown.
		w.push(WatchEvent{Memnode: w.mn, Index: s.first.GetIndex(), Reset: true})
	}
}

func event(mn uint64, ev *tuttipb.WatchEvent) WatchEvent {
	e := WatchEvent{Memnode: mn, Index: ev.GetIndex(), Reset: ev.GetReset_()}
	if !e.Reset {
		e.Ranges = make([]Range, len(ev.GetRanges()))
		for i, r := range ev.GetRanges() {
			e.Ranges[i] = Range{Addr: r.GetAddr(), Len: r.GetLen()}
		}
		if len(ev.GetData()) > 0 {
			e.Data = ev.GetData()
			if !e.hasData() {
				e.Data = nil // malformed: a hint only
			}
		}
	}
	return e
}

// push merges e into the pending event; it never blocks.
func (w *Watch) push(e WatchEvent) {
	w.mu.Lock()
	if w.mu.pending == nil {
		w.mu.pending = &e
	} else {
		w.mu.pending.merge(e)
	}
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *Watch) takePending() *WatchEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.mu.pending
	w.mu.pending = nil
	return e
}

// deliver hands pending events to C, merging whatever arrives while the
// consumer is not receiving.
func (w *Watch) deliver() {
	defer close(w.outDone)
	defer close(w.out)
	for {
		select {
		case <-w.notify:
		case <-w.ended:
			return
		}
		ev := w.takePending()
		for ev != nil {
			select {
			case w.out <- *ev:
				ev = nil
			case <-w.notify:
				if more := w.takePending(); more != nil {
					ev.merge(*more)
				}
			case <-w.ended:
				return
			}
		}
	}
}

// watchSet is the client's open watches, closed with it.
type watchSet struct {
	mu     sync.Mutex
	m      map[*Watch]struct{}
	closed bool
}

func (s *watchSet) add(w *Watch) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = map[*Watch]struct{}{}
	}
	s.m[w] = struct{}{}
	return true
}

func (s *watchSet) remove(w *Watch) {
	s.mu.Lock()
	delete(s.m, w)
	s.mu.Unlock()
}

// closeAll closes every watch and refuses new ones.
func (s *watchSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	ws := make([]*Watch, 0, len(s.m))
	for w := range s.m {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	for _, w := range ws {
		w.Close()
	}
}
