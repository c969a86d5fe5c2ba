package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/replication"
)

// layout is what the server routes by: the directory as this host last read
// it (or the bootstrap configuration) and the groups running here. It is
// immutable once published; writers copy it.
type layout struct {
	version  uint64 // directory version; 0 = bootstrap configuration
	hosts    map[uint64]string
	memnodes map[uint64]MemnodeSpec
	local    map[uint64]bool // memnode groups running on this host
}

func newLayout(hosts map[uint64]string, specs []MemnodeSpec) *layout {
	l := &layout{hosts: map[uint64]string{}, memnodes: map[uint64]MemnodeSpec{}, local: map[uint64]bool{}}
	for id, a := range hosts {
		l.hosts[id] = a
	}
	for _, m := range specs {
		l.memnodes[m.ID] = MemnodeSpec{ID: m.ID, Replicas: slices.Clone(m.Replicas)}
	}
	return l
}

func (l *layout) clone() *layout {
	n := &layout{version: l.version, hosts: l.hosts, memnodes: l.memnodes, local: map[uint64]bool{}}
	for k, v := range l.local {
		n.local[k] = v
	}
	return n
}

// layout returns the current layout.
func (s *Server) layout() *layout { return s.lay.Load() }

// updateLayout applies f to a copy of the layout and publishes it.
func (s *Server) updateLayout(f func(l *layout)) {
	s.layMu.Lock()
	defer s.layMu.Unlock()
	l := s.lay.Load().clone()
	f(l)
	s.lay.Store(l)
}

// setLocal records whether memnode's group runs here.
func (s *Server) setLocal(mn uint64, on bool) {
	s.updateLayout(func(l *layout) {
		if on {
			l.local[mn] = true
		} else {
			delete(l.local, mn)
		}
	})
}

// installDirectory makes d the routing layout if it is newer.
func (s *Server) installDirectory(d *client.Directory) {
	s.updateLayout(func(l *layout) {
		if d.Version < l.version {
			return
		}
		l.version = d.Version
		l.hosts = map[uint64]string{}
		for _, h := range d.Hosts {
			l.hosts[h.ID] = h.Addr
		}
		// This host's configured addresses win for the hosts it names
		// (see doc.go: Addresses).
		for id, a := range s.cfgHosts {
			l.hosts[id] = a
		}
		l.memnodes = map[uint64]MemnodeSpec{}
		for _, m := range d.Memnodes {
			l.memnodes[m.ID] = MemnodeSpec{ID: m.ID, Replicas: slices.Clone(m.Replicas)}
		}
	})
}

// directorySource is how the server reads the directory for the Cluster
// RPC (the host's dirIO) and nudges the reconciler.
type directorySource interface {
	read(ctx context.Context) (*client.Directory, []byte, error)
	kick()
}

// membershipSource is the part of replication.Host the Replicas RPC uses.
type membershipSource interface {
	Groups() []uint64
	Membership(ctx context.Context, group uint64) (replication.Membership, error)
}

// Cluster describes the hosts and memnodes from the directory in memnode 0,
// read linearizably (ReadIndex at memnode 0's leader, through this host if
// it is not the leader). If the directory cannot be read (no quorum for
// memnode 0, not bootstrapped yet), it answers from the layout this host
// last knew, with directory_version telling which.
func (s *Server) Cluster(ctx context.Context, _ *tuttipb.ClusterRequest) (*tuttipb.ClusterInfo, error) {
	if s.dirs != nil {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		d, _, err := s.dirs.read(rctx)
		cancel()
		if err == nil {
			if d.Version > s.layout().version {
				s.installDirectory(d)
				s.dirs.kick()
			}
		} else {
			s.log.Debug().Err(err).Msg("cluster: directory unreadable; answering from the last known layout")
		}
	}
	l := s.layout()
	info := &tuttipb.ClusterInfo{MaxItemBytes: s.mcfg.MaxItemBytes, MaxItems: uint32(s.mcfg.MaxItems), DirectoryVersion: l.version}
	for id, addr := range l.hosts {
		info.Hosts = append(info.Hosts, &tuttipb.HostInfo{Id: id, Addr: addr})
	}
	sort.Slice(info.Hosts, func(i, j int) bool { return info.Hosts[i].Id < info.Hosts[j].Id })
	for _, m := range l.memnodes {
		mi := &tuttipb.MemnodeInfo{Id: m.ID, Replicas: slices.Clone(m.Replicas), Size: s.mcfg.Size}
		if l.local[m.ID] {
			mi.Leader = s.rep.Leader(m.ID)
		}
		info.Memnodes = append(info.Memnodes, mi)
	}
	sort.Slice(info.Memnodes, func(i, j int) bool { return info.Memnodes[i].Id < info.Memnodes[j].Id })
	return info, nil
}

// instanceHeader is the Replicas RPC's response header naming the
// answering process (Server.instance).
const instanceHeader = "tutti-instance"

// Replicas reports the Raft state of every memnode replica on this host.
func (s *Server) Replicas(ctx context.Context, _ *tuttipb.ReplicasRequest) (*tuttipb.ReplicasInfo, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(instanceHeader, s.instance))
	out := &tuttipb.ReplicasInfo{Host: s.hostID, FirstBoot: s.firstBoot.Load()}
	if out.FirstBoot {
		out.BootNonce = s.bootNonce.Load()
	}
	if p := s.bootPeers.Load(); p != nil {
		for _, b := range *p {
			out.FirstBootPeers = append(out.FirstBootPeers, &tuttipb.BootNonce{Host: b.GetHost(), Nonce: b.GetNonce()})
		}
	}
	if lost := s.lost.Load(); lost != nil {
		out.Lost = slices.Clone(*lost)
	}
	if s.members == nil {
		return out, nil
	}
	for _, g := range s.members.Groups() {
		m, err := s.members.Membership(ctx, g)
		if err != nil {
			continue // stopped meanwhile
		}
		out.Groups = append(out.Groups, replicaStatus(m))
	}
	return out, nil
}

func replicaStatus(m replication.Membership) *tuttipb.ReplicaGroupStatus {
	st := &tuttipb.ReplicaGroupStatus{
		Memnode: m.Group, Leader: m.Leader, Term: m.Term, Commit: m.Commit, Applied: m.Applied, LastIndex: m.LastIndex,
		Voters: m.Voters, Learners: m.Learners, VotersOutgoing: m.VotersOutgoing,
	}
	for id, p := range m.Progress {
		st.Progress = append(st.Progress, &tuttipb.ReplicaProgress{Host: id, Match: p.Match, Next: p.Next,
			State: p.State, RecentActive: p.RecentActive, Learner: p.Learner})
	}
	sort.Slice(st.Progress, func(i, j int) bool { return st.Progress[i].Host < st.Progress[j].Host })
	return st
}

// dirIO reads and writes the directory on behalf of a host: through the
// local server if this host leads memnode 0, else over a Session stream to
// the leader it is pointed at. It never uses the Cluster RPC (which reads
// the directory itself), so hosts cannot ask one another in circles.
type dirIO struct {
	h    *Host
	tids atomic.Uint64
	mu   struct {
		sync.Mutex
		conns  map[string]*grpc.ClientConn
		closed bool
	}
	kickCh chan struct{}
}

func newDirIO(h *Host) *dirIO {
	d := &dirIO{h: h, kickCh: make(chan struct{}, 1)}
	d.mu.conns = map[string]*grpc.ClientConn{}
	return d
}

func (d *dirIO) kick() {
	select {
	case d.kickCh <- struct{}{}:
	default:
	}
}

func (d *dirIO) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.closed = true
	for _, cc := range d.mu.conns {
		cc.Close()
	}
	d.mu.conns = nil
}

func (d *dirIO) conn(addr string) (*grpc.ClientConn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.closed {
		return nil, replication.ErrStopped
	}
	if cc := d.mu.conns[addr]; cc != nil {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, d.h.dialOptions()...)
	if err != nil {
		return nil, err
	}
	d.mu.conns[addr] = cc
	return cc, nil
}

// local runs req through this host's server and waits for its response.
func (d *dirIO) local(ctx context.Context, req *tuttipb.Request) (*tuttipb.Response, error) {
	ob := newOutbox()
	d.h.server.handle(req, ob)
	for {
		ob.mu.Lock()
		if len(ob.mu.pending) > 0 {
			r := ob.mu.pending[0]
			ob.mu.Unlock()
			return r, nil
		}
		ob.mu.Unlock()
		select {
		case <-ob.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// remote sends req to the host at addr over a short Session stream.
func (d *dirIO) remote(ctx context.Context, addr string, req *tuttipb.Request) (*tuttipb.Response, error) {
	cc, err := d.conn(addr)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := tuttipb.NewMemnodeClient(cc).Session(sctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&tuttipb.RequestBatch{Requests: []*tuttipb.Request{req}}); err != nil {
		return nil, err
	}
	for {
		b, err := st.Recv()
		if err != nil {
			return nil, err
		}
		for _, r := range b.GetResponses() {
			if r.GetId() == req.GetId() {
				_ = st.CloseSend()
				return r, nil
			}
		}
	}
}

// do runs req on memnode 0, following NOT_LEADER hints, until an answer
// other than NOT_LEADER/UNAVAILABLE or ctx's end.
func (d *dirIO) do(ctx context.Context, req *tuttipb.Request) (*tuttipb.Response, error) {
	self := d.h.cfg.ID
	var last error = errors.New("no answer")
	tried := map[uint64]int{}
	next := self
	for attempt := 0; ctx.Err() == nil && attempt < 16; attempt++ {
		if attempt > 0 && tried[next] > 0 {
			t := time.NewTimer(time.Duration(attempt) * 20 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
		}
		tried[next]++
		var r *tuttipb.Response
		var err error
		if next == self {
			r, err = d.local(ctx, req)
		} else {
			addr := d.h.server.layout().hosts[next]
			if addr == "" {
				addr = d.h.cfg.Hosts[next]
			}
			r, err = d.remote(ctx, addr, req)
		}
		if err == nil {
			switch r.GetStatus() {
			case tuttipb.Status_STATUS_NOT_LEADER, tuttipb.Status_STATUS_UNAVAILABLE, tuttipb.Status_STATUS_UNKNOWN_MEMNODE:
				err = fmt.Errorf("host %d: %v %s", next, r.GetStatus(), r.GetError())
			default:
				return r, nil
			}
		}
		last = err
		if r.GetLeaderHost() != 0 && r.GetLeaderHost() != next {
			next = r.GetLeaderHost()
			continue
		}
		// No hint: try memnode 0's replicas in turn, least tried first, then
		// the other hosts: the replicas this host knows may be stale (it
		// joined empty, or restarted with its configured placement after
		// memnode 0 moved to hosts that placement does not name), and any
		// host that read the directory points at memnode 0's leader.
		lay := d.h.server.layout()
		reps := slices.Clone(lay.memnodes[client.DirectoryMemnodeID].Replicas)
		var others []uint64
		for id := range lay.hosts {
			if id != self && !slices.Contains(reps, id) {
				others = append(others, id)
			}
		}
		slices.Sort(others)
		reps = append(reps, others...)
		if len(reps) == 0 {
			break
		}
		best := reps[0]
		for _, h := range reps {
			if tried[h] < tried[best] {
				best = h
			}
		}
		next = best
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("directory: memnode 0 unreachable: %w", last)
}

func (d *dirIO) newReq(kind tuttipb.Kind) *tuttipb.Request {
	return &tuttipb.Request{Id: d.tids.Add(1), Memnode: client.DirectoryMemnodeID, Kind: kind}
}

// read returns the directory and its header.
func (d *dirIO) read(ctx context.Context) (*client.Directory, []byte, error) {
	req := d.newReq(tuttipb.Kind_KIND_READ)
	req.Reads = []*tuttipb.Read{{Addr: client.DirectoryAddr, Len: 4096}}
	r, err := d.do(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	if r.GetStatus() != tuttipb.Status_STATUS_OK || len(r.GetReads()) != 1 {
		return nil, nil, fmt.Errorf("directory read: %v %s", r.GetStatus(), r.GetError())
	}
	b := r.GetReads()[0]
	n, err := client.DirectoryBodyLen(b)
	if err != nil {
		if errors.Is(err, client.ErrNoDirectory) {
			return nil, b[:client.DirectoryHeaderLen], err
		}
		return nil, nil, err
	}
	if total := client.DirectoryHeaderLen + n; total > len(b) {
		req := d.newReq(tuttipb.Kind_KIND_READ)
		step := int(d.h.server.mcfg.MaxItemBytes)
		for off := 0; off < total; off += step {
			req.Reads = append(req.Reads, &tuttipb.Read{Addr: client.DirectoryAddr + uint64(off), Len: uint32(min(step, total-off))})
		}
		r, err := d.do(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		if r.GetStatus() != tuttipb.Status_STATUS_OK {
			return nil, nil, fmt.Errorf("directory read: %v %s", r.GetStatus(), r.GetError())
		}
		b = bytes.Join(r.GetReads(), nil)
	}
	dir, err := client.DecodeDirectory(b)
	if err != nil {
		return nil, nil, err
	}
	return dir, b[:client.DirectoryHeaderLen], nil
}

// write replaces the directory whose header is old with dir (version set
// by the caller). It reports false if the header no longer matched.
func (d *dirIO) write(ctx context.Context, old []byte, dir *client.Directory) (bool, error) {
	enc := client.EncodeDirectory(dir)
	req := d.newReq(tuttipb.Kind_KIND_EXEC)
	req.Tid = &tuttipb.Tid{Client: hostClientID(d.h.cfg.ID), Seq: d.tids.Add(1), Time: d.h.cfg.Clock.Now().UnixNano()}
	req.Compares = []*tuttipb.Compare{{Addr: client.DirectoryAddr, Data: old}}
	for _, w := range client.DirectoryWrites(enc, d.h.server.mcfg.MaxItemBytes) {
		req.Writes = append(req.Writes, &tuttipb.Write{Addr: w.Addr, Data: w.Data})
	}
	r, err := d.do(ctx, req)
	if err != nil {
		return false, err
	}
	switch {
	case r.GetStatus() != tuttipb.Status_STATUS_OK:
		return false, fmt.Errorf("directory write: %v %s", r.GetStatus(), r.GetError())
	case r.GetVote() == tuttipb.Vote_VOTE_OK:
		return true, nil
	case r.GetVote() == tuttipb.Vote_VOTE_BAD_CMP:
		return false, nil
	default:
		return false, fmt.Errorf("directory write: vote %v", r.GetVote())
	}
}

// hostClientID is the minitransaction client id a host uses for its own
// directory writes (top bit set, so it is unlikely to equal a client's
// random id; one-phase writes hold no locks past their entry anyway).
func hostClientID(host uint64) uint64 { return 1<<63 | host }

// initialDirectory is the directory a host writes at first bootstrap: its
// configured hosts and placement.
func (h *Host) initialDirectory() *client.Directory {
	d := &client.Directory{Version: 1, Config: client.DirectoryConfig{
		Size: h.cfg.Memnode.Size, MaxItemBytes: h.cfg.Memnode.MaxItemBytes, MaxItems: uint32(h.cfg.Memnode.MaxItems), Replicas: 3,
	}}
	for id, a := range h.cfg.Hosts {
		d.Hosts = append(d.Hosts, client.DirectoryHost{ID: id, Addr: a})
	}
	for _, m := range h.cfg.Memnodes {
		d.Memnodes = append(d.Memnodes, client.DirectoryMemnode{ID: m.ID, Replicas: slices.Sorted(slices.Values(m.Replicas))})
		if m.ID == client.DirectoryMemnodeID {
			d.Config.Replicas = uint32(len(m.Replicas))
		}
	}
	sort.Slice(d.Hosts, func(i, j int) bool { return d.Hosts[i].ID < d.Hosts[j].ID })
	sort.Slice(d.Memnodes, func(i, j int) bool { return d.Memnodes[i].ID < d.Memnodes[j].ID })
	return d
}
