package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

// RecoveryConfig tunes the recovery coordinator that every host runs for
// the memnodes it leads: each Interval it lists their in-doubt tids and
// resolves those in doubt for longer than Timeout (client.Recover).
type RecoveryConfig struct {
	// Interval between scans; default 1s.
	Interval time.Duration
	// Timeout: a tid prepared longer ago than this (host clock against the
	// memnode's PreparedAt) is presumed orphaned; default 2s. It is capped
	// at a quarter of the memnode horizon, since recovery must finish
	// while participants still remember decided tids.
	Timeout time.Duration
	// Disabled turns recovery off (tests of in-doubt states only).
	Disabled bool
}

// DefaultRecoveryConfig is used for zero fields.
var DefaultRecoveryConfig = RecoveryConfig{Interval: time.Second, Timeout: 2 * time.Second}

func (c RecoveryConfig) withDefaults(horizon int64) RecoveryConfig {
	if c.Interval <= 0 {
		c.Interval = DefaultRecoveryConfig.Interval
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultRecoveryConfig.Timeout
	}
	if limit := time.Duration(horizon / 4); limit > 0 && c.Timeout > limit {
		c.Timeout = limit
	}
	if c.Interval > c.Timeout {
		c.Interval = c.Timeout
	}
	return c
}

// RecoveryStats counts what this host's recovery coordinator did.
type RecoveryStats struct {
	Scans     uint64 // scans of a memnode this host led
	Resolved  uint64 // in-doubt tids decided by this host (Committed+Aborted)
	Committed uint64
	Aborted   uint64
	Failed    uint64 // resolutions that ended in an error (retried next scan)
	// Expired counts in-doubt tids that recovery refused to decide because
	// a participant had forgotten them (client.ErrExpired: recovered too
	// late, past the memnode horizon), once per tid. They are not retried:
	// the answers cannot change. An operator must decide them.
	Expired uint64
	// Stuck is a gauge: how many of those were still in doubt at their
	// memnode's last scan by this host.
	Stuck uint64
}

// recoverer is the recovery coordinator of one host.
type recoverer struct {
	cfg   RecoveryConfig
	id    uint64
	seeds []string
	dial  []grpc.DialOption
	clock Clock
	log   zerolog.Logger
	rep   *replication.Host

	cancel context.CancelFunc
	done   chan struct{}

	mu struct {
		sync.Mutex
		cl *client.Client
	}
	// tids holds, under its lock, the in-doubt tids being resolved
	// (resolving: a later scan neither waits for them nor starts them
	// again) and those recovery found past the horizon (client.ErrExpired)
	// and still in doubt at the last scan (stuck). nstuck is the size of
	// stuck, for stats.
	tids struct {
		sync.Mutex
		resolving map[stuckTID]struct{}
		stuck     map[stuckTID]struct{}
	}
	resolvers                                  sync.WaitGroup // resolutions running
	scans, committed, aborted, failed, expired atomic.Uint64
	nstuck                                     atomic.Uint64
}

// stuckTID names an in-doubt tid of memnode mn.
type stuckTID struct {
	mn  uint64
	tid memnode.TID
}

func newRecoverer(h *Host, log zerolog.Logger) *recoverer {
	r := &recoverer{
		cfg:   h.cfg.Recovery.withDefaults(h.cfg.Memnode.Horizon),
		id:    h.cfg.ID,
		dial:  h.cfg.DialOptions,
		clock: h.cfg.Clock,
		log:   log.With().Str("component", "recovery").Logger(),
		rep:   h.rep,
		done:  make(chan struct{}),
	}
	r.tids.resolving = make(map[stuckTID]struct{})
	r.tids.stuck = make(map[stuckTID]struct{})
	// This host first: its own server is the cheapest seed.
	r.seeds = append(r.seeds, h.cfg.Hosts[h.cfg.ID])
	for id, a := range h.cfg.Hosts {
		if id != h.cfg.ID {
			r.seeds = append(r.seeds, a)
		}
	}
	return r
}

func (r *recoverer) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.run(ctx)
}

// stop ends the loop, waits for it and closes its client.
func (r *recoverer) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.mu.Lock()
	cl := r.mu.cl
	r.mu.cl = nil
	r.mu.Unlock()
	if cl != nil {
		cl.Close()
	}
}

func (r *recoverer) run(ctx context.Context) {
	defer close(r.done)
	defer r.resolvers.Wait()
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.scan(ctx)
	}
}

// scan starts resolving the old in-doubt tids of every memnode this host
// leads, up to maxResolving at once, each on a goroutine of its own, and
// returns without waiting for them: a tid whose participant has no quorum
// takes up to 10 × Timeout, and other tids, older or found by later scans,
// must not wait behind it (they could pass the horizon, after which
// recovery cannot decide them). A tid found past the horizon is logged and
// counted once, then left alone while it stays in doubt.
func (r *recoverer) scan(ctx context.Context) {
	groups := r.rep.Groups()
	led := make(map[uint64]bool, len(groups))
	for _, mn := range groups {
		led[mn] = r.rep.Leader(mn) == r.id
	}
	r.tids.Lock()
	for k := range r.tids.stuck {
		if !led[k.mn] {
			delete(r.tids.stuck, k) // another host's to report now
		}
	}
	r.nstuck.Store(uint64(len(r.tids.stuck)))
	r.tids.Unlock()
	for _, mn := range groups {
		if !led[mn] || ctx.Err() != nil {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		txs, err := inDoubt(rctx, r.rep, mn)
		cancel()
		if err != nil {
			r.log.Debug().Err(err).Uint64("memnode", mn).Msg("in-doubt listing failed")
			continue // what is stuck here stays so: not known to be decided
		}
		r.scans.Add(1)
		now := r.clock.Now().UnixNano()
		current := make(map[stuckTID]struct{}, len(txs))
		var start []memnode.InDoubtTx
		r.tids.Lock()
		for _, t := range txs {
			k := stuckTID{mn, t.TID}
			current[k] = struct{}{}
			_, stuck := r.tids.stuck[k]
			_, busy := r.tids.resolving[k]
			if stuck || busy || now-t.PreparedAt < int64(r.cfg.Timeout) || len(r.tids.resolving) >= maxResolving {
				continue
			}
			r.tids.resolving[k] = struct{}{}
			start = append(start, t)
		}
		for k := range r.tids.stuck {
			if _, ok := current[k]; k.mn == mn && !ok {
				delete(r.tids.stuck, k) // decided since (by an operator)
			}
		}
		r.nstuck.Store(uint64(len(r.tids.stuck)))
		r.tids.Unlock()
		for _, t := range start {
			r.resolvers.Go(func() {
				k := stuckTID{mn, t.TID}
				expired := r.resolve(ctx, mn, t)
				r.tids.Lock()
				delete(r.tids.resolving, k)
				if expired {
					r.tids.stuck[k] = struct{}{}
					r.nstuck.Store(uint64(len(r.tids.stuck)))
				}
				r.tids.Unlock()
			})
		}
	}
}

// maxResolving bounds the tids being resolved at once.
const maxResolving = 32

// resolve runs client.Recover for one in-doubt tid. It reports whether the
// tid is past the horizon (client.ErrExpired): undecidable by recovery.
func (r *recoverer) resolve(ctx context.Context, mn uint64, t memnode.InDoubtTx) (expired bool) {
	tid := client.TID{Client: t.TID.Client, Seq: t.TID.Seq, Time: t.TID.Time}
	ev := r.log.With().Uint64("memnode", mn).Stringer("tid", tid).Uints64("participants", t.Participants).Logger()
	cl, err := r.client(ctx)
	if err != nil {
		r.failed.Add(1)
		ev.Warn().Err(err).Msg("recovery: no client")
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, 10*r.cfg.Timeout)
	defer cancel()
	committed, err := cl.Recover(rctx, tid, t.Participants)
	if errors.Is(err, client.ErrExpired) {
		r.expired.Add(1)
		ev.Error().Err(err).Dur("in_doubt_for", time.Duration(r.clock.Now().UnixNano()-t.PreparedAt)).
			Msg("in-doubt minitransaction past the memnode horizon: a participant has forgotten it, so recovery " +
				"cannot decide it without risking different outcomes at different participants; it stays in doubt, " +
				"its locks held, until an operator decides it (tutti decide TID --participants LIST --commit|--abort)")
		return true
	}
	if err != nil {
		r.failed.Add(1)
		ev.Warn().Err(err).Msg("recovery of in-doubt minitransaction failed; retrying at the next scan")
		return false
	}
	if committed {
		r.committed.Add(1)
	} else {
		r.aborted.Add(1)
	}
	ev.Info().Bool("committed", committed).Dur("in_doubt_for", time.Duration(r.clock.Now().UnixNano()-t.PreparedAt)).
		Msg("recovered in-doubt minitransaction")
	return false
}

// client returns the recovery client, connecting it on first use.
func (r *recoverer) client(ctx context.Context) (*client.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.cl != nil {
		return r.mu.cl, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl, err := client.New(cctx, client.Config{Seeds: r.seeds, DialOptions: r.dial, Logger: r.log})
	if err != nil {
		return nil, err
	}
	r.mu.cl = cl
	return cl, nil
}

func (r *recoverer) stats() RecoveryStats {
	c, a := r.committed.Load(), r.aborted.Load()
	return RecoveryStats{Scans: r.scans.Load(), Resolved: c + a, Committed: c, Aborted: a, Failed: r.failed.Load(),
		Expired: r.expired.Load(), Stuck: r.nstuck.Load()}
}

// inDoubt lists memnode mn's in-doubt transactions with a linearizable read
// on this host, which must lead mn.
func inDoubt(ctx context.Context, rep *replication.Host, mn uint64) ([]memnode.InDoubtTx, error) {
	b, err := rep.Read(ctx, mn, memnode.AppendInspect(nil, memnode.InspectInDoubt))
	if err != nil {
		return nil, err
	}
	_, txs, err := memnode.DecodeInDoubt(b)
	if err != nil {
		return nil, fmt.Errorf("memnode %d: %w", mn, err)
	}
	return txs, nil
}

// InDoubt lists memnode mn's in-doubt transactions (a linearizable read).
// This host must lead mn: otherwise the error is a
// *replication.NotLeaderError naming the leader.
func (h *Host) InDoubt(ctx context.Context, mn uint64) ([]memnode.InDoubtTx, error) {
	return inDoubt(ctx, h.rep, mn)
}

// MemnodeStats returns memnode mn's counts (memnode.Stats: pages, locks,
// in-doubt, forced-abort and decided set sizes) with a linearizable read.
// This host must lead mn, as for InDoubt.
func (h *Host) MemnodeStats(ctx context.Context, mn uint64) (memnode.Stats, error) {
	b, err := h.rep.Read(ctx, mn, memnode.AppendInspect(nil, memnode.InspectStats))
	if err != nil {
		return memnode.Stats{}, err
	}
	s, err := memnode.DecodeStats(b)
	if err != nil {
		return memnode.Stats{}, fmt.Errorf("memnode %d: %w", mn, err)
	}
	return s, nil
}

// RecoveryStats returns what this host's recovery coordinator has done.
func (h *Host) RecoveryStats() RecoveryStats {
	if h.recovery == nil {
		return RecoveryStats{}
	}
	return h.recovery.stats()
}
