package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// Directory reads the cluster's directory from memnode 0 (a linearizable
// read). It returns ErrNoDirectory while the cluster is bootstrapping.
func (c *Client) Directory(ctx context.Context) (*Directory, error) {
	d, _, err := c.readDirectory(ctx)
	return d, err
}

// readDirectory also returns the header it read (the compare item of an
// update).
func (c *Client) readDirectory(ctx context.Context) (*Directory, []byte, error) {
	res, err := c.Exec(ctx, NewTx().Read(DirectoryMemnodeID, DirectoryAddr, dirFirstRead))
	if err != nil {
		return nil, nil, err
	}
	b := res.Reads[0]
	n, err := DirectoryBodyLen(b)
	if err != nil {
		if errors.Is(err, ErrNoDirectory) {
			return nil, b[:DirectoryHeaderLen], err
		}
		return nil, nil, err
	}
	if DirectoryHeaderLen+n > len(b) {
		// A large directory: read all of it in one minitransaction.
		tx := NewTx()
		step := c.maxItemBytes()
		total := DirectoryHeaderLen + n
		for off := 0; off < total; off += step {
			tx.Read(DirectoryMemnodeID, DirectoryAddr+uint64(off), uint32(min(step, total-off)))
		}
		res, err := c.Exec(ctx, tx)
		if err != nil {
			return nil, nil, err
		}
		b = bytes.Join(res.Reads, nil)
	}
	d, err := DecodeDirectory(b)
	if err != nil {
		return nil, nil, err
	}
	return d, b[:DirectoryHeaderLen], nil
}

func (c *Client) maxItemBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.mu.limits.GetMaxItemBytes(); n > 0 {
		return int(n)
	}
	return 64 << 10
}

// UpdateDirectory changes the directory with fn and writes it back with one
// minitransaction that compares the header read (so a concurrent change
// makes it start over with the newer directory; no change is ever lost).
// fn must only edit the directory it is given and may be called several
// times; an error from it aborts the update and is returned. It returns the
// directory as written. The hosts pick up the change within their poll
// interval; the client refreshes its own layout.
//
// If the write's answer is lost, the header is read back (fencing the
// write): it says whether the write landed unless the directory changed
// again meanwhile; then the error wraps ErrUnknownOutcome and fn is not
// applied again (the change may be there once already).
func (c *Client) UpdateDirectory(ctx context.Context, fn func(*Directory) error) (*Directory, error) {
	var last error
	for attempt := 0; attempt < 32; attempt++ {
		if attempt > 0 {
			if err := c.backoff(ctx, attempt); err != nil {
				return nil, errors.Join(err, last)
			}
		}
		old, header, err := c.readDirectory(ctx)
		if err != nil {
			return nil, err
		}
		d := old.Clone()
		if err := fn(d); err != nil {
			return nil, err
		}
		d.normalize()
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrDirectoryChange, err)
		}
		d.Version = old.Version + 1
		enc := EncodeDirectory(d)
		if len(enc) > DirectoryRegion {
			return nil, fmt.Errorf("%w: the directory would take %d bytes, more than its %d-byte region", ErrDirectoryChange, len(enc), DirectoryRegion)
		}
		tx := NewTx().Compare(DirectoryMemnodeID, DirectoryAddr, header)
		for _, w := range DirectoryWrites(enc, uint32(c.maxItemBytes())) {
			tx.Write(DirectoryMemnodeID, w.Addr, w.Data)
		}
		res, err := c.Exec(ctx, tx)
		switch {
		case err == nil && res.Committed:
			_ = c.Refresh(ctx) // also makes the seed look at the directory now
			return d, nil
		case err == nil:
			last = fmt.Errorf("directory version %d changed under us", old.Version)
			continue
		case errors.Is(err, ErrUnknownOutcome):
			// Did it land? Only this exact encoding has this header. The
			// settling read fences the attempt: if it does not show it,
			// it never lands, and the next attempt cannot apply fn twice.
			res, rerr := c.Settle(ctx, NewTx().Read(DirectoryMemnodeID, DirectoryAddr, DirectoryHeaderLen), err)
			if rerr != nil {
				return nil, fmt.Errorf("tutti: directory update: %w; reading it back failed too: %v", err, rerr)
			}
			if bytes.Equal(res.Reads[0], enc[:DirectoryHeaderLen]) {
				_ = c.Refresh(ctx)
				return d, nil
			}
			// Every write of the directory is the version it read plus
			// one, compared against that version's header: each version
			// is written once. Still at old.Version, or at this
			// attempt's version written by someone else, the attempt
			// did not land (and never will: its compare is stale), so fn
			// may run again. Further on, it may have landed and been
			// changed since: running fn again could apply it twice (a
			// second memnode for one AddMemnode).
			v, verr := directoryVersion(res.Reads[0])
			if verr != nil {
				return nil, fmt.Errorf("tutti: directory update: %w; reading it back: %v", err, verr)
			}
			if v > d.Version {
				return nil, fmt.Errorf("tutti: directory update: %w; the directory has changed since (version %d; this update was version %d), so whether it is part of it is unknown: read the directory", err, v, d.Version)
			}
			last = err
			continue
		default:
			return nil, err
		}
	}
	return nil, fmt.Errorf("tutti: directory update gave up: %w", last)
}

// AddMemnode creates a memnode on the given hosts, or, if replicas is
// empty, on the least-loaded hosts that answer (AnsweringHosts,
// Directory.PlaceMemnode; ErrTooFewHosts if too few do), and returns its
// id. The hosts start its Raft group within their poll interval.
func (c *Client) AddMemnode(ctx context.Context, replicas []uint64) (uint64, error) {
	var up map[uint64]bool
	if len(replicas) == 0 {
		d, err := c.Directory(ctx)
		if err != nil {
			return 0, err
		}
		up = c.AnsweringHosts(ctx, d)
	}
	var id uint64
	_, err := c.UpdateDirectory(ctx, func(d *Directory) error {
		reps := replicas
		if len(reps) == 0 {
			var err error
			if reps, err = d.PlaceMemnode(up); err != nil {
				return err
			}
		}
		var err error
		id, err = d.AddMemnode(reps)
		return err
	})
	return id, err
}

// AnsweringHosts asks every host of d, at once and for at most 2 s, for
// its replicas' state and returns the hosts that answered.
func (c *Client) AnsweringHosts(ctx context.Context, d *Directory) map[uint64]bool {
	up := make(map[uint64]bool, len(d.Hosts))
	for id, a := range c.askHosts(ctx, d) {
		if a.err == nil {
			up[id] = true
		}
	}
	return up
}

// hostAnswer is one host's answer to askHosts.
type hostAnswer struct {
	info *tuttipb.ReplicasInfo
	err  error
}

// askHosts asks every host of d, at once and for at most 2 s each, for its
// replicas' Raft state.
func (c *Client) askHosts(ctx context.Context, d *Directory) map[uint64]hostAnswer {
	answers := make(map[uint64]hostAnswer, len(d.Hosts))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range d.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			info, err := c.HostReplicas(cctx, h.Addr)
			mu.Lock()
			answers[h.ID] = hostAnswer{info, err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return answers
}

// AddReplica places a new replica of memnode on host; it joins the Raft
// group and catches up from a snapshot.
func (c *Client) AddReplica(ctx context.Context, memnode, host uint64) error {
	_, err := c.UpdateDirectory(ctx, func(d *Directory) error { return d.AddReplica(memnode, host) })
	return err
}

// RemoveReplica removes memnode's replica on host once the rest of the
// group can do without it.
func (c *Client) RemoveReplica(ctx context.Context, memnode, host uint64) error {
	_, err := c.UpdateDirectory(ctx, func(d *Directory) error { return d.RemoveReplica(memnode, host) })
	return err
}

// MoveReplica moves memnode's replica from one host to another: the new
// replica is added and caught up before the old one is removed.
func (c *Client) MoveReplica(ctx context.Context, memnode, from, to uint64) error {
	_, err := c.UpdateDirectory(ctx, func(d *Directory) error { return d.MoveReplica(memnode, from, to) })
	return err
}

// DrainHost marks host drained (Directory.DrainHost): no new replica is
// placed on it, by default or by name; the replicas it holds stay until
// they are moved (Directory.MoveTarget picks where). It returns the
// directory as written.
func (c *Client) DrainHost(ctx context.Context, host uint64) (*Directory, error) {
	return c.UpdateDirectory(ctx, func(d *Directory) error { return d.DrainHost(host) })
}

// UndrainHost puts a drained host back in service (Directory.UndrainHost).
func (c *Client) UndrainHost(ctx context.Context, host uint64) (*Directory, error) {
	return c.UpdateDirectory(ctx, func(d *Directory) error { return d.UndrainHost(host) })
}

// RemoveHost takes a drained host that holds no replica out of the
// directory (Directory.RemoveHost). It is refused (ErrDirectoryChange)
// while the host still answers at its address with its id: a running
// host that is not in the directory registers itself again once it
// restarts, and a running one that was removed stays outside the cluster
// (see memnode/service, "Taking a host out of service"); stop its process
// first.
func (c *Client) RemoveHost(ctx context.Context, host uint64) (*Directory, error) {
	d, err := c.Directory(ctx)
	if err != nil {
		return nil, err
	}
	// The directory's own refusals first: they say what is left to do.
	if err := d.Clone().RemoveHost(host); err != nil {
		return nil, err
	}
	if h := d.Host(host); h != nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := c.HostReplicas(cctx, h.Addr)
		cancel()
		if err == nil && info.GetHost() == host {
			return nil, refuse("host %d still answers at %s: stop its process before removing it", host, h.Addr)
		}
	}
	return c.UpdateDirectory(ctx, func(d *Directory) error { return d.RemoveHost(host) })
}

// HostReplicas asks one host for the Raft state of its replicas.
func (c *Client) HostReplicas(ctx context.Context, addr string) (*tuttipb.ReplicasInfo, error) {
	cn, err := c.conn(addr)
	if err != nil {
		return nil, err
	}
	return cn.rpc.Replicas(ctx, &tuttipb.ReplicasRequest{})
}

// Replica health as reported by MemnodeStatus.
const (
	HealthUp      = "up"      // replicating and caught up with the leader
	HealthLagging = "lagging" // reachable but behind (catching up, snapshot, or no leader)
	HealthDown    = "down"    // unreachable, or not answering the leader
)

// LagEntries is how far behind the leader's commit index a replica may be
// and still count as up.
const LagEntries = 100

// MemnodeState is one memnode as the directory places it and as its Raft
// group runs.
type MemnodeState struct {
	ID uint64 `json:"id"`
	// Leader is the host leading the group, 0 if none is known.
	Leader   uint64         `json:"leader"`
	Term     uint64         `json:"term"`
	Commit   uint64         `json:"commit"`
	Replicas []ReplicaState `json:"replicas"`
	// Voters and Learners of the Raft configuration as the leader applied
	// it (empty without a leader).
	Voters   []uint64 `json:"voters"`
	Learners []uint64 `json:"learners,omitempty"`
	// Converged: the Raft voters are exactly the directory's replicas.
	Converged bool `json:"converged"`
}

// ReplicaState is one replica of a memnode.
type ReplicaState struct {
	Host uint64 `json:"host"`
	Addr string `json:"addr"`
	// Health is HealthUp, HealthLagging or HealthDown.
	Health string `json:"health"`
	// Role: "leader", "voter", "learner" (catching up), or "pending" (not
	// yet in the Raft configuration).
	Role string `json:"role"`
	// InDirectory is false for a replica the directory no longer lists
	// (being removed).
	InDirectory bool   `json:"in_directory"`
	Match       uint64 `json:"match"`
	Applied     uint64 `json:"applied"`
}

// MemnodeStatus reads the directory and asks every host for its replicas'
// Raft state, and reports each memnode's replicas with their health as the
// group's leader sees them.
func (c *Client) MemnodeStatus(ctx context.Context) (*Directory, []MemnodeState, error) {
	d, err := c.Directory(ctx)
	if err != nil {
		return nil, nil, err
	}
	answers := c.askHosts(ctx, d)
	// Per memnode: each host's view of its replica.
	views := map[uint64]map[uint64]*tuttipb.ReplicaGroupStatus{}
	for host, a := range answers {
		if a.err != nil {
			continue
		}
		for _, g := range a.info.GetGroups() {
			if views[g.GetMemnode()] == nil {
				views[g.GetMemnode()] = map[uint64]*tuttipb.ReplicaGroupStatus{}
			}
			views[g.GetMemnode()][host] = g
		}
	}
	var out []MemnodeState
	for _, m := range d.Memnodes {
		out = append(out, memnodeState(d, m, views[m.ID]))
	}
	return d, out, nil
}

func memnodeState(d *Directory, m DirectoryMemnode, views map[uint64]*tuttipb.ReplicaGroupStatus) MemnodeState {
	st := MemnodeState{ID: m.ID}
	// The leader is a host that says it leads, in the highest term.
	var lead *tuttipb.ReplicaGroupStatus
	for host, v := range views {
		if v.GetLeader() == host && len(v.GetProgress()) > 0 && (lead == nil || v.GetTerm() > lead.GetTerm()) {
			lead = v
		}
	}
	hosts := slices.Clone(m.Replicas)
	progress := map[uint64]*tuttipb.ReplicaProgress{}
	if lead != nil {
		st.Leader, st.Term, st.Commit = lead.GetLeader(), lead.GetTerm(), lead.GetCommit()
		st.Voters = slices.Clone(lead.GetVoters())
		st.Learners = slices.Clone(lead.GetLearners())
		for _, p := range lead.GetProgress() {
			progress[p.GetHost()] = p
			if !slices.Contains(hosts, p.GetHost()) {
				hosts = append(hosts, p.GetHost())
			}
		}
		v := slices.Sorted(slices.Values(st.Voters))
		st.Converged = slices.Equal(v, slices.Sorted(slices.Values(m.Replicas))) && len(st.Learners) == 0 &&
			len(lead.GetVotersOutgoing()) == 0
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i] < hosts[j] })
	for _, h := range hosts {
		r := ReplicaState{Host: h, InDirectory: slices.Contains(m.Replicas, h), Health: HealthDown, Role: "pending"}
		if dh := d.Host(h); dh != nil {
			r.Addr = dh.Addr
		}
		if v := views[h]; v != nil {
			r.Applied = v.GetApplied()
			if lead == nil {
				r.Health = HealthLagging
			}
		}
		if p := progress[h]; p != nil {
			r.Match = p.GetMatch()
			r.Role = "voter"
			if p.GetLearner() {
				r.Role = "learner"
			}
			if h == st.Leader {
				r.Role = "leader"
			}
			switch {
			case h == st.Leader:
				r.Health = HealthUp
			case !p.GetRecentActive() || views[h] == nil:
				r.Health = HealthDown
			case p.GetState() == "replicate" && p.GetMatch()+LagEntries >= st.Commit:
				r.Health = HealthUp
			default:
				r.Health = HealthLagging
			}
		}
		st.Replicas = append(st.Replicas, r)
	}
	return st
}

// refreshLayout refreshes the layout from the directory (Cluster RPC),
// at most once per minRefreshInterval across concurrent callers, and
// reports whether the layout is fresh now.
func (c *Client) refreshLayout(ctx context.Context) bool {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	if time.Since(c.refreshedAt) < minRefreshInterval {
		return true
	}
	err := c.Refresh(ctx)
	c.refreshedAt = time.Now()
	return err == nil
}

// minRefreshInterval bounds how often errors make a client re-read the
// layout.
const minRefreshInterval = 50 * time.Millisecond
