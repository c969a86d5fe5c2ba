package service

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

// Lost state (see doc.go): a host whose data directory was lost must not
// take part in its memnodes' Raft groups as the voter it was.

// firstBootHook, if set (tests), runs once firstBootProbe decided a first
// boot; false makes it decide again later.
var firstBootHook func(host uint64) bool

// bootStart is a replica a boot starts: peers are the voters it
// bootstraps the group with, nil to recover or join it.
type bootStart struct {
	id    uint64
	peers []uint64
}

// lostStateFile marks a data directory whose log engine was found empty
// in a cluster that already ran: the host may have forgotten replicas it
// had, for good (the file is never removed).
const lostStateFile = "TUTTI-STARTED-EMPTY"

func lostStateMarked(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, lostStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// markLostState writes the marker durably before the host starts any
// replica: a later restart must still know the engine's history.
func markLostState(dir string) error {
	err := writeFileSync(dir, lostStateFile, []byte("This host's Raft log engine was empty while its cluster ran (a lost or new data\n"+
		"directory): it starts a replica it holds nothing of only as a new member of the\n"+
		"replica's group. See memnode/service doc.go, \"Lost state\". Do not remove.\n"))
	if err != nil {
		return fmt.Errorf("marking the data directory: %w", err)
	}
	return nil
}

// bootNonceFile holds a random number drawn when the host found its log
// engine empty (and no marker); it identifies this empty engine to the
// hosts that decide the first boot with it (firstBootProbe). It is removed
// once the engine holds state: a data directory wiped later draws a new
// one.
const bootNonceFile = "TUTTI-BOOT-NONCE"

// firstBootPeersFile records, one "host nonce" line each, the hosts that
// answered first_boot when this host decided the cluster's first boot.
// Each line is an observation that stays true, so decisions add lines and
// nothing removes any.
const firstBootPeersFile = "TUTTI-FIRST-BOOT-PEERS"

// bootNonce returns the data directory's boot nonce, drawing and storing
// it durably first if there is none.
func bootNonce(dir string) (uint64, error) {
	p := filepath.Join(dir, bootNonceFile)
	b, err := os.ReadFile(p)
	if err == nil {
		n, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
		if perr == nil && n != 0 {
			return n, nil
		}
		// A torn write (the file is written before its directory entry
		// is synced): no host can have recorded it.
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	var n uint64
	for n == 0 {
		n = rand.Uint64()
	}
	if err := writeFileSync(dir, bootNonceFile, []byte(fmt.Sprintf("%016x\n", n))); err != nil {
		return 0, fmt.Errorf("storing the boot nonce: %w", err)
	}
	return n, nil
}

func removeBootNonce(dir string) error {
	err := os.Remove(filepath.Join(dir, bootNonceFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

func readFirstBootPeers(dir string) ([]*tuttipb.BootNonce, error) {
	b, err := os.ReadFile(filepath.Join(dir, firstBootPeersFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*tuttipb.BootNonce
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var host, nonce uint64
		if _, err := fmt.Sscanf(line, "%d %x", &host, &nonce); err != nil {
			return nil, fmt.Errorf("%s line %d: %q: %w", firstBootPeersFile, i+1, line, err)
		}
		out = append(out, &tuttipb.BootNonce{Host: host, Nonce: nonce})
	}
	return out, nil
}

// recordFirstBootPeers adds booting to the record durably (written to a
// temporary file, synced, renamed, directory synced) and returns the whole
// record.
func recordFirstBootPeers(dir string, booting []*tuttipb.BootNonce) ([]*tuttipb.BootNonce, error) {
	all, err := readFirstBootPeers(dir)
	if err != nil {
		return nil, err
	}
	for _, b := range booting {
		if !recordsBoot(all, b.GetHost(), b.GetNonce()) {
			all = append(all, b)
		}
	}
	var buf strings.Builder
	for _, b := range all {
		fmt.Fprintf(&buf, "%d %016x\n", b.GetHost(), b.GetNonce())
	}
	if err := writeFileSync(dir, firstBootPeersFile, []byte(buf.String())); err != nil {
		return nil, err
	}
	return all, nil
}

// writeFileSync replaces dir/name with data durably.
func writeFileSync(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// hostAnswers asks hosts for their replicas (the Replicas RPC), each at
// most once per reconciliation pass.
type hostAnswers struct {
	h  *Host
	mu sync.Mutex
	m  map[uint64]*tuttipb.ReplicasInfo // nil: asked, no (valid) answer
}

func (h *Host) newHostAnswers() *hostAnswers {
	return &hostAnswers{h: h, m: map[uint64]*tuttipb.ReplicasInfo{}}
}

// get returns host's answer, nil if it gave none (down, or another host
// answers at its address).
func (a *hostAnswers) get(ctx context.Context, host uint64) *tuttipb.ReplicasInfo {
	a.mu.Lock()
	info, asked := a.m[host]
	a.mu.Unlock()
	if asked {
		return info
	}
	info = a.h.askReplicas(ctx, host)
	a.mu.Lock()
	a.m[host] = info
	a.mu.Unlock()
	return info
}

// getAll asks hosts in parallel.
func (a *hostAnswers) getAll(ctx context.Context, hosts []uint64) {
	var wg sync.WaitGroup
	for _, host := range hosts {
		wg.Go(func() { a.get(ctx, host) })
	}
	wg.Wait()
}

func (h *Host) askReplicas(ctx context.Context, host uint64) *tuttipb.ReplicasInfo {
	addr := h.server.layout().hosts[host]
	if addr == "" {
		addr = h.cfg.Hosts[host]
	}
	if addr == "" || host == h.cfg.ID {
		return nil
	}
	cc, err := h.dir.conn(addr)
	if err != nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := tuttipb.NewMemnodeClient(cc).Replicas(cctx, &tuttipb.ReplicasRequest{})
	if err != nil || info.GetHost() != host {
		return nil
	}
	return info
}

// firstBootProbe decides whether this host's empty log engine is the first
// boot of a new cluster. It asks every host; it waits until every host it
// shares a configured memnode with (every host, for a spare) has answered.
// A host that answers first_boot is booting too, its engine empty. A host
// that does not has Raft state: if it recorded this host's current boot
// nonce when it decided its own first boot, this host answered it then as
// booting with an empty engine and has bootstrapped nothing since (its
// engine is still empty, and a bootstrap removes the nonce), so it never
// voted or acknowledged anything: it is still at the cluster's first boot,
// only late. Otherwise the cluster runs already and this host lost its data
// directory (or started after the others without taking part in their first
// boot): it bootstraps nothing, and the reconciler starts the replicas the
// directory assigns here as new members. Before bootstrapping the
// configured replicas (h.bootPending), it records the nonces of the hosts
// that answered first_boot (firstBootPeersFile). It reports whether it
// decided.
func (h *Host) firstBootProbe(ctx context.Context) bool {
	me := h.cfg.ID
	var ask []uint64
	for id := range h.cfg.Hosts {
		if id != me {
			ask = append(ask, id)
		}
	}
	slices.Sort(ask)
	// Who must answer: the hosts this one shares a configured memnode
	// with (any of them may be where a vote it forgot went); all hosts
	// for a host with no configured replica, which may have received
	// replicas anywhere since.
	need := map[uint64]bool{}
	for _, st := range h.bootPending {
		for _, p := range st.peers {
			if p != me {
				need[p] = true
			}
		}
	}
	if len(h.bootPending) == 0 {
		for _, id := range ask {
			need[id] = true
		}
	}
	answers := h.newHostAnswers()
	answers.getAll(ctx, ask)
	if ctx.Err() != nil {
		return false
	}
	var missing []uint64
	var booting []*tuttipb.BootNonce
	var seenBy uint64 // a host with state that recorded this boot
	why := ""
	for _, host := range ask {
		info := answers.get(ctx, host)
		switch {
		case info == nil:
			if need[host] {
				missing = append(missing, host)
			}
		case info.GetFirstBoot():
			booting = append(booting, &tuttipb.BootNonce{Host: host, Nonce: info.GetBootNonce()})
		case recordsBoot(info.GetFirstBootPeers(), me, h.bootNonce):
			if seenBy == 0 {
				seenBy = host
			}
		case why == "":
			why = fmt.Sprintf("host %d runs with Raft state and did not record this host's boot nonce %016x", host, h.bootNonce)
		}
	}
	log := h.log
	if why != "" && seenBy == 0 {
		if err := markLostState(h.cfg.DataDir); err != nil {
			log.Error().Err(err).Msg("cannot mark the data directory; retrying")
			return false
		}
		h.suspect = true
		h.booting, h.bootPending = false, nil
		h.server.firstBoot.Store(false)
		if err := removeBootNonce(h.cfg.DataDir); err != nil {
			log.Warn().Err(err).Msg("cannot remove the boot nonce file (the marker file overrides it)")
		}
		log.Warn().Str("because", why).
			Msg("this host's data directory is empty but its cluster already runs: not bootstrapping the memnodes of its configuration; the replicas the directory assigns here rejoin their groups as new members (doc.go, Lost state)")
		return true
	}
	if len(missing) > 0 {
		if time.Since(h.bootWaitLogged) >= 5*time.Second {
			h.bootWaitLogged = time.Now()
			log.Info().Uints64("waiting_for", missing).
				Msg("first boot: waiting for every host this one shares a memnode with to answer before bootstrapping (an empty data directory must not bootstrap a cluster that already runs)")
		}
		return false
	}
	if fn := firstBootHook; fn != nil && !fn(me) {
		return false
	}
	// The record first (a host that sees this one with state must find
	// it), then the state: answering first_boot=false implies the record.
	peers, err := recordFirstBootPeers(h.cfg.DataDir, booting)
	if err != nil {
		log.Error().Err(err).Msg("first boot: cannot record the booting hosts; retrying")
		return false
	}
	h.server.bootPeers.Store(&peers)
	h.server.firstBoot.Store(false)
	for _, st := range h.bootPending {
		if err := h.startReplica(st.id, st.peers); err != nil {
			// The engine refused a new group: the host cannot keep its
			// part, and the directory's reconciler will not bootstrap it.
			log.Error().Err(err).Uint64("memnode", st.id).Msg("first boot: cannot bootstrap the configured replica")
			continue
		}
	}
	// The engine holds state now: the nonce belonged to the empty one
	// (a crash before this is repaired at the next start).
	if err := removeBootNonce(h.cfg.DataDir); err != nil {
		log.Warn().Err(err).Msg("first boot: cannot remove the boot nonce file; the next start removes it")
	}
	ev := log.Info().Int("replicas", len(h.bootPending))
	if seenBy != 0 {
		ev = ev.Uint64("recorded_by", seenBy)
	}
	ev.Msg("first boot: bootstrapped the configured replicas (every host with state recorded this boot, or none has state yet)")
	h.booting, h.bootPending = false, nil
	return true
}

func recordsBoot(peers []*tuttipb.BootNonce, host, nonce uint64) bool {
	return nonce != 0 && slices.ContainsFunc(peers, func(b *tuttipb.BootNonce) bool {
		return b.GetHost() == host && b.GetNonce() == nonce
	})
}

// startReplica starts this host's replica of memnode id (peers as for
// replication.Host.StartGroup) and routes requests to it.
func (h *Host) startReplica(id uint64, peers []uint64) error {
	if fn := startGroupHook; fn != nil {
		if err := fn(h.cfg.ID, id); err != nil {
			return err
		}
	}
	mn, err := memnode.New(h.cfg.Memnode)
	if err == nil {
		err = h.rep.StartGroup(id, peers, &machine{m: mn, w: h.watch.target(id)})
	}
	if err != nil && !errors.Is(err, replication.ErrGroupExists) {
		return err
	}
	h.server.setLocal(id, true)
	return nil
}

// listedUnsafely reports whether a configuration that lists host (with the
// leader's progress of it, match) counts on state an empty replica of host
// does not have: a voter (either half of a joint configuration) has voted
// and acknowledged entries, and a learner the leader saw acknowledge
// entries would be sent a commit index beyond its empty log (raft panics)
// and could be promoted on that stale progress. A learner the leader has
// no acknowledgement of (one just added) is safe.
func listedUnsafely(host uint64, voters, outgoing, learners []uint64, match uint64) bool {
	if slices.Contains(voters, host) || slices.Contains(outgoing, host) {
		return true
	}
	return slices.Contains(learners, host) && match > 0
}

// leaderStatus finds memnode g's leader among hosts and returns its
// status of the group (the applied configuration and every replica's
// progress), nil if none of them leads it.
func leaderStatus(ctx context.Context, answers *hostAnswers, g uint64, hosts []uint64) *tuttipb.ReplicaGroupStatus {
	for _, host := range hosts {
		info := answers.get(ctx, host)
		for _, st := range info.GetGroups() {
			if st.GetMemnode() == g && st.GetLeader() == host && len(st.GetProgress()) > 0 {
				return st
			}
		}
	}
	return nil
}

// freshStart decides how a suspect host (h.suspect) starts its replica of
// memnode m, of which its log engine holds neither state nor tombstone: it
// returns start and the peers to bootstrap with (nil: join), or lost when
// the group's configuration still lists this host as what it was (the
// group's leader must remove it first), or neither (undecided: ask again
// at the next pass).
func (h *Host) freshStart(ctx context.Context, answers *hostAnswers, m *client.DirectoryMemnode) (start bool, peers []uint64, lost bool) {
	me := h.cfg.ID
	if slices.Contains(m.Bootstrap, me) {
		// A memnode created online: bootstrap it with its initial voters
		// unless one of them has been past the group's first term, where
		// this host may have voted before it lost its data directory.
		others := slices.DeleteFunc(slices.Clone(m.Bootstrap), func(x uint64) bool { return x == me })
		answers.getAll(ctx, others)
		exists, all := false, true
		for _, o := range others {
			info := answers.get(ctx, o)
			if info == nil {
				all = false
				continue
			}
			for _, st := range info.GetGroups() {
				if st.GetMemnode() == m.ID && st.GetTerm() > 1 {
					exists = true
				}
			}
		}
		switch {
		case !exists && all:
			return true, m.Bootstrap, false
		case !exists:
			return false, nil, false
		case !slices.Contains(m.Replicas, me):
			return false, nil, false // the group runs without this host
		}
	}
	ask := slices.Clone(m.Replicas)
	for _, b := range m.Bootstrap {
		if !slices.Contains(ask, b) {
			ask = append(ask, b)
		}
	}
	ask = slices.DeleteFunc(ask, func(x uint64) bool { return x == me })
	answers.getAll(ctx, ask)
	st := leaderStatus(ctx, answers, m.ID, ask)
	if st == nil {
		return false, nil, false
	}
	var match uint64
	for _, p := range st.GetProgress() {
		if p.GetHost() == me {
			match = p.GetMatch()
		}
	}
	if listedUnsafely(me, st.GetVoters(), st.GetVotersOutgoing(), st.GetLearners(), match) {
		return false, nil, true
	}
	return true, nil, false
}
