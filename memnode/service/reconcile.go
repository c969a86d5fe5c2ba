package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
)

// DefaultDirectoryPoll is how often a host reads the directory and
// reconciles its replicas with it.
const DefaultDirectoryPoll = 500 * time.Millisecond

func (h *Host) dialOptions() []grpc.DialOption {
	if len(h.cfg.DialOptions) > 0 {
		return h.cfg.DialOptions
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
}

// startReconciler starts the directory watcher (see doc.go).
func (h *Host) startReconciler() {
	h.dir = newDirIO(h)
	h.server.dirs = h.dir
	ctx, cancel := context.WithCancel(context.Background())
	h.recStop = cancel
	h.recDone = make(chan struct{})
	go h.reconcileLoop(ctx)
}

func (h *Host) stopReconciler() {
	if h.recStop == nil {
		return
	}
	h.recStop()
	<-h.recDone
	h.dir.close()
}

func (h *Host) reconcileLoop(ctx context.Context) {
	defer close(h.recDone)
	every := h.cfg.DirectoryPoll
	if every <= 0 {
		every = DefaultDirectoryPoll
	}
	// A first boot bootstraps only once it knows the cluster does not
	// run yet (doc.go, "Lost state"); until then it retries every 100 ms.
	for h.booting && !h.firstBootProbe(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, max(4*every, 5*time.Second))
		h.reconcileOnce(rctx)
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.dir.kickCh:
		}
	}
}

// Reconcile asks for a reconciliation pass now instead of at the next poll
// (DirectoryPoll); it does not wait for it.
func (h *Host) Reconcile() {
	if h.dir != nil {
		h.dir.kick()
	}
}

// DirectoryVersion is the version of the directory this host last
// installed, 0 if none yet.
func (h *Host) DirectoryVersion() uint64 { return h.server.layout().version }

// reconcileOnce is one pass: read the directory (bootstrap it if absent),
// install it, start newly assigned replicas, drive the Raft configuration of
// the groups this host leads, remove replicas whose removal is committed.
func (h *Host) reconcileOnce(ctx context.Context) {
	log := h.log
	d, header, err := h.dir.read(ctx)
	if errors.Is(err, client.ErrNoDirectory) {
		// First bootstrap: write the configured placement, only if the
		// region is still empty (every host may try; one wins).
		ok, werr := h.dir.write(ctx, header, h.initialDirectory())
		if werr != nil {
			log.Debug().Err(werr).Msg("directory bootstrap failed; retrying")
		} else if ok {
			log.Info().Msg("directory bootstrapped in memnode 0")
		}
		return
	}
	if err != nil {
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, client.ErrBadDirectory):
			// Not a passing failure: someone wrote over memnode 0's
			// directory region. The host keeps its last known layout
			// and changes nothing until the region decodes again; an
			// operator must hear of it (once a minute, not every poll).
			if time.Since(h.badDirLogged) >= time.Minute {
				h.badDirLogged = time.Now()
				log.Error().Err(err).Uint64("memnode", 0).Str("addr", fmt.Sprintf("%#x", client.DirectoryAddr)).
					Msg("the cluster directory in memnode 0 does not decode (overwritten?): this host keeps its last known layout and makes no configuration change until it decodes again")
			}
		default:
			log.Debug().Err(err).Msg("directory read failed")
		}
		return
	}
	h.server.installDirectory(d)
	me := h.cfg.ID
	for _, hh := range d.Hosts {
		// Configured hosts keep their configured address.
		if _, configured := h.cfg.Hosts[hh.ID]; !configured && h.peers[hh.ID] != hh.Addr {
			h.transport.SetPeer(hh.ID, hh.Addr)
			h.peers[hh.ID] = hh.Addr
		}
	}
	self := d.Host(me)
	if self != nil {
		h.listed = true
	}
	switch {
	case self == nil && h.listed:
		// Removed while running (client.Directory.RemoveHost takes only a
		// drained host without replicas, and Client.RemoveHost only one
		// that does not answer: the operator did not stop this one, or it
		// was not reachable). Registering again would undo the removal,
		// and put the host back in service. It stays out: it starts no
		// replica (the directory assigns it none) but finishes the rest
		// of the pass, so replicas still running here leave their groups
		// as the directory says. A process started afresh registers (as
		// any new host does): that is how a removed host rejoins.
		if time.Since(h.removedLogged) >= time.Minute {
			h.removedLogged = time.Now()
			log.Error().Uint64("version", d.Version).
				Msg("this host was removed from the cluster directory while running: it does not register again; stop its process (started again, it rejoins as a new host)")
		}
	case self == nil || self.Addr != h.cfg.Hosts[me]:
		if self != nil && h.idTaken(ctx, self.Addr) {
			// Another running host has this id (a mistyped --id): taking
			// its place in the directory would send its traffic here,
			// and it would take it back at its next poll. Change nothing
			// and start no replica; an operator must hear of it.
			if time.Since(h.idTakenLogged) >= time.Minute {
				h.idTakenLogged = time.Now()
				log.Error().Str("other", self.Addr).Str("addr", h.cfg.Hosts[me]).
					Msg("another running host has this host's id: this host does not register in the directory nor start replicas until it stops (check --id)")
			}
			return
		}
		// Register (or correct) this host's address.
		nd := d.Clone()
		if self := nd.Host(me); self != nil {
			self.Addr = h.cfg.Hosts[me]
		} else {
			nd.Hosts = append(nd.Hosts, client.DirectoryHost{ID: me, Addr: h.cfg.Hosts[me]})
			slices.SortFunc(nd.Hosts, func(a, b client.DirectoryHost) int { return cmp.Compare(a.ID, b.ID) })
		}
		nd.Version++
		if ok, err := h.dir.write(ctx, header, nd); err != nil || !ok {
			log.Debug().Err(err).Msg("registering this host's address in the directory failed; retrying")
		} else {
			log.Info().Str("addr", h.cfg.Hosts[me]).Msg("registered this host's address in the directory")
			h.server.installDirectory(nd)
		}
		return // next pass works on the newer directory
	}
	running := map[uint64]bool{}
	for _, g := range h.rep.Groups() {
		running[g] = true
	}
	answers := h.newHostAnswers()
	// Newly assigned replicas. A memnode's Bootstrap hosts create its group
	// even if a later change took them out of Replicas: the initial voters
	// are Bootstrap, and the group needs a majority of them to exist; its
	// leader then removes them.
	var removed []uint64 // tombstones, read once a replica is to start
	removedRead := false
	var lost, wasLost []uint64
	if l := h.server.lost.Load(); l != nil {
		wasLost = *l
	}
	for _, m := range d.Memnodes {
		boot := slices.Contains(m.Bootstrap, me)
		if !(slices.Contains(m.Replicas, me) || boot) || running[m.ID] {
			continue
		}
		var peers []uint64
		if boot {
			peers = m.Bootstrap // a new memnode: create the group
		}
		if h.suspect {
			// This host's engine was found empty in a running cluster:
			// holding nothing of the memnode (not even a tombstone) may
			// mean it lost its replica, not that it never had one.
			if !removedRead {
				var err error
				if removed, err = h.rep.RemovedGroups(); err != nil {
					log.Warn().Err(err).Msg("cannot list removed replicas")
					return
				}
				removedRead = true
			}
			if !slices.Contains(removed, m.ID) {
				start, p, isLost := h.freshStart(ctx, answers, &m)
				if isLost {
					lost = append(lost, m.ID)
					if time.Since(h.lostLogged[m.ID]) >= time.Minute {
						h.lostLogged[m.ID] = time.Now()
						log.Error().Uint64("memnode", m.ID).
							Msg("lost replica: this host's data directory holds nothing of this memnode but its group still counts this host as a replica; waiting for the group's leader to remove it, then rejoining as a new member (doc.go, Lost state)")
					}
					continue
				}
				if !start {
					// Undecided (no leader to ask): a replica
					// reported lost stays so.
					if slices.Contains(wasLost, m.ID) {
						lost = append(lost, m.ID)
					}
					continue
				}
				peers = p
			}
		}
		if err := h.startReplica(m.ID, peers); err != nil {
			log.Warn().Err(err).Uint64("memnode", m.ID).Msg("cannot start assigned replica")
			continue
		}
		running[m.ID] = true
		delete(h.lostLogged, m.ID)
		log.Info().Uint64("memnode", m.ID).Bool("new_group", peers != nil).Msg("started replica assigned by the directory")
	}
	h.server.lost.Store(&lost)
	for g := range running {
		if ctx.Err() != nil {
			return
		}
		m := d.Memnode(g)
		if m == nil {
			continue // not (yet) in this directory: leave it alone
		}
		if !slices.Contains(m.Replicas, me) {
			if h.removalCommitted(ctx, g, m) {
				if err := h.rep.RemoveGroup(ctx, g); err != nil {
					log.Warn().Err(err).Uint64("memnode", g).Msg("cannot remove replica")
					continue
				}
				h.server.setLocal(g, false)
				log.Info().Uint64("memnode", g).Msg("removed replica and its data (no longer in the directory)")
				continue
			}
		}
		if h.rep.Leader(g) == me {
			if len(m.Bootstrap) > 0 {
				h.clearBootstrap(ctx, d, header, g)
				return // next pass works on the newer directory
			}
			h.driveGroup(ctx, answers, g, m.Replicas)
		}
	}
}

// idTaken reports whether the host at addr, where the directory places
// this host, is another running process with this host's id. An address
// that does not answer, or answers with another id, is free to take over
// (this host restarted on new ports); one that reaches this very process
// (the same socket under another name) is this host.
func (h *Host) idTaken(ctx context.Context, addr string) bool {
	cc, err := h.dir.conn(addr)
	if err != nil {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var hdr metadata.MD
	info, err := tuttipb.NewMemnodeClient(cc).Replicas(cctx, &tuttipb.ReplicasRequest{}, grpc.Header(&hdr))
	if err != nil || info.GetHost() != h.cfg.ID {
		return false
	}
	return !slices.Contains(hdr.Get(instanceHeader), h.server.instance)
}

// clearBootstrap runs on the leader of a memnode created online: its group
// exists, so hosts that start a replica of it from now on join it (see
// client.DirectoryMemnode.Bootstrap). The leader clears Bootstrap before it
// changes the group's configuration, so no host it removes can start the
// group afresh with the initial voters.
func (h *Host) clearBootstrap(ctx context.Context, d *client.Directory, header []byte, g uint64) {
	nd := d.Clone()
	nd.Memnode(g).Bootstrap = nil
	nd.Version++
	if ok, err := h.dir.write(ctx, header, nd); err != nil || !ok {
		h.log.Debug().Err(err).Uint64("memnode", g).Msg("clearing the memnode's bootstrap voters in the directory failed; retrying")
		return
	}
	h.server.installDirectory(nd)
}

// removalCommitted reports whether this host's replica of g is out of the
// group's Raft configuration for good: its own applied configuration
// excludes it, or the group's leader (another host) says so.
func (h *Host) removalCommitted(ctx context.Context, g uint64, m *client.DirectoryMemnode) bool {
	me := h.cfg.ID
	mem, err := h.rep.Membership(ctx, g)
	if err != nil {
		return false
	}
	if !mem.Contains(me) {
		return true
	}
	if mem.Leader == me {
		return false // transfer leadership first (the leader does)
	}
	// The leader stops talking to a removed replica, which may never apply
	// its own removal: ask the hosts the directory names.
	ask := slices.Clone(m.Replicas)
	if mem.Leader != 0 && !slices.Contains(ask, mem.Leader) {
		ask = append([]uint64{mem.Leader}, ask...)
	}
	for _, host := range ask {
		addr := h.server.layout().hosts[host]
		if addr == "" {
			continue
		}
		cc, err := h.dir.conn(addr)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		info, err := tuttipb.NewMemnodeClient(cc).Replicas(cctx, &tuttipb.ReplicasRequest{})
		cancel()
		if err != nil {
			continue
		}
		for _, st := range info.GetGroups() {
			if st.GetMemnode() != g || st.GetLeader() != host || len(st.GetProgress()) == 0 {
				continue
			}
			// host leads g: its applied configuration is committed.
			if len(st.GetVotersOutgoing()) == 0 && !slices.Contains(st.GetVoters(), me) && !slices.Contains(st.GetLearners(), me) {
				return true
			}
			return false
		}
	}
	return false
}

// driveGroup runs on the leader of group g: one configuration change per
// pass toward the voter set want. New replicas join as learners and are
// promoted once caught up; replicas leave only once every wanted replica
// votes, and only if the remaining voters' healthy majority survives the
// step. A leader that must leave hands leadership to a healthy voter first,
// one that stays if any (transferTarget).
func (h *Host) driveGroup(ctx context.Context, answers *hostAnswers, g uint64, want []uint64) {
	me := h.cfg.ID
	mem, err := h.rep.Membership(ctx, g)
	if err != nil || mem.Leader != me || mem.Progress == nil || mem.Joint() {
		return // joint configurations are left automatically
	}
	log := h.log.With().Uint64("memnode", g).Logger()
	healthy := func(id uint64) bool {
		if id == me {
			return true
		}
		p, ok := mem.Progress[id]
		return ok && p.RecentActive && p.State == "replicate" && p.Match+client.LagEntries >= mem.Commit
	}
	quorumOK := func(voters []uint64) bool {
		n := 0
		for _, v := range voters {
			if healthy(v) {
				n++
			}
		}
		return n >= len(voters)/2+1
	}
	change := func(what string, host uint64, t pb.ConfChangeType) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := h.rep.ChangeReplicas(cctx, g, []*pb.ConfChangeSingle{{Type: t.Enum(), NodeId: &host}})
		if err != nil {
			log.Debug().Err(err).Str("change", what).Uint64("replica", host).Msg("configuration change failed; retrying")
			return
		}
		log.Info().Str("change", what).Uint64("replica", host).Msg("replica configuration changed")
		// One change per pass: the next (promote, remove) need not wait
		// for the next poll. ChangeReplicas returned once the change was
		// applied here, so that pass sees it.
		h.Reconcile()
	}
	// 0. A replica whose host lost its state (it says so: the Replicas
	// RPC's lost) leaves, to join again as a new member (doc.go, "Lost
	// state"). Its removal costs no availability: it takes part in no
	// quorum as it is. Only replicas that do not answer here are asked.
	members := slices.Concat(mem.Voters, mem.Learners, mem.VotersOutgoing)
	slices.Sort(members)
	for _, v := range slices.Compact(members) {
		if v == me || healthy(v) {
			continue
		}
		if !listedUnsafely(v, mem.Voters, mem.VotersOutgoing, mem.Learners, mem.Progress[v].Match) {
			continue
		}
		if info := answers.get(ctx, v); info == nil || !slices.Contains(info.GetLost(), g) {
			continue
		}
		log.Warn().Uint64("replica", v).Msg("the replica's host lost its state: removing it from the group, to be added back as a new member")
		change("remove lost replica", v, pb.ConfChangeType_ConfChangeRemoveNode)
		return
	}
	// 1. Wanted hosts not in the configuration join as learners.
	for _, w := range want {
		if !slices.Contains(mem.Voters, w) && !slices.Contains(mem.Learners, w) {
			change("add learner", w, pb.ConfChangeType_ConfChangeAddLearnerNode)
			return
		}
	}
	// 2. Caught-up wanted learners become voters.
	for _, l := range mem.Learners {
		if slices.Contains(want, l) && healthy(l) && quorumOK(append(slices.Clone(mem.Voters), l)) {
			change("promote", l, pb.ConfChangeType_ConfChangeAddNode)
			return
		}
	}
	// 3. Unwanted learners go.
	for _, l := range mem.Learners {
		if !slices.Contains(want, l) {
			change("remove learner", l, pb.ConfChangeType_ConfChangeRemoveNode)
			return
		}
	}
	// 4. Unwanted voters go, once every wanted host votes (move = add,
	// then remove).
	for _, w := range want {
		if !slices.Contains(mem.Voters, w) {
			return
		}
	}
	for _, v := range mem.Voters {
		if slices.Contains(want, v) {
			continue
		}
		rest := slices.DeleteFunc(slices.Clone(mem.Voters), func(x uint64) bool { return x == v })
		if len(rest) == 0 || !quorumOK(rest) {
			log.Warn().Uint64("replica", v).Uints64("voters", mem.Voters).
				Msg("not removing replica: the remaining voters would have no healthy majority")
			continue
		}
		if v == me {
			to := transferTarget(rest, want, healthy, func(r uint64) uint64 { return mem.Progress[r].Match })
			if to != 0 {
				log.Info().Uint64("to", to).Msg("leader leaves the group: transferring leadership first")
				_ = h.rep.TransferLeader(ctx, g, to)
			}
			return
		}
		change("remove voter", v, pb.ConfChangeType_ConfChangeRemoveNode)
		return
	}
}

// transferTarget picks the voter a leaving leader hands leadership to: a
// healthy one of rest (the voters but the leader) that stays (in want),
// the furthest caught up (match); only if none stays, a healthy one that
// is leaving too. 0: none. A leaving transferee would itself have to hand
// leadership on once its turn to leave came: two leadership changes, each
// a pause of the group, instead of one.
func transferTarget(rest, want []uint64, healthy func(uint64) bool, match func(uint64) uint64) uint64 {
	var to uint64
	toStays := false
	for _, r := range rest {
		if !healthy(r) {
			continue
		}
		stays := slices.Contains(want, r)
		if to == 0 || stays && !toStays || stays == toStays && match(r) > match(to) {
			to, toStays = r, stays
		}
	}
	return to
}
