package replication

import (
	"context"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
)

// Membership is one replica's view of its group's configuration, as of the
// last configuration change it applied, and, on the leader, the replication
// progress of every other replica.
type Membership struct {
	Group     uint64
	Leader    uint64 // believed leader, 0 if unknown
	Term      uint64
	Commit    uint64
	Applied   uint64
	LastIndex uint64 // last index in this replica's log
	// Voters and Learners of the applied configuration. While a joint
	// configuration is in force, VotersOutgoing holds the old voters and
	// LearnersNext the voters being demoted.
	Voters         []uint64
	Learners       []uint64
	VotersOutgoing []uint64
	LearnersNext   []uint64
	// Progress of every replica in the configuration, this one included;
	// only on the leader (nil elsewhere).
	Progress map[uint64]ReplicaProgress
}

// Joint reports whether a joint configuration is in force.
func (m Membership) Joint() bool { return len(m.VotersOutgoing) > 0 }

// Contains reports whether host is a voter or learner of the configuration
// (either half of a joint one).
func (m Membership) Contains(host uint64) bool {
	return slices.Contains(m.Voters, host) || slices.Contains(m.Learners, host) ||
		slices.Contains(m.VotersOutgoing, host) || slices.Contains(m.LearnersNext, host)
}

// ReplicaProgress is the leader's record of one replica.
type ReplicaProgress struct {
	Match uint64 // highest log index known replicated there
	Next  uint64 // next index the leader sends
	// State is "probe", "replicate" or "snapshot" (receiving a snapshot).
	State string
	// RecentActive: the replica answered within the last election timeout.
	RecentActive bool
	Learner      bool
}

// onWorker runs f on the group's worker goroutine and waits for it.
func (h *Host) onWorker(ctx context.Context, id uint64, f func(g *group)) error {
	g, err := h.lookup(id)
	if err != nil {
		return err
	}
	return g.onWorker(ctx, f)
}

// onWorker runs f on g's worker and waits for it. When g stops first
// (RemoveGroup ran before f's turn, or Close), f does not run and the
// answer is ErrStopped: before, the caller was told nil (Membership then
// returned an empty configuration, TransferLeader success) or, for a
// function dropped with the stopped group's inbox, waited until ctx ended.
func (g *group) onWorker(ctx context.Context, f func(g *group)) error {
	done := make(chan error, 1)
	if err := g.enqueue(func(in *inbox) {
		in.fns = append(in.fns, workerFn{
			run: func() {
				if g.removed {
					done <- ErrStopped
					return
				}
				f(g)
				done <- nil
			},
			stop: func() { done <- ErrStopped },
		})
	}); err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Membership reports the group's configuration as this replica applied it
// and, if this replica leads, every replica's progress.
func (h *Host) Membership(ctx context.Context, id uint64) (Membership, error) {
	var m Membership
	err := h.onWorker(ctx, id, func(g *group) {
		cs := g.confState
		m = Membership{
			Group:          id,
			Leader:         g.leader.Load(),
			Term:           g.term,
			Commit:         g.stCommit.Load(),
			Applied:        g.applied,
			LastIndex:      g.lastIndex,
			Voters:         slices.Sorted(slices.Values(cs.GetVoters())),
			Learners:       slices.Sorted(slices.Values(cs.GetLearners())),
			VotersOutgoing: slices.Sorted(slices.Values(cs.GetVotersOutgoing())),
			LearnersNext:   slices.Sorted(slices.Values(cs.GetLearnersNext())),
		}
		st := g.rn.Status()
		m.Commit = max(m.Commit, st.GetCommit())
		if st.RaftState != raft.StateLeader {
			return
		}
		m.Progress = make(map[uint64]ReplicaProgress, len(st.Progress))
		for id, pr := range st.Progress {
			state := "probe"
			switch pr.State {
			case tracker.StateReplicate:
				state = "replicate"
			case tracker.StateSnapshot:
				state = "snapshot"
			}
			m.Progress[id] = ReplicaProgress{Match: pr.Match, Next: pr.Next, State: state,
				RecentActive: pr.RecentActive || id == h.cfg.ID, Learner: pr.IsLearner}
		}
	})
	if err != nil {
		// onWorker gave up on ctx: f may still run on the worker and write
		// m, so m must not be read (a data race found by gcs's randomized
		// test, with a host restart during reconciliation).
		return Membership{}, err
	}
	return m, nil
}

// TransferLeader asks the group's leader (this host) to hand leadership to
// the replica to. It returns at once; watch Leader to see it happen. A
// leader about to be removed from its group transfers first.
func (h *Host) TransferLeader(ctx context.Context, id, to uint64) error {
	var err error
	if e := h.onWorker(ctx, id, func(g *group) {
		if st := g.rn.BasicStatus(); st.RaftState != raft.StateLeader {
			err = &NotLeaderError{Group: id, Leader: st.Lead}
			return
		}
		g.rn.TransferLeader(to)
	}); e != nil {
		return e
	}
	return err
}

// RemoveGroup stops this host's replica of group and deletes everything the
// log engine holds for it. Pending proposals and reads fail as in Close.
// Call it only once the replica's removal from the group's configuration is
// committed (or the group is abandoned): the replica's log and state are
// gone afterwards. StartGroup may start the group again later (as a new,
// empty replica).
func (h *Host) RemoveGroup(ctx context.Context, id uint64) error {
	g, err := h.lookup(id)
	if err != nil {
		return err
	}
	h.mu.Lock()
	if h.mu.groups[id] != g {
		h.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrUnknownGroup, id)
	}
	// From now on nothing new reaches the group: lookups fail, messages
	// for it are dropped.
	delete(h.mu.groups, id)
	h.mu.starting[id] = true // no StartGroup until the data is gone
	h.startWG.Add(1)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.mu.starting, id)
		h.mu.Unlock()
		h.startWG.Done()
	}()

	done := make(chan struct{})
	if err := g.enqueue(func(in *inbox) {
		// No stop: a removal dropped with the inbox is one of a host
		// that closed, and the wait below ends on h.stop.
		in.fns = append(in.fns, workerFn{run: func() {
			defer close(done)
			g.removed = true
			w := g.w
			w.mu.Lock()
			gs := make([]*group, 0, len(w.mu.groups))
			for _, o := range w.mu.groups {
				if o != g {
					gs = append(gs, o)
				}
			}
			w.mu.groups = gs
			w.mu.Unlock()
			g.shutdown()
		}})
	}); err != nil {
		return err
	}
	// The worker must take the group off before its data goes; it does not
	// block, so wait without ctx (ctx only bounds callers of a stuck host).
	select {
	case <-done:
	case <-h.stop:
		return ErrStopped
	case <-ctx.Done():
		select {
		case <-done:
		case <-h.stop:
			return ErrStopped
		}
	}
	// Keep the replica's term and vote past its removal: the host may
	// receive a replica of the group again (loadTombstone).
	hs, err := h.eng.loadHardState(id)
	if err != nil {
		return err
	}
	// A snapshot read back for raft meanwhile finds the group gone: not
	// an error worth reporting.
	g.st.removed.Store(true)
	b := h.eng.newBatch()
	defer b.close()
	b.deleteGroup(id)
	if hs != nil {
		b.setTombstone(id, hs)
	}
	if err := b.commit(!h.cfg.NoSync); err != nil {
		return err
	}
	// The replica's truncated prefixes are not excised any more: the host
	// may hold the group again, and a new replica writes low indices.
	h.eng.rec.forget(id)
	h.eng.seg.forget(id)
	// A snapshot file still being written (writeSnapshotAsync) goes too.
	g.snapWG.Wait()
	if err := h.eng.removeSnapFiles(id, ""); err != nil {
		h.log.Warn().Err(err).Uint64("group", id).Msg("removing the group's snapshot files")
	}
	return nil
}

// deleteGroup deletes every key of group g.
func (b *logBatch) deleteGroup(g uint64) {
	b.other = true
	end := groupKey(g, 0xff)
	end = append(end, 0xff)
	_ = b.b.DeleteRange(groupKey(g, 0), end, nil)
}
