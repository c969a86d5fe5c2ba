package service

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/segs"
	"github.com/tutti-gcs/tutti/memnode"
)

// Watch streams (the Watch RPC): a member subscribes to address ranges of a
// memnode and is told when applied writes touch them, so it need not poll.
//
// The apply path: every replica's machine reports, per Apply batch, the
// byte ranges its entries wrote — an Exec that voted OK writes its write
// items and, for each append, the ring piece(s) its data went to, its Tail
// word and its Count word (memnode.RingPieces at Result.Appended); a
// Commit writes the items of each tid that was in doubt (read from the
// memnode just before the entry applies) — to the memnode's watchTarget
// in the host's watchHub. With no subscriber that costs one atomic store and
// one atomic load per command. With subscribers, each one's pending state is
// updated under a mutex: the written ranges intersected with its watched
// ranges, the highest index, and a reset flag. Nothing there blocks; a
// subscriber whose pending ranges exceed watchMaxPending collapses them into
// reset ("re-read everything"), so its memory is bounded however slow its
// stream is.
//
// Data (WatchRequest.with_data): a subscriber that asked for it also keeps,
// per pending range, the bytes the range holds after the Apply batch that
// wrote it, copied from the memnode (memnode.ReadAt) on the replication
// worker once the batch is applied: the memory as of the batch's last
// writing entry, the event's index. No Raft entry buffer is retained. A
// newer batch's bytes replace older ones where they overlap, so the data
// of an event is the content of its ranges as of its index; since every
// write to a watched range after the previous event is in the event, a
// subscriber that applies the events' data in order tracks the watched
// memory exactly. Once a subscriber's pending data exceeds watchMaxData
// bytes it is dropped until the next event, which then carries ranges
// only (a hint, as without data). Subscribers without data cost nothing
// more than before.
//
// The stream: one goroutine per Watch RPC sends what is pending as one
// event whenever it is woken, so events coalesce while the client (or the
// network) is slow. Only the memnode's leader serves: elsewhere the RPC
// ends at once with a WatchError carrying STATUS_NOT_LEADER and the leader
// hint, and the serving host polls its leadership every watchLeaderPoll
// and ends the stream the same way when it is no longer the leader. The
// first event of every stream has reset set and the index at which the
// subscription took effect: every entry with a higher index that writes to
// a watched range is reported at least once while the stream lasts.

const (
	// watchMaxPending bounds the ranges a subscriber accumulates before they
	// collapse into a reset.
	watchMaxPending = 1024
	// watchMaxData bounds the data bytes a subscriber with data
	// accumulates before its next event goes without data.
	watchMaxData = 256 << 10
	// watchLeaderPoll is how often a serving stream checks that this host
	// still leads its memnode.
	watchLeaderPoll = 50 * time.Millisecond
)

// wrange is the byte range [addr, end).
type wrange struct{ addr, end uint64 }

// watchHub holds the watch subscribers of one host, per memnode.
type watchHub struct {
	mu      sync.Mutex
	targets map[uint64]*watchTarget
	closed  bool
	done    chan struct{} // closed by close: every stream ends
}

func newWatchHub() *watchHub {
	return &watchHub{targets: map[uint64]*watchTarget{}, done: make(chan struct{})}
}

// target returns memnode mn's target, creating it. Machines keep theirs.
func (h *watchHub) target(mn uint64) *watchTarget {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.targets[mn]
	if t == nil {
		t = &watchTarget{}
		h.targets[mn] = t
	}
	return t
}

// close ends every stream and refuses new ones.
func (h *watchHub) close() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
}

// subscribe registers a subscriber of ranges (sorted, disjoint) of mn. It
// returns the index from which every applied write is reported.
// With data, its events carry the written bytes.
func (h *watchHub) subscribe(mn uint64, ranges []wrange, data bool) (*watchTarget, *watchSub, bool) {
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return nil, nil, false
	}
	t := h.target(mn)
	sub := &watchSub{ranges: ranges, data: data, notify: make(chan struct{}, 1)}
	t.mu.Lock()
	t.subs = append(t.subs, sub)
	t.nsubs.Add(1)
	t.mu.Unlock()
	// After nsubs: an entry whose apply saw no subscriber stored its index
	// first, so start covers it (see watching).
	sub.start = t.last.Load()
	return t, sub, true
}

// watchTarget is one memnode's subscribers on this host. Its machine feeds
// it from the replication worker.
type watchTarget struct {
	last  atomic.Uint64 // index of the last command seen by watching
	nsubs atomic.Int32
	mu    sync.Mutex
	subs  []*watchSub
}

func (t *watchTarget) unsubscribe(sub *watchSub) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := slices.Index(t.subs, sub); i >= 0 {
		t.subs = slices.Delete(t.subs, i, i+1)
		t.nsubs.Add(-1)
	}
}

// watching records that the command at index is about to apply and says
// whether anyone watches (so the caller should collect written ranges).
// Nil-safe: a machine without a target watches nothing.
func (t *watchTarget) watching(index uint64) bool {
	if t == nil {
		return false
	}
	t.last.Store(index)
	return t.nsubs.Load() > 0
}

// memReader reads the memory as the applied entries left it
// (memnode.Memnode.ReadAt).
type memReader interface {
	ReadAt(dst []byte, addr uint64)
}

// publish hands ranges written up to index to every subscriber; mem (nil:
// unknown) holds the memory as of index, for subscribers with data. It
// never blocks on a stream. It may reorder written.
func (t *watchTarget) publish(index uint64, written []wrange, mem memReader) {
	t.mu.Lock()
	if len(t.subs) > 0 {
		written = mergeRanges(written)
	}
	for _, s := range t.subs {
		s.add(index, written, mem)
	}
	t.mu.Unlock()
}

// reset tells every subscriber that the state was replaced (a snapshot was
// restored): whatever they knew may be stale.
func (t *watchTarget) reset() {
	if t == nil {
		return
	}
	t.mu.Lock()
	for _, s := range t.subs {
		s.mu.Lock()
		s.mu.reset, s.mu.dirty, s.mu.pending = true, true, nil
		s.dropData()
		s.mu.Unlock()
		s.wake()
	}
	t.mu.Unlock()
}

// watchSub is one Watch stream's subscription.
type watchSub struct {
	ranges []wrange // watched, sorted, disjoint
	data   bool     // events carry the written bytes
	start  uint64
	notify chan struct{} // capacity 1
	mu     struct {
		sync.Mutex
		pending []wrange
		index   uint64
		reset   bool
		dirty   bool
		// With data: the latest bytes of the pending ranges (segs covers
		// exactly the union of pending), unless noData.
		segs     []segs.Seg
		segBytes int
		noData   bool
	}
}

// dropData forgets the pending data; the next event carries none. Called
// with s.mu held.
func (s *watchSub) dropData() {
	s.mu.segs, s.mu.segBytes = nil, 0
	s.mu.noData = s.data
}

func (s *watchSub) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// add records the parts of written that fall in the watched ranges, and
// with data their bytes from mem.
func (s *watchSub) add(index uint64, written []wrange, mem memReader) {
	s.mu.Lock()
	hit := false
	for _, w := range written {
		// The first watched range that ends after w starts.
		i, _ := slices.BinarySearchFunc(s.ranges, w.addr, func(r wrange, a uint64) int {
			if r.end <= a {
				return -1
			}
			return 1
		})
		for ; i < len(s.ranges) && s.ranges[i].addr < w.end; i++ {
			hit = true
			if s.mu.reset {
				break // the ranges do not matter: everything is re-read
			}
			r := s.ranges[i]
			p := wrange{max(r.addr, w.addr), min(r.end, w.end)}
			s.mu.pending = append(s.mu.pending, p)
			if s.data && !s.mu.noData {
				if mem == nil || s.mu.segBytes+int(p.end-p.addr) > watchMaxData {
					s.dropData()
					continue
				}
				b := make([]byte, p.end-p.addr)
				mem.ReadAt(b, p.addr)
				var d int
				s.mu.segs, d = segs.Overlay(s.mu.segs, segs.Seg{Addr: p.addr, B: b})
				s.mu.segBytes += d
			}
		}
	}
	if hit {
		s.mu.index = max(s.mu.index, index)
		s.mu.dirty = true
		if len(s.mu.pending) > watchMaxPending {
			s.mu.pending = mergeRanges(s.mu.pending)
			if len(s.mu.pending) > watchMaxPending/2 {
				s.mu.reset, s.mu.pending = true, nil
				s.dropData()
			}
		}
	}
	s.mu.Unlock()
	if hit {
		s.wake()
	}
}

// take returns what is pending as one event (without memnode and seq), or
// nil.
func (s *watchSub) take() *tuttipb.WatchEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.dirty {
		return nil
	}
	ev := &tuttipb.WatchEvent{Index: s.mu.index, Reset_: s.mu.reset}
	merged := mergeRanges(s.mu.pending)
	for _, r := range merged {
		ev.Ranges = append(ev.Ranges, &tuttipb.Range{Addr: r.addr, Len: r.end - r.addr})
	}
	if s.data && !s.mu.reset && !s.mu.noData {
		ev.Data = segData(merged, s.mu.segs)
	}
	s.mu.pending, s.mu.reset, s.mu.dirty = s.mu.pending[:0], false, false
	s.mu.segs, s.mu.segBytes, s.mu.noData = nil, 0, false
	return ev
}

// segData returns the content of each range of rs (sorted, disjoint, not
// adjacent) from segs (sorted, disjoint), or nil if segs does not cover
// them exactly.
func segData(rs []wrange, ss []segs.Seg) [][]byte {
	out := make([][]byte, len(rs))
	for i, r := range rs {
		var b []byte
		at := r.addr
		for len(ss) > 0 && ss[0].Addr == at && at < r.end {
			if b == nil && ss[0].End() >= r.end {
				b = ss[0].B // one segment: no copy
			} else {
				b = append(b, ss[0].B...)
			}
			at = ss[0].End()
			ss = ss[1:]
		}
		if at != r.end || uint64(len(b)) != r.end-r.addr {
			return nil
		}
		out[i] = b
	}
	if len(ss) > 0 {
		return nil
	}
	return out
}

// mergeRanges sorts rs and merges overlapping and adjacent ranges, in place.
func mergeRanges(rs []wrange) []wrange {
	if len(rs) < 2 {
		return rs
	}
	slices.SortFunc(rs, func(a, b wrange) int { return cmp.Compare(a.addr, b.addr) })
	out := rs[:1]
	for _, r := range rs[1:] {
		if last := &out[len(out)-1]; r.addr <= last.end {
			last.end = max(last.end, r.end)
			continue
		}
		out = append(out, r)
	}
	return out
}

// appendWrites appends the ranges written by ws.
func appendWrites(dst []wrange, ws []memnode.Write) []wrange {
	for _, w := range ws {
		if len(w.Data) > 0 {
			dst = append(dst, wrange{w.Addr, w.Addr + uint64(len(w.Data))})
		}
	}
	return dst
}

// appendAppends adds the ranges the appends of an Exec that voted OK wrote:
// each one's ring piece(s), its Tail word and its Count word. placed holds
// where they went (Result.Appended).
func appendAppends(dst []wrange, as []memnode.Append, placed []memnode.Appended) []wrange {
	for i := range as {
		if i >= len(placed) {
			break
		}
		a := &as[i]
		a1, n1, a2, n2 := memnode.RingPieces(a, placed[i].Tail)
		dst = append(dst, wrange{a1, a1 + n1}, wrange{a.Tail, a.Tail + 8})
		if n2 > 0 {
			dst = append(dst, wrange{a2, a2 + n2})
		}
		if a.Count != 0 {
			dst = append(dst, wrange{a.Count, a.Count + 8})
		}
	}
	return dst
}

// watchErr is the status that ends (or refuses) a Watch stream.
func watchErr(code codes.Code, st tuttipb.Status, leader uint64, addr, msg string) error {
	s, err := status.New(code, msg).WithDetails(&tuttipb.WatchError{Status: st, LeaderHost: leader, LeaderAddr: addr})
	if err != nil {
		return status.Error(code, msg)
	}
	return s.Err()
}

// watchRanges validates a request's ranges and returns them sorted and
// merged.
func (s *Server) watchRanges(req *tuttipb.WatchRequest) ([]wrange, error) {
	rs := req.GetRanges()
	if len(rs) == 0 {
		return nil, fmt.Errorf("watch of memnode %d names no range", req.GetMemnode())
	}
	if len(rs) > s.mcfg.MaxItems {
		return nil, fmt.Errorf("watch of %d ranges exceeds the limit of %d", len(rs), s.mcfg.MaxItems)
	}
	out := make([]wrange, len(rs))
	for i, r := range rs {
		a, n := r.GetAddr(), r.GetLen()
		if n == 0 {
			return nil, fmt.Errorf("range %d [%#x, +0) is empty", i, a)
		}
		if n > s.mcfg.Size || a > s.mcfg.Size-n {
			return nil, fmt.Errorf("range %d [%#x, +%d) exceeds the address space of %d bytes", i, a, n, s.mcfg.Size)
		}
		out[i] = wrange{a, a + n}
	}
	return mergeRanges(out), nil
}

// watchLeader returns nil if this host leads mn, else the NOT_LEADER status.
func (s *Server) watchLeader(mn uint64) error {
	l := s.rep.Leader(mn)
	if l == s.hostID {
		return nil
	}
	return watchErr(codes.FailedPrecondition, tuttipb.Status_STATUS_NOT_LEADER, l, s.layout().hosts[l],
		fmt.Sprintf("host %d does not lead memnode %d (leader %d)", s.hostID, mn, l))
}

// Watch serves one subscription; see the comment at the top of this file.
func (s *Server) Watch(req *tuttipb.WatchRequest, stream tuttipb.Memnode_WatchServer) error {
	mn := req.GetMemnode()
	lay := s.layout()
	if !lay.local[mn] {
		spec, ok := lay.memnodes[mn]
		if !ok {
			return watchErr(codes.NotFound, tuttipb.Status_STATUS_UNKNOWN_MEMNODE, 0, "",
				fmt.Sprintf("memnode %d does not exist", mn))
		}
		var hint uint64
		if len(spec.Replicas) > 0 {
			hint = spec.Replicas[0]
		}
		return watchErr(codes.FailedPrecondition, tuttipb.Status_STATUS_NOT_LEADER, hint, lay.hosts[hint],
			fmt.Sprintf("host %d holds no replica of memnode %d", s.hostID, mn))
	}
	ranges, err := s.watchRanges(req)
	if err != nil {
		return watchErr(codes.InvalidArgument, tuttipb.Status_STATUS_INVALID, 0, "", err.Error())
	}
	if err := s.watchLeader(mn); err != nil {
		return err
	}
	hub := s.watch
	t, sub, ok := hub.subscribe(mn, ranges, req.GetWithData())
	if !ok {
		return watchErr(codes.Unavailable, tuttipb.Status_STATUS_UNAVAILABLE, 0, "", "host is shutting down")
	}
	defer t.unsubscribe(sub)
	// Leadership may have moved while subscribing.
	if err := s.watchLeader(mn); err != nil {
		return err
	}
	seq := uint64(1)
	if err := stream.Send(&tuttipb.WatchEvent{Memnode: mn, Index: sub.start, Reset_: true, Seq: seq}); err != nil {
		return err
	}
	tick := time.NewTicker(watchLeaderPoll)
	defer tick.Stop()
	for {
		select {
		case <-sub.notify:
		case <-tick.C:
			if err := s.watchLeader(mn); err != nil {
				return err
			}
			continue
		case <-hub.done:
			return watchErr(codes.Unavailable, tuttipb.Status_STATUS_UNAVAILABLE, 0, "", "host is shutting down")
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
		ev := sub.take()
		if ev == nil {
			continue
		}
		seq++
		ev.Memnode, ev.Seq = mn, seq
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
}
