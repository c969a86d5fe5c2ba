package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/replication"
)

// benchPoint is one measured point; field names are the JSON contract.
type benchPoint struct {
	Workload     string  `json:"workload"`
	Outstanding  int     `json:"outstanding"`
	DurationS    float64 `json:"duration_s"`
	Ops          int64   `json:"ops"`
	OpsPerSec    float64 `json:"ops_per_sec"`
	P50ms        float64 `json:"p50_ms"`
	P99ms        float64 `json:"p99_ms"`
	P999ms       float64 `json:"p999_ms"`
	MaxMs        float64 `json:"max_ms"`
	Errors       int64   `json:"errors"`
	NotCommitted int64   `json:"not_committed"`
	Memnodes     int     `json:"memnodes"`
	Replicas     int     `json:"replicas"`
	Fsync        bool    `json:"fsync"`
	Embedded     bool    `json:"embedded_cluster"`
	// CPU time of this process per op (the whole cluster's when embedded).
	CPUusPerOp float64 `json:"cpu_us_per_op"`
	// Leader changes seen by the embedded cluster's replicas during the
	// point (leadership churn under load shows here).
	LeaderChanges uint64 `json:"leader_changes"`
	// Two-phase decisions per request that carried decisions (a decision
	// request, or a Prepare or Exec they rode on): batching at the client.
	DecisionsPerRequest float64 `json:"decisions_per_request,omitempty"`
	// Share of the decisions that rode on a request sent anyway (a Prepare
	// or Exec to the same memnode) instead of a decision request.
	DecisionsCarried float64 `json:"decisions_carried,omitempty"`
	// Embedded cluster only, summed over its hosts, per committed op: log
	// engine commits with fsync, and Raft entries proposed (each carries a
	// batch of requests). Durable group commit shows in the first: it falls
	// as requests share fsyncs.
	FsyncsPerOp      float64 `json:"fsyncs_per_op,omitempty"`
	RaftEntriesPerOp float64 `json:"raft_entries_per_op,omitempty"`
	// LeaderHosts[i] is the host leading memnode i at the end of the point
	// (embedded cluster only): where the leaders sit changes how requests
	// and Raft traffic batch, so points are comparable only alike.
	LeaderHosts []uint64 `json:"leader_hosts,omitempty"`
	GOMAXPROCS  int      `json:"gomaxprocs"`
	Time        string   `json:"time"`
	// Round of --rounds (1, 2, ...) when comparing workloads; else 0.
	Round int `json:"round,omitempty"`
}

// ratioPoint compares cas2 with base at one cluster size and level: per
// round (the two measured one after the other on fresh clusters) and, with
// Median set, the median over the rounds. Field names are the JSON contract.
type ratioPoint struct {
	Kind         string    `json:"kind"` // "ratio"
	Round        int       `json:"round,omitempty"`
	Median       bool      `json:"median,omitempty"`
	Memnodes     int       `json:"memnodes"`
	Outstanding  int       `json:"outstanding"`
	BaseOps      float64   `json:"base_ops_per_sec,omitempty"`
	Cas2Ops      float64   `json:"cas2_ops_per_sec,omitempty"`
	Cas2OverBase float64   `json:"cas2_over_base"`
	Rounds       []float64 `json:"rounds,omitempty"` // with Median: each round's ratio
	// Peak: the ratio of the workloads' highest throughputs over the
	// --outstanding levels, each at its own level (BaseOutstanding,
	// Cas2Outstanding, set per round, not with Median); Outstanding is 0.
	Peak            bool `json:"peak,omitempty"`
	BaseOutstanding int  `json:"base_outstanding,omitempty"`
	Cas2Outstanding int  `json:"cas2_outstanding,omitempty"`
	// CPU per op of cas2 over base (per round; the median with Median).
	CPUCas2OverBase float64 `json:"cpu_cas2_over_base"`
	Time            string  `json:"time"`
}

func newBench(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure throughput and latency",
	}
	cmd.AddCommand(newBenchMtx(g), newBenchMembers(g))
	cmd.AddCommand(newBenchMcast(g), newBenchMcastMember(g))
	return commandGroup(cmd)
}

func newBenchMtx(g *globals) *cobra.Command {
	var (
		seed        string
		workload    string
		rounds      int
		outstanding string
		duration    time.Duration
		warmup      time.Duration
		asJSON      bool
		outFile     string
		words       int
		memnodes    string
		noSync      bool
		quiet       bool
		cpuProfile  string
		memProfile  string
		perMemnode  bool
		leaders     string
	)
	cmd := &cobra.Command{
		Use:   "mtx",
		Short: "Minitransaction throughput and latency (Sinfonia's workloads)",
		Long: `Measure minitransactions per second and latency percentiles at each level of
outstanding requests.

Workloads:
  base   six 4-byte word-aligned write items chosen at random among --words
         words, on memnode 0 (Sinfonia's base workload; one-phase commit)
  cas2   three compare-and-swaps of 4-byte words spread over two memnodes
         chosen at random (Sinfonia's scaling workload; two-phase commit).
         Each worker swaps its own words (read once at the start of each
         level), so compares succeed and the figure measures the protocol,
         not contention. With one memnode both "memnodes" are the same one
         and it runs one-phase.

"ops" counts committed minitransactions; "not committed" those whose
compare failed (0 unless another program changes the benchmark's words),
"errors" those that failed otherwise.

--workload base,cas2 compares the two on a noisy machine: each of --rounds
rounds runs both workloads one after the other, each on a fresh cluster
(the order alternates between rounds), then prints the ratio of cas2's
throughput to base's, and of their CPU per op, at every cluster size and
level (JSON: "kind": "ratio", "cas2_over_base", "cpu_cas2_over_base").
With several levels it also prints the ratio of the two workloads' peak
throughputs, each at the level where it was highest: their throughput at
saturation ("peak": true, "base_outstanding", "cas2_outstanding").
After the last round it prints the median ratios ("median": true, every
round's ratio in "rounds").

Without --seed the benchmark starts its own local cluster in this process, as
'tutti up' does (3 hosts, 3 replicas per memnode, fsync on), so the figures
include the servers' CPU. --memnodes may list several sizes; each gets a fresh
cluster and its own JSON lines, which shows how the CPU cost of one
minitransaction changes with the number of memnodes. With --per-memnode the
--outstanding levels count per memnode, so the load grows with the cluster
(m memnodes run m times the level): CPU per op then compares clusters each
as busy as the other, not one busy cluster with a more idle one. With --seed
(or TUTTI_SEED) it drives an existing cluster instead, and overwrites the
words it draws from: the first 4 x --words bytes of memnode 0 (base) or of
every memnode (cas2).

The embedded cluster also counts, over its hosts, the log engine's fsyncs and
the Raft entries proposed per committed minitransaction (JSON:
"fsyncs_per_op", "raft_entries_per_op"): how well requests share entries and
fsyncs (group commit), which bounds throughput at low concurrency.

--leaders places the embedded cluster's Raft leaders before measuring:
"spread" (default) gives each memnode's leader to a different host where it
can, as a deployment on several machines would; "colocated" gives them all
to one host, so a client's requests to different memnodes share one
connection and its batches (cas2 gains from this; base, on one memnode, does
not); "any" keeps whatever the elections chose. JSON: "leader_hosts".`,
		Example: `  tutti bench mtx
  tutti bench mtx --outstanding 1,16,64,256 --duration 10s --json --out bench-mtx.json
  tutti bench mtx --workload cas2 --memnodes 1,2,4,8 --outstanding 64 --json
  tutti bench mtx --workload cas2 --memnodes 1,2,4,8 --outstanding 128 --per-memnode --json
  tutti bench mtx --workload base,cas2 --rounds 3 --outstanding 256 --duration 6s
  tutti bench mtx --seed 127.0.0.1:7400 --outstanding 64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			levels, err := parseLevels(outstanding)
			if err != nil {
				return err
			}
			var workloads []string
			for _, w := range strings.Split(workload, ",") {
				w = strings.TrimSpace(w)
				if w != "base" && w != "cas2" {
					return fmt.Errorf("--workload %q: unknown (known: base, cas2)", w)
				}
				if slices.Contains(workloads, w) {
					return fmt.Errorf("--workload %q listed twice", w)
				}
				workloads = append(workloads, w)
			}
			if rounds < 1 {
				return fmt.Errorf("--rounds must be at least 1")
			}
			if duration <= 0 || warmup < 0 {
				return fmt.Errorf("--duration must be positive and --warmup not negative (got %v, %v)", duration, warmup)
			}
			if words < 6 {
				return fmt.Errorf("--words must be at least 6")
			}
			if leaders != "spread" && leaders != "colocated" && leaders != "any" {
				return fmt.Errorf("--leaders %q: unknown (known: spread, colocated, any)", leaders)
			}
			sizes, err := parseList("--memnodes", memnodes, 1, 1024)
			if err != nil {
				return err
			}
			embedded := seed == ""
			// total is the outstanding minitransactions of a level on a
			// cluster of size memnodes.
			total := func(level, size int) int {
				if perMemnode {
					return level * size
				}
				return level
			}
			if perMemnode && !embedded {
				return fmt.Errorf("--per-memnode sizes the load of embedded clusters; it cannot be used with --seed")
			}
			for _, fl := range []string{"no-fsync", "leaders"} {
				if !embedded && cmd.Flags().Changed(fl) {
					return fmt.Errorf("--%s sets up the embedded cluster; it cannot be used with --seed (%s)", fl, seed)
				}
			}
			if most := total(slices.Max(levels), slices.Max(sizes)); slices.Contains(workloads, "cas2") && words < 3*most {
				return fmt.Errorf("--words %d: cas2 needs at least 3 words per worker (%d)", words, 3*most)
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			stopProfile, err := startCPUProfile(cpuProfile)
			if err != nil {
				return err
			}
			defer stopProfile()
			writeAllocs := allocsProfile(memProfile)
			defer func() {
				if err := writeAllocs(); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "tutti: --memprofile: %v\n", err)
				}
			}()
			if !embedded && cmd.Flags().Changed("memnodes") {
				return fmt.Errorf("--memnodes sizes an embedded cluster; it cannot be used with --seed")
			}
			sinks, closeSinks, err := jsonSinks(cmd.OutOrStdout(), asJSON, outFile)
			if err != nil {
				return err
			}
			defer closeSinks()
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "%-9s %8s %11s %10s %12s %9s %9s %9s %7s %13s\n",
					"workload", "memnodes", "outstanding", "ops", "ops/s", "p50 ms", "p99 ms", "cpu µs/op", "errors", "not committed")
			}
			type pointKey struct {
				workload    string
				size, level int // --memnodes size, --outstanding level
			}
			var points map[pointKey]benchPoint // this round's
			run := func(size int, workload string, round int) error {
				seeds := splitSeeds(seed)
				replicas := 0
				var replStats func() replication.Stats
				leaderHosts := func([]uint64) []uint64 { return nil }
				if embedded {
					c, err := startEmbedded(cmd.Context(), cluster.Config{Memnodes: size, NoSync: noSync, Logger: log.Level(max(log.GetLevel(), zerolog.WarnLevel))})
					if err != nil {
						return err
					}
					defer c.Close()
					seeds = c.Seeds()
					replicas = len(c.Memnodes()[0].Replicas)
					replStats = func() replication.Stats { return sumReplStats(c) }
					leaderHosts = func(mns []uint64) []uint64 {
						out := make([]uint64, len(mns))
						for i, mn := range mns {
							out[i] = c.Hosts[0].Replication().Leader(mn)
						}
						return out
					}
					if err := placeLeaders(cmd.Context(), c, leaders); err != nil {
						return err
					}
				}
				ctx := cmd.Context()
				cl, err := client.New(ctx, client.Config{Seeds: seeds, Logger: log})
				if err != nil {
					return err
				}
				defer cl.Close()
				var mns []uint64
				for _, m := range cl.Cluster().GetMemnodes() {
					mns = append(mns, m.GetId())
					if m.GetId() == 0 && !embedded {
						replicas = len(m.GetReplicas())
					}
				}
				slices.Sort(mns)
				for _, level := range levels {
					n := total(level, size)
					var gen func(w int) txGen
					switch workload {
					case "base":
						gen = func(int) txGen { return baseGen(words) }
					case "cas2":
						// Start from the words' current values: an earlier
						// level or run left them non-zero, and compares of
						// stale values would fail (not committed) until
						// every word was re-read.
						cur, err := readWords(ctx, cl, mns, words)
						if err != nil {
							return err
						}
						gen = func(w int) txGen { return newCAS2(cl, mns, words, w, n, cur) }
					}
					st0 := cl.Stats()
					var lc0 uint64
					if replStats != nil {
						lc0 = replStats().LeaderChanges
					}
					p, err := runMtxPoint(ctx, cl, n, warmup, duration, gen, replStats, quiet, cmd.ErrOrStderr())
					if err != nil {
						return err
					}
					if replStats != nil {
						p.LeaderChanges = replStats().LeaderChanges - lc0
					}
					p.LeaderHosts = leaderHosts(mns)
					if st := cl.Stats(); st.DecisionRequests > st0.DecisionRequests {
						p.DecisionsPerRequest = float64(st.Decisions-st0.Decisions) / float64(st.DecisionRequests-st0.DecisionRequests)
						p.DecisionsCarried = float64(st.Carried-st0.Carried) / float64(st.Decisions-st0.Decisions)
					}
					p.Workload, p.Fsync, p.Embedded, p.Replicas = workload, !noSync, embedded, replicas
					p.Memnodes = len(mns)
					if rounds > 1 || len(workloads) > 1 {
						p.Round = round
					}
					points[pointKey{workload, size, level}] = p
					b, _ := json.Marshal(p)
					for _, w := range sinks {
						fmt.Fprintln(w, string(b))
					}
					if !asJSON {
						fmt.Fprintf(cmd.OutOrStdout(), "%-9s %8d %11d %10d %12.0f %9.3f %9.3f %9.1f %7d %13d\n",
							p.Workload, p.Memnodes, p.Outstanding, p.Ops, p.OpsPerSec, p.P50ms, p.P99ms, p.CPUusPerOp, p.Errors, p.NotCommitted)
					}
				}
				return nil
			}
			if !embedded {
				sizes = sizes[:1]
			}
			emit := func(r ratioPoint) {
				r.Kind, r.Time = "ratio", time.Now().UTC().Format(time.RFC3339)
				b, _ := json.Marshal(r)
				for _, w := range sinks {
					fmt.Fprintln(w, string(b))
				}
				if !asJSON {
					label := fmt.Sprintf("round %d", r.Round)
					if r.Median {
						label = fmt.Sprintf("median of %d", len(r.Rounds))
					}
					at := fmt.Sprintf("outstanding %d", r.Outstanding)
					switch {
					case r.Peak && r.Median:
						at = "peak"
					case r.Peak:
						at = fmt.Sprintf("peak (base at %d, cas2 at %d)", r.BaseOutstanding, r.Cas2Outstanding)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "cas2/base %-12s memnodes %d %s: throughput %.2f, cpu/op %.2f\n",
						label, r.Memnodes, at, r.Cas2OverBase, r.CPUCas2OverBase)
				}
			}
			ratios := map[pointKey][]ratioPoint{}
			var order []pointKey
			for round := 1; round <= rounds; round++ {
				points = map[pointKey]benchPoint{}
				ws := slices.Clone(workloads)
				if round%2 == 0 {
					slices.Reverse(ws)
				}
				for _, w := range ws {
					for _, size := range sizes {
						if err := run(size, w, round); err != nil {
							return err
						}
					}
				}
				for _, size := range sizes {
					var peakB, peakC benchPoint
					for _, level := range levels {
						c, okc := points[pointKey{"cas2", size, level}]
						b, okb := points[pointKey{"base", size, level}]
						if okb && b.OpsPerSec > peakB.OpsPerSec {
							peakB = b
						}
						if okc && c.OpsPerSec > peakC.OpsPerSec {
							peakC = c
						}
						if !okc || !okb || b.OpsPerSec == 0 || b.CPUusPerOp == 0 {
							continue
						}
						r := ratioPoint{Round: round, Memnodes: c.Memnodes, Outstanding: c.Outstanding,
							BaseOps: b.OpsPerSec, Cas2Ops: c.OpsPerSec, Cas2OverBase: c.OpsPerSec / b.OpsPerSec,
							CPUCas2OverBase: c.CPUusPerOp / b.CPUusPerOp}
						k := pointKey{size: size, level: level}
						if _, ok := ratios[k]; !ok {
							order = append(order, k)
						}
						ratios[k] = append(ratios[k], r)
						emit(r)
					}
					if len(levels) > 1 && peakB.OpsPerSec > 0 && peakB.CPUusPerOp > 0 && peakC.OpsPerSec > 0 {
						r := ratioPoint{Round: round, Peak: true, Memnodes: peakC.Memnodes,
							BaseOutstanding: peakB.Outstanding, Cas2Outstanding: peakC.Outstanding,
							BaseOps: peakB.OpsPerSec, Cas2Ops: peakC.OpsPerSec, Cas2OverBase: peakC.OpsPerSec / peakB.OpsPerSec,
							CPUCas2OverBase: peakC.CPUusPerOp / peakB.CPUusPerOp}
						k := pointKey{workload: "peak", size: size}
						if _, ok := ratios[k]; !ok {
							order = append(order, k)
						}
						ratios[k] = append(ratios[k], r)
						emit(r)
					}
				}
			}
			if rounds > 1 {
				for _, k := range order {
					rs := ratios[k]
					m := ratioPoint{Median: true, Peak: rs[0].Peak, Memnodes: rs[0].Memnodes, Outstanding: rs[0].Outstanding}
					var cpu []float64
					for _, r := range rs {
						m.Rounds = append(m.Rounds, r.Cas2OverBase)
						cpu = append(cpu, r.CPUCas2OverBase)
					}
					m.Cas2OverBase, m.CPUCas2OverBase = median(m.Rounds), median(cpu)
					emit(m)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	benchSeedFlag(f, &seed, "it overwrites the first 4 x --words bytes of memnode 0 (base) or of every memnode (cas2)")
	f.StringVar(&workload, "workload", "base", "workload: base or cas2, or base,cas2 to print their ratio")
	f.StringVar(&leaders, "leaders", "spread", "embedded cluster's Raft leaders: spread (one memnode per host where it can), colocated (all on one host) or any")
	f.IntVar(&rounds, "rounds", 1, "run the listed workloads this many times, alternating, and print the median cas2/base ratio")
	f.StringVar(&outstanding, "outstanding", "1,16,64,256", "comma-separated levels of outstanding minitransactions")
	f.BoolVar(&perMemnode, "per-memnode", false, "--outstanding levels are per memnode: a cluster of m memnodes runs m times as many (load grows with the cluster)")
	f.DurationVar(&duration, "duration", 10*time.Second, "measured time per level")
	f.DurationVar(&warmup, "warmup", time.Second, "unmeasured time before each level")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per measured point instead of a table")
	f.StringVar(&outFile, "out", "", "also write the JSON lines to this file")
	f.IntVar(&words, "words", 50000, "number of 4-byte words the items are drawn from")
	f.StringVar(&memnodes, "memnodes", "3", "memnodes of the embedded cluster; a comma-separated list runs one cluster per size")
	f.BoolVar(&noSync, "no-fsync", false, "embedded cluster without fsync (not Sinfonia's durable setting)")
	f.BoolVar(&quiet, "quiet", false, "no progress lines on stderr")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file")
	f.StringVar(&memProfile, "memprofile", "", "write a Go allocations profile of the whole run to this file at the end")
	return cmd
}

// median of xs (the mean of the middle two for an even count); 0 if empty.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func parseLevels(s string) ([]int, error) { return parseList("--outstanding", s, 1, 100000) }

// parseList parses a comma-separated list of integers in [lo, hi].
func parseList(flag, s string, lo, hi int) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s: %q is not a number between %d and %d", flag, p, lo, hi)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("%s: %d listed twice", flag, n)
		}
		out = append(out, n)
	}
	return out, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// txGen produces one worker's minitransactions and learns their results.
type txGen interface {
	next(rng *rand.Rand) *client.Tx
	// after is told how the last tx ended; it is not timed.
	after(ctx context.Context, res *client.Result, err error)
}

// baseGen is Sinfonia's base workload: six distinct 4-byte words of memnode
// 0 chosen among words, written with random values.
type baseGen int

func (words baseGen) next(rng *rand.Rand) *client.Tx {
	tx := client.NewTx()
	var picked [6]uint64
	for i := 0; i < 6; i++ {
	again:
		wd := uint64(rng.IntN(int(words)))
		for _, p := range picked[:i] {
			if p == wd {
				goto again
			}
		}
		picked[i] = wd
		tx.Write(0, wd*4, binary.LittleEndian.AppendUint32(nil, rng.Uint32()))
	}
	return tx
}

func (baseGen) after(context.Context, *client.Result, error) {}

// cas2 is Sinfonia's scaling workload: three compare-and-swaps of 4-byte
// words spread over two memnodes. Worker w of n owns the words whose index
// is w mod n on every memnode and remembers their values, so its compares
// match unless an earlier outcome was unknown; then it re-reads them.
type cas2 struct {
	cl    *client.Client
	mns   []uint64
	owned int // words owned per memnode
	w, n  int
	// vals[m*owned+j]: the value this worker last wrote to its j-th word
	// of memnode mns[m] (a slice, not a map: the driver's own CPU counts
	// in the figures).
	vals   []uint32
	last   [3]cas2Word
	lastTo [3]uint32
}

type cas2Word struct{ m, j int } // index into mns, word index

// newCAS2 returns worker w of n; cur[m][i] is the value of word i of
// memnode mns[m] (readWords).
func newCAS2(cl *client.Client, mns []uint64, words, w, n int, cur [][]uint32) *cas2 {
	g := &cas2{cl: cl, mns: mns, owned: words / n, w: w, n: n, vals: make([]uint32, len(mns)*(words/n))}
	for m := range mns {
		for j := range g.owned {
			g.vals[m*g.owned+j] = cur[m][w+n*j]
		}
	}
	return g
}

// readWords reads the first words 4-byte words of every memnode of mns.
func readWords(ctx context.Context, cl *client.Client, mns []uint64, words int) ([][]uint32, error) {
	const chunk = 64 << 10 // words per read item: 256 KiB
	out := make([][]uint32, len(mns))
	for m, mn := range mns {
		out[m] = make([]uint32, 0, words)
		for first := 0; first < words; first += chunk {
			cnt := min(chunk, words-first)
			res, err := cl.Exec(ctx, client.NewTx().Read(mn, uint64(first)*4, uint32(cnt)*4))
			if err != nil {
				return nil, fmt.Errorf("reading the cas2 words of memnode %d: %w", mn, err)
			}
			for i := range cnt {
				out[m] = append(out[m], binary.LittleEndian.Uint32(res.Reads[0][4*i:]))
			}
		}
	}
	return out, nil
}

func (g *cas2) addr(k cas2Word) (mn, addr uint64) {
	return g.mns[k.m], uint64(g.w+g.n*k.j) * 4
}

func (g *cas2) next(rng *rand.Rand) *client.Tx {
	a := rng.IntN(len(g.mns))
	b := a
	for len(g.mns) > 1 && b == a {
		b = rng.IntN(len(g.mns))
	}
	tx := client.NewTx()
	for i := 0; i < 3; i++ {
		m := a
		if i == 1 || (i == 2 && rng.IntN(2) == 0) {
			m = b
		}
	again:
		k := cas2Word{m, rng.IntN(g.owned)}
		for _, p := range g.last[:i] {
			if p == k {
				goto again
			}
		}
		g.last[i] = k
		g.lastTo[i] = rng.Uint32()
		mn, addr := g.addr(k)
		tx.Compare(mn, addr, binary.LittleEndian.AppendUint32(nil, g.vals[k.m*g.owned+k.j]))
		tx.Write(mn, addr, binary.LittleEndian.AppendUint32(nil, g.lastTo[i]))
	}
	return tx
}

func (g *cas2) after(ctx context.Context, res *client.Result, err error) {
	if err == nil && res.Committed {
		for i, k := range g.last {
			g.vals[k.m*g.owned+k.j] = g.lastTo[i]
		}
		return
	}
	// Unknown outcome or a stale value: learn the truth.
	tx := client.NewTx()
	for _, k := range g.last {
		mn, addr := g.addr(k)
		tx.Read(mn, addr, 4)
	}
	if r, err := g.cl.Exec(ctx, tx); err == nil && r.Committed {
		for i, k := range g.last {
			g.vals[k.m*g.owned+k.j] = binary.LittleEndian.Uint32(r.Reads[i])
		}
	}
}

// runMtxPoint runs one level: n workers issuing minitransactions back to
// back, measured for dur after warmup.
// replStats, if not nil, sums the embedded cluster's replication counters;
// the point reports their change over the measured window.
func runMtxPoint(ctx context.Context, cl *client.Client, n int, warmup, dur time.Duration, gen func(w int) txGen, replStats func() replication.Stats, quiet bool, progress io.Writer) (benchPoint, error) {
	start := time.Now().Add(warmup)
	end := start.Add(dur)
	var ops, errs, notCommitted atomic.Int64
	var firstErr atomic.Value
	// Latencies go to a few shared histograms rather than one per worker:
	// a histogram is ~140 KB, and thousands of them (one per outstanding
	// minitransaction) cost the measured window first touches of their
	// pages and took CPU from the cluster being measured.
	hists := newLatencyShards(n)
	var wg sync.WaitGroup
	var cpuStart time.Duration
	var replStart replication.Stats
	var cpuOnce sync.Once
	for w := 0; w < n; w++ {
		g := gen(w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for {
				now := time.Now()
				if now.After(end) || ctx.Err() != nil {
					return
				}
				tx := g.next(rng)
				t0 := time.Now()
				res, err := cl.Exec(ctx, tx)
				lat := time.Since(t0)
				g.after(ctx, res, err)
				if t0.Before(start) {
					continue
				}
				if t0.After(end) {
					return
				}
				cpuOnce.Do(func() {
					cpuStart = cpuTime()
					if replStats != nil {
						replStart = replStats()
					}
				})
				switch {
				case err != nil:
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
				case !res.Committed:
					notCommitted.Add(1)
				default:
					ops.Add(1)
					hists.record(w, lat)
				}
			}
		}()
	}
	stop := make(chan struct{})
	if !quiet {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case now := <-t.C:
					if now.After(start) {
						el := now.Sub(start).Seconds()
						fmt.Fprintf(progress, "  outstanding=%d  %4.0fs  %d ops  %.0f ops/s\n", n, el, ops.Load(), float64(ops.Load())/el)
					} else {
						fmt.Fprintf(progress, "  outstanding=%d  warming up\n", n)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	cpu := cpuTime() - cpuStart
	var repl replication.Stats
	if replStats != nil {
		end := replStats()
		repl = replication.Stats{Fsyncs: end.Fsyncs - replStart.Fsyncs, Entries: end.Entries - replStart.Entries}
	}
	if ctx.Err() != nil {
		return benchPoint{}, ctx.Err()
	}
	h := hists.merged()
	p := benchPoint{
		Outstanding: n, DurationS: dur.Seconds(), Ops: ops.Load(), Errors: errs.Load(), NotCommitted: notCommitted.Load(),
		OpsPerSec: float64(ops.Load()) / dur.Seconds(),
		P50ms:     float64(h.ValueAtQuantile(50)) / 1000, P99ms: float64(h.ValueAtQuantile(99)) / 1000,
		P999ms: float64(h.ValueAtQuantile(99.9)) / 1000, MaxMs: float64(h.Max()) / 1000,
		GOMAXPROCS: runtime.GOMAXPROCS(0), Time: time.Now().UTC().Format(time.RFC3339),
	}
	if p.Ops > 0 {
		p.CPUusPerOp = float64(cpu.Microseconds()) / float64(p.Ops)
		p.FsyncsPerOp = float64(repl.Fsyncs) / float64(p.Ops)
		p.RaftEntriesPerOp = float64(repl.Entries) / float64(p.Ops)
	}
	if p.Ops == 0 && p.Errors > 0 {
		return p, fmt.Errorf("every minitransaction failed: %v", firstErr.Load())
	}
	if e, ok := firstErr.Load().(error); ok && !quiet {
		fmt.Fprintf(progress, "  %d errors, first: %v\n", p.Errors, errors.Unwrap(e))
	}
	return p, nil
}

// latencyShards records latencies (µs, up to a minute) from many workers
// into a few histograms, each behind its own lock.
type latencyShards []latencyShard

type latencyShard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	_  [40]byte // keep shards' locks on separate cache lines
}

func newLatencyShards(workers int) latencyShards {
	s := make(latencyShards, min(max(workers, 1), 4*runtime.GOMAXPROCS(0)))
	for i := range s {
		s[i].h = hdrhistogram.New(1, 60_000_000, 3)
	}
	return s
}

func (s latencyShards) record(worker int, lat time.Duration) {
	x := &s[worker%len(s)]
	x.mu.Lock()
	x.h.RecordValue(max(1, lat.Microseconds()))
	x.mu.Unlock()
}

func (s latencyShards) merged() *hdrhistogram.Histogram {
	h := hdrhistogram.New(1, 60_000_000, 3)
	for i := range s {
		s[i].mu.Lock()
		h.Merge(s[i].h)
		s[i].mu.Unlock()
	}
	return h
}

// placeLeaders moves the Raft leaders of c's memnodes as --leaders says:
// "spread" gives memnode i to the i-th of its replicas' hosts (mod their
// number), "colocated" gives every memnode to the first replica host of
// memnode 0, "any" leaves them. It waits until each move took effect.
func placeLeaders(ctx context.Context, c *cluster.Cluster, how string) error {
	if how == "any" {
		return nil
	}
	mns := c.Memnodes()
	for i, m := range mns {
		reps := slices.Sorted(slices.Values(m.Replicas))
		to := reps[i%len(reps)]
		if how == "colocated" {
			to = slices.Min(mns[0].Replicas)
			if !slices.Contains(reps, to) {
				continue // not a replica here: leave it
			}
		}
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := cluster.Eventually(ctx, fmt.Sprintf("memnode %d led by host %d", m.ID, to), func() error {
			lead := c.Hosts[0].Replication().Leader(m.ID)
			if lead == to {
				return nil
			}
			if h := c.Host(lead); h != nil {
				_ = h.Replication().TransferLeader(ctx, m.ID, to)
			}
			return fmt.Errorf("led by host %d", lead)
		})
		cancel()
		if err != nil {
			return fmt.Errorf("--leaders %s: %w", how, err)
		}
	}
	return nil
}
