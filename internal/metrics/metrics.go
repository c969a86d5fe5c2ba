package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/memnode/service"
)

// MemnodeReadTimeout bounds the memnode statistics read of one scrape.
const MemnodeReadTimeout = 2 * time.Second

var (
	hostLabel    = []string{"host"}
	memnodeLabel = []string{"host", "memnode"}
)

func desc(name, help string, labels []string) *prometheus.Desc {
	return prometheus.NewDesc("tutti_"+name, help, labels, nil)
}

var (
	dProposals     = desc("raft_proposals_total", "Commands handed to Raft by this host.", hostLabel)
	dEntries       = desc("raft_entries_total", "Raft entries proposed (each carries a batch of commands).", hostLabel)
	dFsyncs        = desc("raft_log_fsyncs_total", "Log engine batches committed with fsync.", hostLabel)
	dBatches       = desc("raft_log_batches_total", "Log engine batches committed.", hostLabel)
	dApplied       = desc("raft_applied_commands_total", "Commands applied to state machines on this host.", hostLabel)
	dReads         = desc("raft_reads_total", "Linearizable reads answered.", hostLabel)
	dSnapshots     = desc("raft_snapshots_total", "Snapshots taken locally.", hostLabel)
	dRestores      = desc("raft_snapshot_restores_total", "Snapshots restored (received or at recovery).", hostLabel)
	dExcises       = desc("raft_log_excises_total", "Truncated log prefixes excised from the log engine's tables.", hostLabel)
	dExciseErrors  = desc("raft_log_excise_errors_total", "Excises of truncated log prefixes that failed (compactions drop those bytes).", hostLabel)
	dSegments      = desc("raft_log_segments", "Segment files holding the data of large log entries (replication/doc.go, \"Entry bytes in segment files\").", hostLabel)
	dSegsRemoved   = desc("raft_log_segments_removed_total", "Segment files removed or kept for reuse once every entry in them was truncated.", hostLabel)
	dLogReads      = desc("raft_log_engine_reads_total", "Raft entries read back from the log engine (they had left the in-memory cache).", hostLabel)
	dLeaderChanges = desc("raft_leader_changes_total", "Times a replica on this host saw the leader change to another host.", hostLabel)

	dTerm     = desc("raft_term", "Raft term of this host's replica of the memnode.", memnodeLabel)
	dCommit   = desc("raft_commit_index", "Highest log index known committed at this replica.", memnodeLabel)
	dAppliedI = desc("raft_applied_index", "Highest log index applied at this replica.", memnodeLabel)
	dIsLeader = desc("raft_is_leader", "1 if this host's replica is the memnode's leader.", memnodeLabel)
	dHasLead  = desc("raft_has_leader", "1 if this replica knows a leader.", memnodeLabel)

	dScans     = desc("recovery_scans_total", "In-doubt scans of memnodes this host led.", hostLabel)
	dResolved  = desc("recovery_resolved_total", "In-doubt transactions this host decided, by outcome.", []string{"host", "outcome"})
	dRecFailed = desc("recovery_failed_total", "Resolutions that ended in an error (retried at the next scan).", hostLabel)
	dExpired   = desc("recovery_expired_total", "In-doubt transactions recovery refused to decide because a participant had forgotten them (past the memnode horizon); an operator must decide them.", hostLabel)
	dStuck     = desc("recovery_stuck", "In-doubt transactions past the horizon, undecidable by recovery, still in doubt at the last scan.", hostLabel)

	dInDoubt = desc("memnode_in_doubt", "Prepared, undecided minitransactions (memnodes this host leads).", memnodeLabel)
	dLocks   = desc("memnode_locks", "Locked ranges held by in-doubt minitransactions (memnodes this host leads).", memnodeLabel)
	dDecided = desc("memnode_decided_tids", "Decided tids remembered until the horizon (memnodes this host leads).", memnodeLabel)
	dForced  = desc("memnode_forced_abort_tids", "Forced-abort tids remembered until the horizon (memnodes this host leads).", memnodeLabel)
	dPages   = desc("memnode_pages", "Allocated 4 KiB pages of the memnode's address space (memnodes this host leads).", memnodeLabel)
)

// Collector reads its hosts' state at every scrape (several hosts in one
// process, as in tutti up, are told apart by the host label).
type Collector struct {
	hosts []*service.Host
}

// NewCollector returns a Collector of hosts.
func NewCollector(hosts ...*service.Host) *Collector { return &Collector{hosts: hosts} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dProposals, dEntries, dFsyncs, dBatches, dApplied, dReads, dSnapshots, dRestores, dExcises, dExciseErrors, dSegments, dSegsRemoved, dLogReads,
		dLeaderChanges, dTerm, dCommit, dAppliedI, dIsLeader, dHasLead, dScans, dResolved, dRecFailed, dExpired, dStuck,
		dInDoubt, dLocks, dDecided, dForced, dPages} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, h := range c.hosts {
		collectHost(h, ch)
	}
}

func collectHost(h *service.Host, ch chan<- prometheus.Metric) {
	host := strconv.FormatUint(h.ID(), 10)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{host}, labels...)...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{host}, labels...)...)
	}
	rep := h.Replication()
	s := rep.Stats()
	counter(dProposals, s.Proposals)
	counter(dEntries, s.Entries)
	counter(dFsyncs, s.Fsyncs)
	counter(dBatches, s.Batches)
	counter(dApplied, s.Applied)
	counter(dReads, s.Reads)
	counter(dSnapshots, s.Snapshots)
	counter(dRestores, s.Restores)
	counter(dExcises, s.LogExcises)
	counter(dExciseErrors, s.LogExciseErrors)
	gauge(dSegments, float64(s.LogSegments))
	counter(dSegsRemoved, s.LogSegmentsRemoved)
	counter(dLogReads, s.LogReads)
	counter(dLeaderChanges, s.LeaderChanges)

	r := h.RecoveryStats()
	counter(dScans, r.Scans)
	counter(dResolved, r.Committed, "commit")
	counter(dResolved, r.Aborted, "abort")
	counter(dRecFailed, r.Failed)
	counter(dExpired, r.Expired)
	gauge(dStuck, float64(r.Stuck))

	for _, g := range rep.Groups() {
		st, err := rep.Status(g)
		if err != nil {
			continue // removed meanwhile
		}
		mn := strconv.FormatUint(g, 10)
		gauge(dTerm, float64(st.Term), mn)
		gauge(dCommit, float64(st.Commit), mn)
		gauge(dAppliedI, float64(st.Applied), mn)
		gauge(dIsLeader, b2f(st.Leader == h.ID()), mn)
		gauge(dHasLead, b2f(st.Leader != 0), mn)
		if st.Leader != h.ID() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), MemnodeReadTimeout)
		ms, err := h.MemnodeStats(ctx, g)
		cancel()
		if err != nil {
			continue // lost leadership or no quorum: the Raft gauges say so
		}
		gauge(dInDoubt, float64(ms.InDoubt), mn)
		gauge(dLocks, float64(ms.Locks), mn)
		gauge(dDecided, float64(ms.Decided), mn)
		gauge(dForced, float64(ms.ForcedAbort), mn)
		gauge(dPages, float64(ms.Pages), mn)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Registry returns a registry with the collectors of hosts and the Go
// runtime and process collectors.
func Registry(hosts ...*service.Host) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(NewCollector(hosts...))
	return reg
}

// Server serves /metrics.
type Server struct {
	srv *http.Server
	lis net.Listener
}

// Route is one more page a Server serves beside /metrics.
type Route struct {
	Pattern string // http.ServeMux pattern, e.g. "/status"
	Handler http.Handler
}

// Serve listens on addr and serves reg at /metrics, and routes, until
// Close.
func Serve(addr string, reg *prometheus.Registry, log zerolog.Logger, routes ...Route) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return ServeListener(lis, reg, log, routes...), nil
}

// ServeListener is Serve on a listener the caller opened (to find out
// that the address is unusable before starting what the metrics are of).
// Close closes lis.
func ServeListener(lis net.Listener, reg *prometheus.Registry, log zerolog.Logger, routes ...Route) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	for _, r := range routes {
		mux.Handle(r.Pattern, r.Handler)
	}
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, lis: lis}
	go func() {
		if err := s.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server stopped")
		}
	}()
	return s
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }
