package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// proposal is one command waiting for its result.
type proposal struct {
	cmd  []byte
	done func([]byte, error)
	id   uint64 // set when handed to raft
	term uint64 // raft term it was proposed in
}

type readRequest struct {
	query []byte
	done  func([]byte, error)
}

// readBatch is the reads that share one ReadIndex request.
type readBatch struct {
	id    uint64
	index uint64 // from the ReadState; 0 while pending
	reads []*readRequest
}

type confRequest struct {
	cc    *pb.ConfChangeV2
	done  chan error // buffered, written once
	ctx   []byte     // identifies our entry: incarnation + id
	term  uint64
	index uint64 // index of the entry raft appended; 0 until the next Ready
	// awaitIndex: proposed in this cycle, index comes from this cycle's Ready.
	awaitIndex bool
	applied    bool
}

type report struct {
	to          uint64
	unreachable bool // else a snapshot report
	snapOK      bool
}

// inbox is what other goroutines hand to a group's worker.
type inbox struct {
	msgs    []*pb.Message
	props   []*proposal
	reads   []*readRequest
	reports []report
	confs   []*confRequest
	fns     []workerFn // run on the worker (membership.go)
}

// workerFn is a function for a group's worker (membership.go). stop is
// called instead of run when the group stops first (shutdown drops its
// inbox), so that no caller waits for a function that will never run.
type workerFn struct{ run, stop func() }

func (in *inbox) reset() {
	clear(in.msgs)
	clear(in.props)
	clear(in.reads)
	clear(in.confs)
	clear(in.fns)
	in.msgs, in.props, in.reads, in.reports, in.confs = in.msgs[:0], in.props[:0], in.reads[:0], in.reports[:0], in.confs[:0]
	in.fns = in.fns[:0]
}

// group is one replica. Fields below "worker-owned" are touched only by the
// worker goroutine the group is assigned to (and by Close after the workers
// have exited, and by StartGroup before the group is published).
type group struct {
	id uint64
	h  *Host
	w  *worker

	// Published for other goroutines.
	leader    atomic.Uint64
	stTerm    atomic.Uint64
	stCommit  atomic.Uint64
	stApplied atomic.Uint64

	mu struct {
		sync.Mutex
		in      inbox
		queued  bool // on the worker's active list
		stopped bool
	}

	// worker-owned
	work      inbox // the inbox being processed (swapped with mu.in)
	rn        *raft.RawNode
	ms        *raft.MemoryStorage // st's cache
	st        *logStore           // raft's Storage
	sm        StateMachine
	dirty     bool   // on the worker's dirty list
	isLeader  bool   // as of the last Ready's SoftState
	term      uint64 // as of the last persisted HardState
	lastIndex uint64 // last log index in the engine
	applied   uint64
	snapIndex uint64 // index of the latest snapshot (created or restored)
	// snapBytes: size of the latest snapshot's data; logBytes: bytes of
	// the entries applied since it; sizes: index and size of every entry
	// applied and not yet compacted away (the compaction margin is chosen
	// by bytes as well as by count).
	snapBytes uint64
	logBytes  uint64
	sizes     []entrySize
	// cached: bytes of the applied entries in the cache (ms).
	cached uint64
	// snapFile names the snapshot file the engine's batches name for this
	// group ("" if none); snapWritten: a batch of this cycle names a new
	// one, so the older ones go once it is committed (and synced).
	snapFile    string
	snapWritten bool
	// snapWriting: a snapshot taken on the worker is being written to its
	// file by another goroutine (writeSnapshotAsync); no other starts.
	snapWriting bool
	// snapWG: that write (RemoveGroup waits for it before removing the
	// group's files, Host.Close before closing the engine).
	snapWG    sync.WaitGroup
	confState *pb.ConfState
	nextID    uint64
	inflight  map[uint64]*proposal // by proposal id; handed to raft
	nextRead  uint64
	readsPend map[uint64]*readBatch // waiting for their ReadState
	readsWait []*readBatch          // ReadState known, waiting for applied >= index
	conf      *confRequest          // this host's outstanding ChangeReplicas
	// forceSnap: a configuration change was applied. The next snapshot a
	// new replica receives must name it in its ConfState (raft refuses a
	// snapshot that does not), so one is taken right away.
	forceSnap bool
	// segForce: the next snapshot is taken to release old log segments
	// (wantSnapshot) and compacts the log through it, without a margin.
	segForce bool
	// snapRetry: a snapshot failed; none is tried before this time (the
	// triggers that asked for it, forceSnap among them, still hold).
	snapRetry time.Time
	// refusedLogged: when refuse last logged a dropped message.
	refusedLogged time.Time
	// removed: RemoveGroup took the group off its worker; nothing may
	// touch it any more (membership.go).
	removed bool
}

func newGroup(h *Host, id uint64, sm StateMachine, ms *raft.MemoryStorage, w *worker) *group {
	g := &group{
		id: id,
		h:  h,
		w:  w,
		sm: sm,
		ms: ms,
		st: &logStore{MemoryStorage: ms, eng: h.eng, group: id, reads: &h.stats.logReads, onLoadError: func(err error) {
			h.log.Error().Err(err).Uint64("group", id).Msg("cannot read the snapshot back to send it; raft retries later")
		}},
		confState: pb.EnsureConfState(nil),
		inflight:  make(map[uint64]*proposal),
		readsPend: make(map[uint64]*readBatch),
	}
	g.st.loadWG = &g.snapWG
	g.st.beforeLoad = h.cfg.beforeSnapLoad
	return g
}

// enqueue adds work for the group's worker under the group's lock.
func (g *group) enqueue(add func(*inbox)) error {
	g.mu.Lock()
	if g.mu.stopped {
		g.mu.Unlock()
		return ErrStopped
	}
	add(&g.mu.in)
	schedule := !g.mu.queued
	g.mu.queued = true
	g.mu.Unlock()
	if schedule {
		g.w.schedule(g)
	}
	return nil
}

func (g *group) publishStatus(commit uint64) {
	g.stTerm.Store(g.term)
	if commit > 0 {
		g.stCommit.Store(commit)
	}
	g.stApplied.Store(g.applied)
}

// refuse reports whether m is a message that only a former incarnation of
// this replica could act on (its host lost its data directory and the
// replica started again empty; doc.go, "Snapshots and membership"), and
// logs it. Such messages are dropped instead of stepped:
//
//   - a heartbeat whose commit index is beyond the log the engine holds:
//     the leader sends min(commit, what the replica acknowledged), so it
//     comes from a record of acknowledgements this log never made (a
//     heartbeat queued for the host before its replica was removed and
//     added back), and raft would panic on it;
//   - a vote or pre-vote request to a replica whose log is empty (it has
//     received nothing yet, not even a snapshot): no configuration that
//     counts its vote can have been formed with this replica, whose log is
//     empty, and granting it would count as the vote of a voter that
//     forgot its log and its earlier votes. It is answered with a
//     rejection (in the request's term, as raft answers pre-votes; a
//     rejection promises nothing, so nothing is persisted first), so the
//     candidate need not wait for it.
func (g *group) refuse(m *pb.Message) bool {
	var why string
	switch m.GetType() {
	case pb.MsgHeartbeat:
		if m.GetCommit() > g.lastIndex {
			why = "heartbeat with a commit index beyond this replica's log"
		}
	case pb.MsgVote, pb.MsgPreVote:
		if g.lastIndex == 0 {
			why = "vote request to a replica with an empty log"
			typ := pb.MsgVoteResp
			if m.GetType() == pb.MsgPreVote {
				typ = pb.MsgPreVoteResp
			}
			g.h.cfg.Transport.Send([]GroupMessage{{Group: g.id, Msg: &pb.Message{
				Type: typ.Enum(), From: new(g.h.cfg.ID), To: new(m.GetFrom()), Term: new(m.GetTerm()), Reject: new(true),
			}}})
		}
	}
	if why == "" {
		return false
	}
	if time.Since(g.refusedLogged) >= time.Minute {
		g.refusedLogged = time.Now()
		g.h.log.Warn().Uint64("group", g.id).Uint64("from", m.GetFrom()).Uint64("term", m.GetTerm()).
			Uint64("commit", m.GetCommit()).Uint64("last_index", g.lastIndex).
			Msg("refused a " + why + " (meant for a former replica on this host that lost its log?)")
	}
	return true
}

// drain steps everything queued for the group into its RawNode.
func (g *group) drain() {
	g.mu.Lock()
	g.work, g.mu.in = g.mu.in, g.work
	g.mu.queued = false
	g.mu.Unlock()
	in := &g.work
	for _, m := range in.msgs {
		if g.refuse(m) {
			continue
		}
		if err := g.rn.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
			g.h.log.Debug().Err(err).Uint64("group", g.id).Str("type", m.GetType().String()).Msg("step")
		}
	}
	for _, r := range in.reports {
		if r.unreachable {
			g.rn.ReportUnreachable(r.to)
		} else if r.snapOK {
			g.rn.ReportSnapshot(r.to, raft.SnapshotFinish)
		} else {
			g.rn.ReportSnapshot(r.to, raft.SnapshotFailure)
		}
	}
	if len(in.props) > 0 || len(in.reads) > 0 || len(in.confs) > 0 {
		st := g.rn.BasicStatus()
		if len(in.props) > 0 {
			g.propose(&st, in.props)
		}
		if len(in.reads) > 0 {
			g.readIndex(&st, in.reads)
		}
		// Configuration changes last: the next Ready's last entry is ours.
		for _, c := range in.confs {
			g.proposeConf(&st, c)
		}
	}
	for _, f := range in.fns {
		f.run()
	}
	in.reset()
}

// Batch framing of one raft entry:
//
//	frameVersion  proposer(uvarint)  incarnation(8 bytes LE)
//	then per command: id(uvarint) len(uvarint) data
const frameVersion = 0x01

// propose frames all queued proposals into as few entries as
// MaxProposalBytes allows (usually one) and hands them to raft.
func (g *group) propose(st *raft.BasicStatus, props []*proposal) {
	if st.RaftState != raft.StateLeader {
		err := &NotLeaderError{Group: g.id, Leader: st.Lead}
		for _, p := range props {
			p.done(nil, err)
		}
		return
	}
	h := g.h
	maxBytes := h.cfg.MaxProposalBytes
	var hdr [1 + binary.MaxVarintLen64 + 8]byte
	hdr[0] = frameVersion
	n := 1 + binary.PutUvarint(hdr[1:], h.cfg.ID)
	binary.LittleEndian.PutUint64(hdr[n:], h.incarnation)
	n += 8
	for start := 0; start < len(props); {
		size, end := n, start
		for end < len(props) {
			sz := 2*binary.MaxVarintLen64 + len(props[end].cmd)
			if end > start && size+sz > maxBytes {
				break
			}
			size += sz
			end++
		}
		buf := make([]byte, 0, size)
		buf = append(buf, hdr[:n]...)
		for _, p := range props[start:end] {
			g.nextID++
			p.id, p.term = g.nextID, st.GetTerm()
			buf = binary.AppendUvarint(buf, p.id)
			buf = binary.AppendUvarint(buf, uint64(len(p.cmd)))
			buf = append(buf, p.cmd...)
		}
		if err := g.rn.Propose(buf); err != nil {
			var ferr error = fmt.Errorf("%w: %w", ErrDropped, err)
			if g.rn.BasicStatus().RaftState != raft.StateLeader {
				ferr = &NotLeaderError{Group: g.id, Leader: g.rn.BasicStatus().Lead}
			}
			for _, p := range props[start:end] {
				p.done(nil, ferr)
			}
		} else {
			for _, p := range props[start:end] {
				g.inflight[p.id] = p
			}
			h.stats.proposals.Add(uint64(end - start))
			h.stats.entries.Add(1)
		}
		start = end
	}
}

// cmdOwner says whose future a decoded command completes.
type cmdOwner struct {
	mine bool
	id   uint64
}

// decodeFrame appends the commands of one entry.
func (g *group) decodeFrame(index uint64, data []byte, cmds []Command, owners []cmdOwner) ([]Command, []cmdOwner, error) {
	if len(data) < 1 || data[0] != frameVersion {
		return cmds, owners, fmt.Errorf("entry %d: unknown frame version", index)
	}
	proposer, k := binary.Uvarint(data[1:])
	if k <= 0 || len(data) < 1+k+8 {
		return cmds, owners, fmt.Errorf("entry %d: corrupt frame header", index)
	}
	inc := binary.LittleEndian.Uint64(data[1+k:])
	mine := proposer == g.h.cfg.ID && inc == g.h.incarnation
	rest := data[1+k+8:]
	for len(rest) > 0 {
		id, k1 := binary.Uvarint(rest)
		if k1 <= 0 {
			return cmds, owners, fmt.Errorf("entry %d: corrupt command id", index)
		}
		l, k2 := binary.Uvarint(rest[k1:])
		if k2 <= 0 || uint64(len(rest)-k1-k2) < l {
			return cmds, owners, fmt.Errorf("entry %d: corrupt command length", index)
		}
		off := k1 + k2
		cmds = append(cmds, Command{Index: index, Data: rest[off : off+int(l) : off+int(l)], NoResult: !mine || g.inflight[id] == nil})
		owners = append(owners, cmdOwner{mine: mine, id: id})
		rest = rest[off+int(l):]
	}
	return cmds, owners, nil
}

func (g *group) readIndex(st *raft.BasicStatus, reads []*readRequest) {
	if st.RaftState != raft.StateLeader {
		err := &NotLeaderError{Group: g.id, Leader: st.Lead}
		for _, r := range reads {
			r.done(nil, err)
		}
		return
	}
	g.nextRead++
	b := &readBatch{id: g.nextRead, reads: slices.Clone(reads)}
	g.readsPend[b.id] = b
	var ctx [8]byte
	binary.LittleEndian.PutUint64(ctx[:], b.id)
	g.rn.ReadIndex(ctx[:])
	g.h.stats.readIndexes.Add(1)
}

func (g *group) proposeConf(st *raft.BasicStatus, c *confRequest) {
	switch {
	case st.RaftState != raft.StateLeader:
		c.done <- &NotLeaderError{Group: g.id, Leader: st.Lead}
		return
	case g.conf != nil:
		c.done <- ErrConfChangeInProgress
		return
	}
	g.nextID++
	c.ctx = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, g.h.incarnation), g.nextID)
	c.cc.Context = c.ctx
	c.term = st.GetTerm()
	if err := g.rn.ProposeConfChange(c.cc); err != nil {
		c.done <- fmt.Errorf("%w: %w", ErrDropped, err)
		return
	}
	c.awaitIndex = true
	g.conf = c
}

// restore installs a snapshot into the state machine. The bootstrap
// snapshot (index 1) carries no data and is not passed to Restore.
func (g *group) restore(snap *pb.Snapshot) error {
	idx := snap.GetMetadata().GetIndex()
	if idx > 1 {
		if err := g.sm.Restore(snap.GetData()); err != nil {
			return fmt.Errorf("replication: group %d: restore snapshot at %d: %w", g.id, idx, err)
		}
		g.h.stats.restores.Add(1)
	}
	g.applied, g.snapIndex = idx, idx
	g.snapBytes, g.logBytes = uint64(len(snap.GetData())), 0
	g.forceSnap, g.snapRetry = false, time.Time{} // its ConfState is the latest
	g.sizes = g.sizes[:0]
	g.cached = 0
	g.confState = proto.Clone(pb.EnsureConfState(snap.GetMetadata().GetConfState())).(*pb.ConfState)
	return nil
}

// apply runs after the Ready's writes are durable: it restores an incoming
// snapshot, applies the committed entries (one StateMachine.Apply for all
// their commands), completes futures, serves reads that became ready, and
// fails what a change of leadership or term leaves without an outcome.
func (g *group) apply(w *worker, rd *raft.Ready) {
	h := g.h
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := g.restore(rd.Snapshot); err != nil {
			h.log.Error().Err(err).Msg("cannot restore snapshot")
			panic(err)
		}
	}
	for _, rs := range rd.ReadStates {
		if len(rs.RequestCtx) != 8 {
			continue
		}
		id := binary.LittleEndian.Uint64(rs.RequestCtx)
		if b := g.readsPend[id]; b != nil {
			delete(g.readsPend, id)
			b.index = rs.Index
			g.readsWait = append(g.readsWait, b)
		}
	}
	cmds, owners := w.cmds[:0], w.owners[:0]
	for _, e := range rd.CommittedEntries {
		idx := e.GetIndex()
		switch e.GetType() {
		case pb.EntryNormal:
			if len(e.GetData()) > 0 {
				var err error
				cmds, owners, err = g.decodeFrame(idx, e.GetData(), cmds, owners)
				if err != nil {
					h.log.Error().Err(err).Uint64("group", g.id).Msg("skipping undecodable entry")
				}
			}
		case pb.EntryConfChange:
			cc := &pb.ConfChange{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				panic(fmt.Sprintf("replication: group %d: corrupt conf change at %d: %v", g.id, idx, err))
			}
			g.confState = g.rn.ApplyConfChange(cc)
			g.forceSnap = true
		case pb.EntryConfChangeV2:
			cc := &pb.ConfChangeV2{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				panic(fmt.Sprintf("replication: group %d: corrupt conf change at %d: %v", g.id, idx, err))
			}
			g.confState = g.rn.ApplyConfChange(cc)
			g.forceSnap = true
			if c := g.conf; c != nil && len(c.ctx) > 0 && bytes.Equal(cc.GetContext(), c.ctx) {
				c.applied = true
			}
			h.log.Debug().Uint64("group", g.id).Uint64("index", idx).Str("conf", g.confState.String()).Msg("applied configuration change")
		}
		g.applied = idx
		n := uint64(len(e.GetData()))
		g.logBytes += n
		g.cached += n
		g.sizes = append(g.sizes, entrySize{idx, n})
	}
	g.trimCache()
	if len(cmds) > 0 {
		results := g.sm.Apply(cmds)
		h.stats.applies.Add(1)
		h.stats.applied.Add(uint64(len(cmds)))
		if len(results) != len(cmds) {
			h.log.Error().Uint64("group", g.id).Int("commands", len(cmds)).Int("results", len(results)).Msg("StateMachine.Apply returned the wrong number of results")
		}
		for i, o := range owners {
			if !o.mine {
				continue
			}
			p := g.inflight[o.id]
			if p == nil {
				continue
			}
			delete(g.inflight, o.id)
			var r []byte
			if i < len(results) {
				r = results[i]
			}
			p.done(r, nil)
		}
		clear(cmds)
	}
	w.cmds, w.owners = cmds[:0], owners[:0]
	g.serveReads()

	// Leadership and term changes: whatever raft was handed and did not
	// apply now has an unknown outcome.
	if rd.SoftState != nil {
		lead := rd.SoftState.RaftState == raft.StateLeader
		if g.isLeader && !lead {
			g.failInflight(0, ErrUnknownOutcome)
			g.failPendingReads(rd.SoftState.Lead)
		}
		g.isLeader = lead
	}
	if hs := rd.HardState; !raft.IsEmptyHardState(hs) && hs.GetTerm() > g.term {
		g.term = hs.GetTerm()
		g.failInflight(g.term, ErrUnknownOutcome)
		g.failPendingReads(g.leader.Load())
	}
	if c := g.conf; c != nil {
		switch {
		case c.applied && len(g.confState.GetVotersOutgoing()) == 0:
			g.conf = nil
			c.done <- nil
		case !c.applied && c.index != 0 && g.applied >= c.index:
			// raft replaced it (another change was pending).
			g.conf = nil
			c.done <- ErrDropped
		case !c.applied && c.term < g.term:
			g.conf = nil
			c.done <- ErrUnknownOutcome
		}
	}
	g.publishStatus(rd.HardState.GetCommit())
}

// failInflight fails proposals handed to raft in a term before term (all
// of them if term is 0).
func (g *group) failInflight(term uint64, err error) {
	for id, p := range g.inflight {
		if term == 0 || p.term < term {
			delete(g.inflight, id)
			p.done(nil, err)
		}
	}
}

// failPendingReads fails reads still waiting for their ReadState: raft
// forgets them when leadership changes. Reads whose ReadState arrived stay:
// their index is a valid linearization point.
func (g *group) failPendingReads(lead uint64) {
	if len(g.readsPend) == 0 {
		return
	}
	err := &NotLeaderError{Group: g.id, Leader: lead}
	for id, b := range g.readsPend {
		delete(g.readsPend, id)
		for _, r := range b.reads {
			r.done(nil, err)
		}
	}
}

func (g *group) serveReads() {
	if len(g.readsWait) == 0 {
		return
	}
	keep := g.readsWait[:0]
	for _, b := range g.readsWait {
		if b.index > g.applied {
			keep = append(keep, b)
			continue
		}
		for _, r := range b.reads {
			r.done(g.sm.Query(r.query), nil)
		}
		g.h.stats.reads.Add(uint64(len(b.reads)))
	}
	clear(g.readsWait[len(keep):])
	g.readsWait = keep
}

// trimCache drops applied entries from the in-memory cache when they hold
// more than LogCacheBytes, keeping the newest half of that.
func (g *group) trimCache() {
	limit := g.h.cfg.LogCacheBytes
	if g.cached <= limit {
		return
	}
	var keep uint64
	c := g.applied
	for i := len(g.sizes) - 1; i >= 0; i-- {
		s := g.sizes[i]
		if keep+s.bytes > limit/2 {
			c = s.index
			break
		}
		keep += s.bytes
		c = s.index - 1
	}
	if first, _ := g.ms.FirstIndex(); c >= first {
		if err := g.ms.Compact(c); err != nil {
			g.h.log.Error().Err(err).Uint64("group", g.id).Uint64("index", c).Msg("log cache compaction")
			return
		}
	}
	g.cached = keep
}

// entrySize is the data size of one applied log entry.
type entrySize struct{ index, bytes uint64 }

// snapshotRetryInterval: after a failed snapshot, the next is tried no
// sooner than this. Not at once, on every cycle: each try copies the whole
// state machine. Not after SnapshotEntries more entries, as before: the
// snapshot forced by a configuration change is the only one a replica
// being added can restore, and it would wait for it that long.
const snapshotRetryInterval = time.Second

// wantSnapshot: SnapshotEntries entries, or SnapshotBytes bytes (at least
// twice the last snapshot), were applied since the last snapshot, or a
// configuration change was applied.
func (g *group) wantSnapshot() bool {
	if g.applied <= g.snapIndex || g.snapWriting {
		return false
	}
	if !g.snapRetry.IsZero() {
		if time.Now().Before(g.snapRetry) {
			return false
		}
		g.snapRetry = time.Time{}
	}
	cfg := &g.h.cfg
	if up := g.h.eng.seg.pressed(g.id); up > g.snapIndex && g.applied >= up {
		// The group keeps old segments alive (segment.go, pressed):
		// truncate through the snapshot, without a margin.
		g.segForce = true
		return true
	}
	return g.forceSnap || g.applied-g.snapIndex >= cfg.SnapshotEntries ||
		g.logBytes >= max(cfg.SnapshotBytes, 2*g.snapBytes)
}

// compactTo returns the index up to which the log may be compacted after a
// snapshot at idx: it keeps at most min(1000, SnapshotEntries/2)
// entries and SnapshotBytes/4 bytes behind the snapshot, so slightly slow
// followers catch up from the log without the margin holding much memory.
// 0: nothing to compact.
func (g *group) compactTo(idx uint64) uint64 {
	if g.segForce {
		g.segForce = false
		return idx
	}
	margin := min(uint64(1000), g.h.cfg.SnapshotEntries/2)
	budget := g.h.cfg.SnapshotBytes / 4
	var ci uint64
	if idx > margin {
		ci = idx - margin
	}
	// Walk back from the snapshot's entry while the margin allows.
	var kept, bytes uint64
	for i := len(g.sizes) - 1; i >= 0; i-- {
		s := g.sizes[i]
		if s.index > idx {
			continue // applied after the snapshot (written meanwhile)
		}
		if kept == margin || bytes+s.bytes > budget {
			ci = max(ci, s.index)
			break
		}
		kept++
		bytes += s.bytes
	}
	return ci
}

// maybeSnapshot takes a snapshot and compacts the log if wantSnapshot.
// Writes go into b.
func (g *group) maybeSnapshot(b *logBatch) {
	if !g.wantSnapshot() {
		return
	}
	data, err := g.sm.Snapshot()
	if err != nil {
		g.h.log.Error().Err(err).Uint64("group", g.id).Msg("state machine snapshot failed; will retry")
		g.snapRetry = time.Now().Add(snapshotRetryInterval)
		return
	}
	term, err := g.st.Term(g.applied)
	if err != nil {
		g.h.log.Error().Err(err).Uint64("group", g.id).Msg("create snapshot: term of the applied index; will retry")
		g.snapRetry = time.Now().Add(snapshotRetryInterval)
		return
	}
	// Not MemoryStorage.CreateSnapshot: it returns a clone of the data.
	snap := &pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{
		Index:     new(g.applied),
		Term:      new(term),
		ConfState: proto.Clone(g.confState).(*pb.ConfState),
	}}
	if len(data) >= asyncSnapshotBytes && !g.forceSnap {
		g.writeSnapshotAsync(snap)
		return
	}
	var file string
	if len(data) > 0 {
		if f := g.h.cfg.beforeSnapWrite; f != nil {
			f()
		}
		if file, err = g.h.eng.writeSnapFile(g.id, snap, !g.h.cfg.NoSync); err != nil {
			g.h.log.Error().Err(err).Uint64("group", g.id).Msg("snapshot not written; will retry")
			g.snapRetry = time.Now().Add(snapshotRetryInterval)
			return
		}
	}
	g.forceSnap = false
	g.installSnapshot(b, snap, file, g.logBytes)
}

// asyncSnapshotBytes: a snapshot at least this large is written to its
// file by another goroutine (writeSnapshotAsync). A variable for tests.
var asyncSnapshotBytes = 4 << 20

// writeSnapshotAsync writes snap (taken on the worker just now) to its
// file on another goroutine, then hands it back to the worker, which
// installs it (finishSnapshot). Writing a large state machine's snapshot
// and syncing it took seconds (256 MiB: up to 3.3 s), during which the
// worker served none of its groups: every group on it stalled, and a
// leader among them sent no heartbeats. Only the copy the state machine
// makes (Snapshot) stays on the worker. Not for the snapshot a
// configuration change forces: a replica being added waits for it.
func (g *group) writeSnapshotAsync(snap *pb.Snapshot) {
	h := g.h
	g.snapWriting = true
	logBytes := g.logBytes // the entries it covers; more are applied meanwhile
	g.snapWG.Add(1)
	go func() {
		defer g.snapWG.Done()
		if f := h.cfg.beforeSnapWrite; f != nil {
			f()
		}
		file, err := h.eng.writeSnapFile(g.id, snap, !h.cfg.NoSync)
		// Dropped only when the host stops: then no batch names the
		// file, and the next snapshot of the group removes it.
		_ = g.enqueue(func(in *inbox) {
			in.fns = append(in.fns, workerFn{run: func() { g.finishSnapshot(snap, file, err, logBytes) }})
		})
	}()
}

// finishSnapshot installs a snapshot writeSnapshotAsync wrote, in a batch
// of its own (synced: the older file goes next), on the worker.
func (g *group) finishSnapshot(snap *pb.Snapshot, file string, err error, logBytes uint64) {
	h := g.h
	g.snapWriting = false
	if err != nil {
		h.log.Error().Err(err).Uint64("group", g.id).Msg("snapshot not written; will retry")
		g.snapRetry = time.Now().Add(snapshotRetryInterval)
		return
	}
	if snap.GetMetadata().GetIndex() <= g.snapIndex {
		// A newer snapshot was restored meanwhile (from the leader).
		if err := h.eng.fs.Remove(h.eng.fs.PathJoin(h.eng.snapDir, file)); err != nil {
			h.log.Warn().Err(err).Uint64("group", g.id).Msg("removing an outdated snapshot file")
		}
		return
	}
	b := h.eng.newBatch()
	defer b.close()
	if !g.installSnapshot(b, snap, file, logBytes) {
		return
	}
	h.commitBatch(b, !h.cfg.NoSync, " (snapshot)")
	g.w.removeOldSnapFiles([]*group{g})
}

// installSnapshot makes snap, its data in file, the group's latest
// snapshot in b and compacts the log behind it; logBytes: the bytes of the
// applied entries it covers. False if b refused it (retried later).
func (g *group) installSnapshot(b *logBatch, snap *pb.Snapshot, file string, logBytes uint64) bool {
	if err := b.setSnapshot(g.id, snap, false, file); err != nil {
		g.h.log.Error().Err(err).Uint64("group", g.id).Msg("persist snapshot; will retry")
		_ = g.h.eng.removeSnapFiles(g.id, g.snapFile)
		g.snapRetry = time.Now().Add(snapshotRetryInterval)
		return false
	}
	idx := snap.GetMetadata().GetIndex()
	g.st.snap = withoutData(snap)
	g.snapFile = file
	g.snapWritten = true
	g.snapIndex = idx
	g.snapBytes, g.logBytes = uint64(len(snap.GetData())), g.logBytes-min(logBytes, g.logBytes)
	g.h.stats.snapshots.Add(1)
	// Keep a margin of entries so slow followers catch up from the log.
	if ci := g.compactTo(idx); ci >= g.st.first {
		term, err := g.st.Term(ci)
		if err != nil {
			g.h.log.Error().Err(err).Uint64("group", g.id).Uint64("index", ci).Msg("log compaction: term unknown")
			return true
		}
		if first, _ := g.ms.FirstIndex(); ci >= first {
			_ = g.ms.Compact(ci)
		}
		b.truncatePrefix(g.id, ci)
		g.st.resetFirst(ci+1, term)
		// Forget the sizes of compacted entries (they are in index order).
		n := 0
		for n < len(g.sizes) && g.sizes[n].index <= ci {
			n++
		}
		g.sizes = append(g.sizes[:0], g.sizes[n:]...)
	}
	return true
}

// shutdown fails everything the group still holds. Called by Close after the
// workers have exited.
func (g *group) shutdown() {
	g.mu.Lock()
	g.mu.stopped = true
	in := g.mu.in
	g.mu.in = inbox{}
	g.mu.Unlock()
	for _, p := range in.props {
		p.done(nil, ErrStopped)
	}
	for _, r := range in.reads {
		r.done(nil, ErrStopped)
	}
	for _, c := range in.confs {
		c.done <- ErrStopped
	}
	for _, f := range in.fns {
		if f.stop != nil {
			f.stop()
		}
	}
	g.failInflight(0, ErrUnknownOutcome)
	for id, b := range g.readsPend {
		delete(g.readsPend, id)
		for _, r := range b.reads {
			r.done(nil, ErrStopped)
		}
	}
	for _, b := range g.readsWait {
		for _, r := range b.reads {
			r.done(nil, ErrStopped)
		}
	}
	g.readsWait = nil
	if c := g.conf; c != nil {
		g.conf = nil
		c.done <- ErrUnknownOutcome
	}
}

// worker drives a set of groups: one goroutine, one engine batch per cycle.
type worker struct {
	h      *Host
	notify chan struct{} // capacity 1: "there is work"

	mu struct {
		sync.Mutex
		active []*group // groups with something in their inbox
		ticks  int
		groups []*group // all groups; copy-on-write
	}

	// worker-owned scratch
	spare    []*group
	dirty    []*group // groups that may have a Ready
	rds      []raft.Ready
	rdGroups []*group
	cmds     []Command
	owners   []cmdOwner
	early    []bool // per Ready of a cycle: applied before its fsync
	// seg appends the worker's segment records (segment.go), built in rec.
	seg *segWriter
	rec segRecord
}

// removeOldSnapFiles removes, for each of gs that named a new snapshot file
// in a batch just committed, its older snapshot files.
func (w *worker) removeOldSnapFiles(gs []*group) {
	for _, g := range gs {
		if !g.snapWritten {
			continue
		}
		g.snapWritten = false
		if err := w.h.eng.removeSnapFiles(g.id, g.snapFile); err != nil {
			w.h.log.Warn().Err(err).Uint64("group", g.id).Msg("removing old snapshot files")
		}
	}
}

func newWorker(h *Host) *worker {
	return &worker{h: h, notify: make(chan struct{}, 1)}
}

func (w *worker) wake() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *worker) schedule(g *group) {
	w.mu.Lock()
	w.mu.active = append(w.mu.active, g)
	w.mu.Unlock()
	w.wake()
}

func (w *worker) tick() {
	w.mu.Lock()
	w.mu.ticks++
	w.mu.Unlock()
	w.wake()
}

func (w *worker) addGroup(g *group) {
	w.mu.Lock()
	w.mu.groups = append(w.mu.groups[:len(w.mu.groups):len(w.mu.groups)], g)
	w.mu.Unlock()
	w.wake()
}

func (w *worker) markDirty(g *group) {
	if !g.dirty && !g.removed {
		g.dirty = true
		w.dirty = append(w.dirty, g)
	}
}

func (w *worker) run(stop <-chan struct{}) {
	for {
		if len(w.dirty) == 0 {
			select {
			case <-stop:
				return
			case <-w.notify:
			}
		} else {
			select {
			case <-stop:
				return
			default:
			}
		}
		w.mu.Lock()
		active := w.mu.active
		w.mu.active = w.spare[:0]
		ticks := min(w.mu.ticks, maxTicksPerCycle)
		w.mu.ticks = 0
		all := w.mu.groups
		w.mu.Unlock()

		for _, g := range active {
			if g.removed {
				continue
			}
			g.drain()
			w.markDirty(g)
		}
		clear(active)
		w.spare = active[:0]
		if ticks > 0 {
			now := time.Now()
			for _, g := range all {
				for range ticks {
					g.rn.Tick()
				}
				g.st.dropIdleSnapshot(now)
				w.markDirty(g)
			}
		}
		w.cycle()
	}
}

// mustFollowSync reports whether a message may only leave after the Ready's
// writes are durable: responses that acknowledge entries or grant votes.
// Everything else (notably the leader's MsgApp) leaves before the fsync.
func mustFollowSync(t pb.MessageType) bool {
	return t == pb.MsgAppResp || t == pb.MsgVoteResp || t == pb.MsgPreVoteResp
}

// cycle handles the Readies of all dirty groups: one engine batch and one
// fsync for all of them, messages, apply, Advance.
func (w *worker) cycle() {
	h := w.h
	rds, gs := w.rds[:0], w.rdGroups[:0]
	for _, g := range w.dirty {
		g.dirty = false
		if !g.removed && g.rn.HasReady() {
			rds = append(rds, g.rn.Ready())
			gs = append(gs, g)
		}
	}
	clear(w.dirty)
	w.dirty = w.dirty[:0]
	if len(rds) == 0 {
		return
	}
	h.stats.cycles.Add(1)
	h.stats.readies.Add(uint64(len(rds)))

	// 0. Apply the committed entries this replica already holds durably
	// (earlier cycles persisted them) before this cycle's fsync, as etcd
	// applies while it persists: they are committed, so durable on a
	// quorum, and their results need not wait for other entries' fsync.
	// A leader's committed entries always qualify (raft counts its own
	// vote for an entry only after the cycle that persisted it), so under
	// load a proposal's answer no longer waits for the fsync of the
	// proposals that arrived while it was being replicated. A Ready with a
	// snapshot, or with committed entries it also brings to persist (a
	// follower learning entries and their commit at once), is applied
	// after the fsync as before: the in-memory log must hold what is
	// applied (trimCache compacts it up to the applied index).
	applied := slices.Grow(w.early[:0], len(rds))[:len(rds)]
	for i := range rds {
		rd, g := &rds[i], gs[i]
		applied[i] = false
		if rd.SoftState != nil {
			// Before apply, which names the leader to the requests it
			// fails.
			if old := g.leader.Swap(rd.SoftState.Lead); old != rd.SoftState.Lead && rd.SoftState.Lead != 0 {
				g.h.stats.leaderChanges.Add(1)
			}
		}
		if n := len(rd.CommittedEntries); n > 0 && raft.IsEmptySnap(rd.Snapshot) {
			if last, _ := g.ms.LastIndex(); rd.CommittedEntries[n-1].GetIndex() <= last {
				g.apply(w, rd)
				applied[i] = true
			}
		}
	}
	w.early = applied

	// 1. Persist everything in one batch; send what may precede the fsync.
	if w.seg == nil {
		w.seg = h.eng.seg.newWriter()
	}
	b := h.eng.newBatch().withSegment(w.seg, &w.rec)
	defer b.close()
	sync := false
	var early, late []GroupMessage
	for i := range rds {
		rd, g := &rds[i], gs[i]
		if !raft.IsEmptySnap(rd.Snapshot) {
			var file string
			if len(rd.Snapshot.GetData()) > 0 {
				var err error
				if file, err = h.eng.writeSnapFile(g.id, rd.Snapshot, !h.cfg.NoSync); err != nil {
					h.log.Error().Err(err).Msg("cannot store an incoming snapshot")
					panic(err)
				}
			}
			if err := b.setSnapshot(g.id, rd.Snapshot, true, file); err != nil {
				panic(fmt.Sprintf("replication: group %d: encode snapshot: %v", g.id, err))
			}
			g.snapFile = file
			g.snapWritten = true
			g.lastIndex = rd.Snapshot.GetMetadata().GetIndex()
			sync = true
		}
		if n := len(rd.Entries); n > 0 {
			b.appendEntries(g.id, rd.Entries, g.lastIndex)
			g.lastIndex = rd.Entries[n-1].GetIndex()
			if c := g.conf; c != nil && c.awaitIndex {
				c.awaitIndex = false
				c.index = g.lastIndex
			}
		}
		if !raft.IsEmptyHardState(rd.HardState) {
			b.setHardState(g.id, rd.HardState)
		}
		sync = sync || rd.MustSync
		for _, m := range rd.Messages {
			gm := GroupMessage{Group: g.id, Msg: m}
			if mustFollowSync(m.GetType()) {
				late = append(late, gm)
			} else {
				early = append(early, gm)
			}
		}
	}
	if len(early) > 0 {
		h.cfg.Transport.Send(early)
	}
	if !b.empty() {
		sync = sync && !h.cfg.NoSync
		if sync && h.cfg.beforeSync != nil {
			h.cfg.beforeSync()
		}
		h.commitBatch(b, sync, "")
	}
	w.removeOldSnapFiles(gs)

	// 2. Durable: update the in-memory log and let the acknowledgements go.
	for i := range rds {
		rd, g := &rds[i], gs[i]
		if !raft.IsEmptySnap(rd.Snapshot) {
			if err := g.ms.ApplySnapshot(withoutData(rd.Snapshot)); err != nil && !errors.Is(err, raft.ErrSnapOutOfDate) {
				panic(fmt.Sprintf("replication: group %d: apply snapshot: %v", g.id, err))
			}
			g.st.syncFirst() // the engine dropped its log too
		}
		if err := g.ms.Append(rd.Entries); err != nil {
			panic(fmt.Sprintf("replication: group %d: append: %v", g.id, err))
		}
		if !raft.IsEmptyHardState(rd.HardState) {
			_ = g.ms.SetHardState(proto.Clone(rd.HardState).(*pb.HardState))
		}
	}
	if len(late) > 0 {
		h.cfg.Transport.Send(late)
	}

	// 3. Apply, advance, maybe snapshot.
	var sb *logBatch
	var snapped []*group
	for i := range rds {
		rd, g := &rds[i], gs[i]
		if !applied[i] {
			g.apply(w, rd)
		}
		g.rn.Advance(*rd)
		if g.wantSnapshot() {
			if sb == nil {
				sb = h.eng.newBatch()
				defer sb.close()
			}
			g.maybeSnapshot(sb)
			snapped = append(snapped, g)
		}
		if g.rn.HasReady() {
			w.markDirty(g)
		}
		rds[i] = raft.Ready{}
		gs[i] = nil
	}
	if sb != nil && !sb.empty() {
		// Synced only because a new snapshot file replaces an older one,
		// which is removed next: otherwise losing this batch would only
		// mean replaying more entries.
		sync := !h.cfg.NoSync && slices.ContainsFunc(snapped, func(g *group) bool { return g.snapWritten })
		h.commitBatch(sb, sync, " (snapshot)")
		w.removeOldSnapFiles(snapped)
	}
	w.rds, w.rdGroups = rds[:0], gs[:0]
}

// commitBatch commits b (with fsync if sync) and counts it. A failed
// commit panics: the log can no longer be trusted to hold what raft
// believes it holds, and going on could lose acknowledged writes.
func (h *Host) commitBatch(b *logBatch, sync bool, what string) {
	if err := b.commit(sync); err != nil {
		h.log.Error().Err(err).Msg("log engine commit failed" + what)
		panic(fmt.Sprintf("replication: log engine commit failed: %v", err))
	}
	h.stats.batches.Add(1)
	if sync {
		h.stats.fsyncs.Add(1)
	}
}
