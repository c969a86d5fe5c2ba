package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
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
	"github.com/spf13/pflag"

	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/replication"
)

// mcastPoint is one measured point of `tutti bench mcast`; field names are
// the JSON contract.
type mcastPoint struct {
	Mode      string `json:"mode"` // "load" or "crash"
	Members   int    `json:"members"`
	Processes bool   `json:"processes"` // members are separate OS processes
	MsgBytes  int    `json:"msg_bytes"`
	// Payload: what fills a message after the benchmark's header,
	// "random" (incompressible) or "zeros".
	Payload string `json:"payload"`
	// Offered: msgs/s per member asked for (0 with "max": Window
	// Multicasts outstanding per member, back to back).
	Offered    float64 `json:"offered_per_sec"`
	Saturation bool    `json:"saturation"`
	Window     int     `json:"window,omitempty"`
	// Async: the members multicast with MulticastAsync (--async).
	Async     bool    `json:"async,omitempty"`
	DurationS float64 `json:"duration_s"`
	// SentPerMember: Multicasts that returned nil per member per second.
	SentPerMember float64 `json:"sent_per_member_per_sec"`
	// DeliveredPerMember: messages delivered per member per second (mean
	// over members; every member delivers every member's messages), and
	// the slowest member's figure.
	DeliveredPerMember    float64 `json:"delivered_per_member_per_sec"`
	DeliveredPerMemberMin float64 `json:"delivered_per_member_per_sec_min"`
	// Multicast at the sender to delivery at every member (the last of the
	// members), over sampled messages; wall clock of one machine.
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
	Samples int     `json:"samples"`
	// Multicast call to return (ordered), at the sender.
	OrderP50ms float64 `json:"multicast_p50_ms"`
	OrderP99ms float64 `json:"multicast_p99_ms"`
	// Lost: messages whose Multicast returned nil that some member had not
	// delivered by the end of the drain (must be 0); Errors: failed
	// Multicasts.
	Lost   int64 `json:"lost"`
	Errors int64 `json:"errors"`
	// LinkLostRatio: the share of the senders' link attempts (warm-up
	// included) refused because the view had changed, and retried
	// (gcs.SendStats; until links appended, those that lost the race on
	// the order log's tail).
	LinkLostRatio float64 `json:"link_lost_ratio"`
	// CPU seconds per second of the members (sum) and of this process
	// (the embedded cluster's servers).
	MembersCPU float64 `json:"members_cpu"`
	ClusterCPU float64 `json:"cluster_cpu"`
	// Embedded cluster only, summed over its hosts, per message multicast
	// (warm-up included, as the CPU figures): log engine commits with
	// fsync and Raft entries proposed.
	FsyncsPerMsg      float64 `json:"fsyncs_per_msg,omitempty"`
	RaftEntriesPerMsg float64 `json:"raft_entries_per_msg,omitempty"`
	// Crash mode: trials, the views seen, and crash-to-new-view-at-every-
	// survivor percentiles (P50ms/P99ms/MaxMs).
	Trials     int      `json:"trials,omitempty"`
	Detected   int      `json:"detected,omitempty"`
	Note       string   `json:"note,omitempty"`
	GCSFlags   []string `json:"gcs_flags,omitempty"`
	Embedded   bool     `json:"embedded_cluster"`
	Fsync      bool     `json:"fsync"`
	GOMAXPROCS int      `json:"gomaxprocs"`
	Time       string   `json:"time"`
}

// mcastCmd is a command the benchmark sends a member on its stdin.
type mcastCmd struct {
	Cmd     string  `json:"cmd"` // "run", "drain", "quit"
	Point   uint32  `json:"point"`
	Rate    float64 `json:"rate,omitempty"` // 0: saturation
	Window  int     `json:"window,omitempty"`
	Async   bool    `json:"async,omitempty"` // MulticastAsync instead of Multicast
	StartNs int64   `json:"start_ns,omitempty"`
	WarmNs  int64   `json:"warm_ns,omitempty"`
	DurNs   int64   `json:"dur_ns,omitempty"`
	Stride  uint64  `json:"stride,omitempty"`
	Senders int     `json:"senders,omitempty"` // members 0..Senders-1 send (0: all)
	Members int     `json:"members,omitempty"`
	Sent    []int64 `json:"sent,omitempty"` // drain: messages each member sent
}

// mcastReport is a line a member writes on its stdout.
type mcastReport struct {
	Type    string `json:"type"` // "ready", "view", "sent", "result", "error"
	Name    string `json:"name,omitempty"`
	Index   int    `json:"index"`
	View    uint64 `json:"view,omitempty"`
	Members int    `json:"members,omitempty"`
	TimeNs  int64  `json:"t_ns,omitempty"`
	Point   uint32 `json:"point,omitempty"`
	Sent    int64  `json:"sent,omitempty"`
	Errors  int64  `json:"errors,omitempty"`
	// Links and LostRaces: the sender's link attempts during the point
	// (gcs.SendStats).
	Links     uint64 `json:"links,omitempty"`
	LostRaces uint64 `json:"lost_races,omitempty"`
	// Delivered in the measured window; Missing: messages of the point
	// not delivered by the end of the drain.
	Delivered int64 `json:"delivered,omitempty"`
	Missing   int64 `json:"missing,omitempty"`
	// Samples: sender, seq, send ns, delivery ns (4 per sample).
	Samples  []int64 `json:"samples,omitempty"`
	OrderP50 float64 `json:"order_p50_us,omitempty"`
	OrderP99 float64 `json:"order_p99_us,omitempty"`
	CPUs     float64 `json:"cpu_s,omitempty"`
	Err      string  `json:"err,omitempty"`
}

// Values of --payload.
const (
	payloadRandom = "random"
	payloadZeros  = "zeros"
)

// randomBytes is 4 MiB of pseudo-random bytes (xorshift64, fixed seed).
var randomBytes = sync.OnceValue(func() []byte {
	b := make([]byte, 4<<20)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x >> 32)
	}
	return b
})

// randomFill returns n bytes of randomBytes at an offset that depends on
// the sender and the sequence number, so messages that meet in a
// compression window (Pebble's table blocks, snappy's 64 KiB) do not
// repeat each other and nothing compresses them. n must be at most 1 MiB.
func randomFill(sender int, seq uint64, n int) []byte {
	b := randomBytes()
	off := (seq*0x9e3779b1 + uint64(sender)*0x85ebca77) % uint64(len(b)-n)
	return b[off : off+uint64(n)]
}

// mcastHeader is the benchmark's header at the start of every payload:
// point u32, sender index u32, seq u64, send time (unix ns) i64.
const mcastHeader = 24

func newBenchMcast(g *globals) *cobra.Command {
	var (
		seed        string
		members     int
		msgBytes    int
		payload     string
		rates       string
		duration    time.Duration
		warmup      time.Duration
		window      int
		async       bool
		asJSON      bool
		outFile     string
		noSync      bool
		quiet       bool
		cpuProfile  string
		memProfile  string
		memberProf  string
		crashTrials int
		crashMax    time.Duration
		senders     int
		gcsFlags    []string
		logDir      string
		memberLog   string
	)
	cmd := &cobra.Command{
		Use:   "mcast",
		Short: "Group multicast: delivered messages/s per member and multicast-to-delivery latency",
		Long: `Measure gcs multicast with the members as separate OS processes: this command
re-runs its own binary as the hidden 'tutti bench mcast-member' --members
times; each process opens a client and a gcs Node and joins one group, and
every member sends. Without --seed a local cluster (3 hosts, 3 memnodes, 3
replicas each, fsync on) runs inside this process, as 'tutti up' does.

For each --rates entry (messages/s offered per member; "max" keeps --window
Multicasts outstanding per member back to back, i.e. saturation; with
--async one goroutine per member keeps them in flight with MulticastAsync
instead of one goroutine per message blocked in Multicast) the members
send --msg-bytes messages for --warmup + --duration (after a 24-byte header,
--payload: pseudo-random bytes by default, which no layer can compress;
"zeros" lets the log engine's compression of flushed tables shrink them,
which flatters saturation). Reported: messages
delivered per member per second in the measured window, and the time from
the Multicast call at the sender to delivery at every member (the last of
them), p50/p99 over sampled messages. Send and delivery times are wall-clock
(CLOCK_REALTIME) of this one machine, carried in the payload. After each
point the members drain and check that every message whose Multicast
returned nil was delivered by every member ("lost" must be 0).

A fresh embedded cluster spends its first seconds of saturation filling the
log engine's memtables for the first time (64 MiB arenas, reused after);
where first touches of memory are slow (11 µs a page on one VM here),
saturation measured after a 1 s warm-up was about a quarter below the
steady state. For a steady-state figure give a longer one, e.g.
--warmup 20s.

--crash-trials N then runs the members with membership agents (gossip) and
N times SIGKILLs one member, measuring the time until every survivor
delivered the view without it (membership-driven removal), restarting the
victim in between.

One JSON object per measured point with --json. With the embedded cluster
it also counts, over its hosts, the log engine's fsyncs and the Raft
entries proposed per message multicast ("fsyncs_per_msg",
"raft_entries_per_msg"), warm-up included as for the CPU figures.`,
		Example: `  tutti bench mcast
  tutti bench mcast --rates 100,1000,max --duration 5s --json --out bench-mcast.json
  tutti bench mcast --rates max --cpuprofile cluster.prof --member-cpuprofile /tmp/mprof
  tutti bench mcast --rates 100 --crash-trials 20 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if members < 1 || members > 32 {
				return fmt.Errorf("--members must be 1..32")
			}
			if msgBytes < mcastHeader || msgBytes > 1<<20 {
				return fmt.Errorf("--msg-bytes must be %d..%d", mcastHeader, 1<<20)
			}
			if payload != payloadRandom && payload != payloadZeros {
				return fmt.Errorf("--payload must be %q or %q, not %q", payloadRandom, payloadZeros, payload)
			}
			if duration <= 0 || duration > 10*time.Minute || warmup < 0 || warmup > time.Minute {
				return fmt.Errorf("--duration must be in (0, 10m], --warmup in [0, 1m]")
			}
			if window < 1 || window > 1<<16 {
				return fmt.Errorf("--window must be 1..65536")
			}
			if crashTrials < 0 || crashTrials > 1000 {
				return fmt.Errorf("--crash-trials must be 0..1000")
			}
			if crashMax <= 0 {
				return fmt.Errorf("--crash-timeout must be positive")
			}
			if senders < 0 || senders > members {
				return fmt.Errorf("--senders %d: must be 0 (every member) to --members (%d)", senders, members)
			}
			if seed != "" && cmd.Flags().Changed("no-fsync") {
				return fmt.Errorf("--no-fsync sets up the embedded cluster; it cannot be used with --seed (%s)", seed)
			}
			var levels []float64
			for _, p := range strings.Split(rates, ",") {
				p = strings.TrimSpace(p)
				if p == "" {
					continue
				}
				if p == "max" {
					levels = append(levels, 0)
					continue
				}
				r, err := strconv.ParseFloat(p, 64)
				if err != nil || r <= 0 || r > 1e7 {
					return fmt.Errorf("--rates: %q is neither \"max\" nor a rate in (0, 1e7]", p)
				}
				levels = append(levels, r)
			}
			if len(levels) == 0 && crashTrials == 0 {
				return fmt.Errorf("nothing to do: no --rates and no --crash-trials")
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			stopProfile, err := startCPUProfile(cpuProfile)
			if err != nil {
				return err
			}
			defer stopProfile()
			embedded := seed == ""
			seeds := splitSeeds(seed)
			var replStats func() replication.Stats
			if embedded {
				c, err := startEmbedded(ctx, cluster.Config{NoSync: noSync, Logger: log.Level(max(log.GetLevel(), zerolog.WarnLevel))})
				if err != nil {
					return err
				}
				defer c.Close()
				seeds = c.Seeds()
				replStats = func() replication.Stats { return sumReplStats(c) }
			}
			// Registered after the cluster's Close: written while it still
			// holds its memory (inuse_space shows what it keeps).
			writeAllocs := allocsProfile(memProfile)
			defer func() {
				if err := writeAllocs(); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "tutti: --memprofile: %v\n", err)
				}
			}()
			logDir, cleanup, err := benchLogDir(logDir, "tutti-bench-mcast-")
			if err != nil {
				return err
			}
			defer cleanup()
			progress := io.Writer(cmd.ErrOrStderr())
			if quiet {
				progress = io.Discard
			}
			sinks, closeSinks, err := jsonSinks(cmd.OutOrStdout(), asJSON, outFile)
			if err != nil {
				return err
			}
			defer closeSinks()
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "%-6s %7s %9s %10s %14s %9s %9s %10s %6s %10s\n",
					"mode", "members", "msg bytes", "offered/s", "delivered/s/m", "p50 ms", "p99 ms", "order p50", "lost", "races lost")
			}
			emit := func(p mcastPoint) {
				p.Members, p.Processes, p.MsgBytes, p.Payload, p.GCSFlags = members, true, msgBytes, payload, gcsFlags
				p.Embedded, p.Fsync = embedded, !noSync
				p.GOMAXPROCS, p.Time = runtime.GOMAXPROCS(0), time.Now().UTC().Format(time.RFC3339)
				b, _ := json.Marshal(p)
				for _, w := range sinks {
					fmt.Fprintln(w, string(b))
				}
				if !asJSON {
					off := "max"
					if !p.Saturation {
						off = strconv.FormatFloat(p.Offered, 'f', 0, 64)
					}
					if p.Mode == "crash" {
						off = "-"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%-6s %7d %9d %10s %14.0f %9.2f %9.2f %10.2f %6d %9.0f%%\n",
						p.Mode, p.Members, p.MsgBytes, off, p.DeliveredPerMember, p.P50ms, p.P99ms, p.OrderP50ms, p.Lost, 100*p.LinkLostRatio)
					if p.Note != "" {
						fmt.Fprintln(cmd.OutOrStdout(), "  note:", p.Note)
					}
				}
			}
			b := &mcastBench{exe: exe, seeds: seeds, logDir: logDir, progress: progress, msgBytes: msgBytes, payload: payload,
				group: fmt.Sprintf("bench-mcast-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6), gcsFlags: gcsFlags, memberProf: memberProf, memberLog: memberLog, senders: senders, async: async, replStats: replStats}
			if !embedded {
				// Deferred before stopAll, so it runs after it: the
				// members leave first, then their groups go.
				var groups []string
				if len(levels) > 0 {
					groups = append(groups, b.group)
				}
				if crashTrials > 0 {
					groups = append(groups, b.group+"-crash")
				}
				defer deleteBenchGroups(cmd, log, seeds, groups)
			}
			defer b.stopAll()
			if len(levels) > 0 {
				if err := b.start(ctx, members, false); err != nil {
					return err
				}
				for i, r := range levels {
					p, err := b.point(ctx, uint32(i+1), r, window, warmup, duration)
					if err != nil {
						return err
					}
					emit(p)
				}
				b.stopAll()
			}
			if crashTrials > 0 {
				b.group += "-crash"
				if err := b.start(ctx, members, true); err != nil {
					return err
				}
				p, err := b.crash(ctx, crashTrials, crashMax)
				if err != nil {
					return err
				}
				emit(p)
			}
			return nil
		},
	}
	f := cmd.Flags()
	benchSeedFlag(f, &seed, "the members join new groups named bench-mcast-<pid>-<n> there, deleted once they left")
	f.IntVar(&members, "members", 3, "group members, each a separate OS process")
	f.IntVar(&msgBytes, "msg-bytes", 1024, "bytes per message (at least 24: the benchmark's header)")
	f.StringVar(&payload, "payload", payloadRandom, `message bytes after the header: "random" (incompressible) or "zeros"`)
	f.StringVar(&rates, "rates", "100,max", `offered messages/s per member, comma-separated; "max" is saturation`)
	f.DurationVar(&duration, "duration", 5*time.Second, "measured time per rate")
	f.DurationVar(&warmup, "warmup", time.Second, "unmeasured sending before each measured window")
	f.IntVar(&senders, "senders", 0, "only the first N members send (0: every member)")
	f.IntVar(&window, "window", 2048, `Multicasts outstanding per member at "max" (bounds paced rates too)`)
	f.BoolVar(&async, "async", false, "members send with MulticastAsync, --window messages in flight, instead of a goroutine blocked in Multicast per message")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per measured point instead of a table")
	f.StringVar(&outFile, "out", "", "also write the JSON lines to this file")
	f.BoolVar(&noSync, "no-fsync", false, "embedded cluster without fsync (not the durable setting)")
	f.BoolVar(&quiet, "quiet", false, "no progress lines on stderr")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a Go CPU profile of this process (the embedded cluster) to this file")
	f.StringVar(&memProfile, "memprofile", "", "write a Go allocations profile of this process (the embedded cluster) to this file at the end, before the cluster closes")
	f.StringVar(&memberProf, "member-cpuprofile", "", "directory: each member process writes member-<i>.prof there")
	f.IntVar(&crashTrials, "crash-trials", 0, "after the rates, crash trials: kill a member, time the new view at every survivor (0: none)")
	f.DurationVar(&crashMax, "crash-timeout", 30*time.Second, "a crash not in a view at every survivor after this long counts as undetected")
	f.StringArrayVar(&gcsFlags, "gcs-flag", nil, "extra flag for every member, e.g. --gcs-flag=--max-batch=512 (repeatable)")
	f.StringVar(&memberLog, "member-log-level", "warn", "log level of the member processes")
	f.StringVar(&logDir, "logs", "", "keep the members' logs in this directory (default: a temporary one, removed)")
	return cmd
}

type mcastMember struct {
	index   int
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	enc     *json.Encoder
	reports chan mcastReport
	exited  chan struct{}
}

type mcastBench struct {
	exe        string
	seeds      []string
	logDir     string
	group      string
	progress   io.Writer
	msgBytes   int
	payload    string
	gcsFlags   []string
	memberProf string
	memberLog  string
	senders    int
	async      bool
	members    []*mcastMember
	spawns     int
	// replStats sums the embedded cluster's replication counters (nil
	// for an external cluster).
	replStats func() replication.Stats
}

// spawn starts member index and waits for its ready line.
func (b *mcastBench) spawn(ctx context.Context, index int, withMembership bool) (*mcastMember, error) {
	b.spawns++
	args := []string{"bench", "mcast-member", "--seed", strings.Join(b.seeds, ","), "--group", b.group,
		"--index", strconv.Itoa(index), "--msg-bytes", strconv.Itoa(b.msgBytes), "--payload", b.payload, "--log-format", "json", "--log-level", b.memberLog}
	if withMembership {
		// Nobody needs the member's gossip address in advance (it joins
		// through the live rows of the process table): it binds a port the
		// kernel picks, which no other socket can take before it binds.
		args = append(args, "--membership", "--gossip-addr", "127.0.0.1:0")
	}
	if b.memberProf != "" {
		if err := os.MkdirAll(b.memberProf, 0o755); err != nil {
			return nil, err
		}
		args = append(args, "--cpuprofile", filepath.Join(b.memberProf, fmt.Sprintf("member-%d.prof", index)))
	}
	args = append(args, b.gcsFlags...)
	logf, err := os.OpenFile(filepath.Join(b.logDir, fmt.Sprintf("member-%d.log", index)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c := exec.Command(b.exe, args...)
	c.Stderr = logf
	stdin, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	m := &mcastMember{index: index, cmd: c, stdin: stdin, enc: json.NewEncoder(stdin),
		reports: make(chan mcastReport, 4096), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 256<<20)
		for sc.Scan() {
			var r mcastReport
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				m.reports <- r
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = c.Wait()
		close(m.exited)
	}()
	r, err := m.await(ctx, "ready", 60*time.Second, nil)
	if err != nil {
		_ = c.Process.Kill()
		return nil, fmt.Errorf("member %d: %w (see %s)", index, err, filepath.Join(b.logDir, fmt.Sprintf("member-%d.log", index)))
	}
	m.name = r.Name
	return m, nil
}

// await returns the next report of type typ (others go to other, if set).
func (m *mcastMember) await(ctx context.Context, typ string, d time.Duration, other func(mcastReport)) (mcastReport, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case r := <-m.reports:
			if r.Type == "error" {
				return r, fmt.Errorf("member %d: %s", m.index, r.Err)
			}
			if r.Type == typ {
				return r, nil
			}
			if other != nil {
				other(r)
			}
		case <-m.exited:
			return mcastReport{}, fmt.Errorf("member %d exited", m.index)
		case <-t.C:
			return mcastReport{}, fmt.Errorf("member %d: no %q report after %v", m.index, typ, d)
		case <-ctx.Done():
			return mcastReport{}, ctx.Err()
		}
	}
}

// start spawns n members and waits until each delivered a view of n.
func (b *mcastBench) start(ctx context.Context, n int, withMembership bool) error {
	b.members = nil
	for i := range n {
		m, err := b.spawn(ctx, i, withMembership)
		if err != nil {
			return err
		}
		b.members = append(b.members, m)
	}
	for _, m := range b.members {
		if err := b.awaitView(ctx, m, func(r mcastReport) bool { return r.Members == n }, 60*time.Second); err != nil {
			return err
		}
	}
	fmt.Fprintf(b.progress, "bench mcast: %d member processes in one view (logs in %s)\n", n, b.logDir)
	return nil
}

func (b *mcastBench) awaitView(ctx context.Context, m *mcastMember, ok func(mcastReport) bool, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		r, err := m.await(ctx, "view", time.Until(deadline), nil)
		if err != nil {
			return err
		}
		if ok(r) {
			return nil
		}
	}
}

// point runs one rate (0: saturation) on every member.
func (b *mcastBench) point(ctx context.Context, id uint32, rate float64, window int, warmup, dur time.Duration) (mcastPoint, error) {
	n := len(b.members)
	// Sample about 20k messages per point for latency.
	expect := rate * float64(n) * (warmup + dur).Seconds()
	if rate == 0 {
		expect = 60000 * float64(n) * (warmup + dur).Seconds()
	}
	stride := uint64(max(1, expect/20000))
	start := time.Now().Add(300 * time.Millisecond)
	c := mcastCmd{Cmd: "run", Point: id, Rate: rate, Window: window, StartNs: start.UnixNano(), WarmNs: int64(warmup), DurNs: int64(dur), Stride: stride, Senders: b.senders, Members: n, Async: b.async}
	label := "max"
	if rate > 0 {
		label = strconv.FormatFloat(rate, 'f', -1, 64) + "/s"
	}
	fmt.Fprintf(b.progress, "bench mcast: point %d: %s per member, %v + %v warmup\n", id, label, dur, warmup)
	cpu0 := cpuTime()
	var repl0 replication.Stats
	if b.replStats != nil {
		repl0 = b.replStats()
	}
	for _, m := range b.members {
		if err := m.enc.Encode(c); err != nil {
			return mcastPoint{}, err
		}
	}
	sent := make([]int64, n)
	p := mcastPoint{Mode: "load", Offered: rate, Saturation: rate == 0, Async: b.async, DurationS: dur.Seconds()}
	if rate == 0 {
		p.Window = window
	}
	var orderP50, orderP99 []float64
	var links, lost uint64
	for i, m := range b.members {
		r, err := m.await(ctx, "sent", warmup+dur+2*time.Minute, nil)
		if err != nil {
			return p, err
		}
		sent[i] = r.Sent
		p.Errors += r.Errors
		links, lost = links+r.Links, lost+r.LostRaces
		p.MembersCPU += r.CPUs
		orderP50, orderP99 = append(orderP50, r.OrderP50), append(orderP99, r.OrderP99)
	}
	if links+lost > 0 {
		p.LinkLostRatio = float64(lost) / float64(links+lost)
	}
	clusterCPU := cpuTime() - cpu0
	var repl replication.Stats
	if b.replStats != nil {
		repl = b.replStats()
	}
	for _, m := range b.members {
		if err := m.enc.Encode(mcastCmd{Cmd: "drain", Point: id, Sent: sent}); err != nil {
			return p, err
		}
	}
	type key struct{ sender, seq int64 }
	type obs struct {
		send, last int64
		seen       int
	}
	seen := map[key]*obs{}
	var delivered []float64
	for _, m := range b.members {
		r, err := m.await(ctx, "result", 2*time.Minute, nil)
		if err != nil {
			return p, err
		}
		delivered = append(delivered, float64(r.Delivered)/dur.Seconds())
		p.Lost += r.Missing
		for i := 0; i+3 < len(r.Samples); i += 4 {
			k := key{r.Samples[i], r.Samples[i+1]}
			o := seen[k]
			if o == nil {
				o = &obs{send: r.Samples[i+2]}
				seen[k] = o
			}
			o.last = max(o.last, r.Samples[i+3])
			o.seen++
		}
	}
	h := hdrhistogram.New(1, 600_000_000, 3) // µs
	for _, o := range seen {
		if o.seen == n {
			h.RecordValue(max(1, (o.last-o.send)/1000))
		}
	}
	var total int64
	for _, s := range sent {
		total += s
	}
	p.Samples = int(h.TotalCount())
	p.SentPerMember = float64(total) / float64(n) / (warmup + dur).Seconds()
	if b.replStats != nil && total > 0 {
		p.FsyncsPerMsg = float64(repl.Fsyncs-repl0.Fsyncs) / float64(total)
		p.RaftEntriesPerMsg = float64(repl.Entries-repl0.Entries) / float64(total)
	}
	for _, d := range delivered {
		p.DeliveredPerMember += d / float64(n)
	}
	p.DeliveredPerMemberMin = slices.Min(delivered)
	p.P50ms, p.P99ms, p.MaxMs = float64(h.ValueAtQuantile(50))/1000, float64(h.ValueAtQuantile(99))/1000, float64(h.Max())/1000
	slices.Sort(orderP50)
	slices.Sort(orderP99)
	p.OrderP50ms, p.OrderP99ms = orderP50[len(orderP50)/2]/1000, orderP99[len(orderP99)-1]/1000
	if p.Errors > 0 {
		p.Note = fmt.Sprintf("%d Multicasts failed (see the members' logs, --logs)", p.Errors)
	}
	p.MembersCPU /= (warmup + dur).Seconds()
	p.ClusterCPU = clusterCPU.Seconds() / (warmup + dur).Seconds()
	return p, nil
}

// crash kills one member per trial (round robin) and times the view
// without it at every survivor; the victim is then restarted.
func (b *mcastBench) crash(ctx context.Context, trials int, maxWait time.Duration) (mcastPoint, error) {
	n := len(b.members)
	p := mcastPoint{Mode: "crash", Trials: trials}
	if n < 2 {
		return p, fmt.Errorf("--crash-trials needs at least 2 members")
	}
	var took []time.Duration
	for t := range trials {
		vi := t % n
		victim := b.members[vi]
		t0 := time.Now()
		if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			return p, err
		}
		var last int64
		ok := true
		for _, m := range b.members {
			if m == victim {
				continue
			}
			err := b.awaitView(ctx, m, func(r mcastReport) bool {
				if r.Members == n-1 {
					last = max(last, r.TimeNs)
					return true
				}
				return false
			}, maxWait)
			if err != nil {
				if ctx.Err() != nil {
					return p, ctx.Err()
				}
				ok = false
				fmt.Fprintf(b.progress, "bench mcast: crash trial %d: %v\n", t+1, err)
				break
			}
		}
		<-victim.exited
		if ok {
			d := time.Duration(last - t0.UnixNano())
			took = append(took, d)
			fmt.Fprintf(b.progress, "bench mcast: crash trial %d/%d: member %d killed, new view at every survivor after %v\n", t+1, trials, vi, d.Round(time.Millisecond))
		} else {
			p.Note = "some trials saw no view without the killed member within --crash-timeout: is membership-driven removal in gcs working?"
			if len(took) == 0 && t >= 1 {
				break // removal does not work: do not spend trials×timeout
			}
		}
		m, err := b.spawn(ctx, vi, true)
		if err != nil {
			return p, err
		}
		b.members[vi] = m
		for _, m := range b.members {
			if err := b.awaitView(ctx, m, func(r mcastReport) bool { return r.Members == n }, 60*time.Second); err != nil {
				return p, fmt.Errorf("after restarting member %d: %w", vi, err)
			}
		}
	}
	p.Detected = len(took)
	if len(took) > 0 {
		slices.Sort(took)
		p.P50ms, p.P99ms, p.MaxMs = ms(pct(took, 0.50)), ms(pct(took, 0.99)), ms(took[len(took)-1])
	}
	return p, nil
}

// deleteBenchGroups deletes the benchmark's groups on a cluster it did not
// start, once their members left (a group whose last member left is
// emptied in the background: ErrNotEmpty is retried for a while). A group
// it cannot delete is named on stderr with the command that deletes it.
func deleteBenchGroups(cmd *cobra.Command, log zerolog.Logger, seeds []string, groups []string) {
	if len(groups) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	warn := func(group string, err error) {
		fmt.Fprintf(cmd.ErrOrStderr(), "tutti: bench group %s is left on the cluster (%v); delete it with: tutti group %s --delete\n", group, err, group)
	}
	cl, err := newClient(ctx, log, seeds)
	if err == nil {
		var n *gcs.Node
		if n, err = gcs.Open(ctx, gcs.Config{Client: cl, ID: defaultID("bench-cleanup"), Logger: log}); err == nil {
			defer n.Close()
			for _, group := range groups {
				for {
					err := n.Delete(ctx, group)
					if errors.Is(err, gcs.ErrNotEmpty) && ctx.Err() == nil {
						time.Sleep(200 * time.Millisecond) // waiting for the last leave's reclaim, bounded by ctx
						continue
					}
					if err != nil && !errors.Is(err, gcs.ErrNoGroup) {
						warn(group, err)
					}
					break
				}
			}
			return
		}
		cl.Close()
	}
	for _, group := range groups {
		warn(group, err)
	}
}

func (b *mcastBench) stopAll() {
	for _, m := range b.members {
		_ = m.enc.Encode(mcastCmd{Cmd: "quit"})
		_ = m.stdin.Close()
	}
	deadline := time.After(15 * time.Second)
	for _, m := range b.members {
		select {
		case <-m.exited:
		case <-deadline:
			_ = m.cmd.Process.Kill()
			<-m.exited
		}
	}
	b.members = nil
}

// newBenchMcastMember is the hidden member process of `tutti bench mcast`:
// commands on stdin, reports on stdout (JSON lines).
func newBenchMcastMember(g *globals) *cobra.Command {
	var (
		seed           string
		group          string
		index          int
		msgBytes       int
		payload        string
		withMembership bool
		gossipAddr     string
		cpuProfile     string
		cfg            gcs.Config
	)
	cmd := &cobra.Command{
		Use:    "mcast-member",
		Short:  "One member process of 'tutti bench mcast'",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			out := json.NewEncoder(cmd.OutOrStdout())
			var outMu sync.Mutex
			report := func(r mcastReport) {
				r.Index = index
				outMu.Lock()
				defer outMu.Unlock()
				_ = out.Encode(r)
			}
			fail := func(err error) error {
				report(mcastReport{Type: "error", Err: err.Error()})
				return &exitError{1, err}
			}
			stopProfile, err := startCPUProfile(cpuProfile)
			if err != nil {
				return err
			}
			defer stopProfile()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cl, err := newClient(ctx, log, splitSeeds(seed))
			if err != nil {
				return fail(err)
			}
			defer cl.Close()
			cfg.Client, cfg.ID, cfg.Logger = cl, fmt.Sprintf("mcast-%d", index), log
			if withMembership {
				var mf memberFlags
				mf.register(pflag.NewFlagSet("membership", pflag.ContinueOnError), "", "", "") // defaults
				mf.name, mf.gossipAddr = cfg.ID, gossipAddr
				mcfg, err := mf.config(log)
				if err != nil {
					return fail(err)
				}
				mcfg.Client = cl
				mn, err := memberStart(ctx, log, mcfg, nil, 2*time.Second)
				if err != nil {
					return fail(err)
				}
				defer mn.Close()
				cfg.Membership = mn
			}
			node, err := gcs.Open(ctx, cfg)
			if err != nil {
				return fail(err)
			}
			defer node.Close()
			jctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			grp, err := node.Join(jctx, group, gcs.JoinOptions{})
			cancel()
			if err != nil {
				return fail(err)
			}
			if payload != payloadRandom && payload != payloadZeros {
				return fail(fmt.Errorf("--payload must be %q or %q, not %q", payloadRandom, payloadZeros, payload))
			}
			mm := &memberRun{index: index, msgBytes: msgBytes, random: payload == payloadRandom, grp: grp, ended: make(chan struct{})}
			go mm.consume(report)
			report(mcastReport{Type: "ready", Name: grp.Name()})
			cmds := make(chan mcastCmd)
			go func() {
				defer close(cmds)
				dec := json.NewDecoder(os.Stdin)
				for {
					var c mcastCmd
					if dec.Decode(&c) != nil {
						return
					}
					cmds <- c
				}
			}()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-mm.ended:
					return fail(errors.New("the membership ended (evicted or closed)"))
				case c, ok := <-cmds:
					if !ok || c.Cmd == "quit" {
						lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						_ = grp.Leave(lctx)
						cancel()
						return nil
					}
					switch c.Cmd {
					case "run":
						report(mm.run(ctx, c))
					case "drain":
						report(mm.drain(ctx, c))
					}
				}
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&seed, "seed", DefaultSeed, "cluster address")
	f.StringVar(&group, "group", "bench-mcast", "group name")
	f.IntVar(&index, "index", 0, "this member's index")
	f.IntVar(&msgBytes, "msg-bytes", 1024, "bytes per message")
	f.StringVar(&payload, "payload", payloadRandom, `"random" or "zeros" after the header`)
	f.BoolVar(&withMembership, "membership", false, "run a membership agent (needed for removal after a crash)")
	f.StringVar(&gossipAddr, "gossip-addr", "127.0.0.1:0", "gossip address with --membership")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this member to this file")
	f.IntVar(&cfg.MaxBatch, "max-batch", 0, "gcs.Config.MaxBatch (0: default)")
	f.IntVar(&cfg.MaxBatchBytes, "max-batch-bytes", 0, "gcs.Config.MaxBatchBytes (0: default)")
	f.IntVar(&cfg.InlineBytes, "inline-bytes", 0, "gcs.Config.InlineBytes (0: default)")
	f.Uint64Var(&cfg.LogCapacity, "log-capacity", 0, "gcs.Config.LogCapacity (0: default)")
	f.Uint64Var(&cfg.QueueCapacity, "queue-capacity", 0, "gcs.Config.QueueCapacity (0: default)")
	return cmd
}

// memberRun is the state of one member process.
type memberRun struct {
	index    int
	msgBytes int
	random   bool // fill payloads from randomFill
	grp      *gcs.Group
	ended    chan struct{}

	mu struct {
		sync.Mutex
		point     uint32
		from, to  int64 // measured window (unix ns)
		stride    uint64
		delivered int64    // in the window
		bySender  []int64  // messages of the point delivered, per sender
		samples   []int64  // sender, seq, send, delivery
		notify    chan any // closed on every delivery while draining
	}
}

func (mm *memberRun) consume(report func(mcastReport)) {
	defer close(mm.ended)
	for ev := range mm.grp.Events() {
		switch e := ev.(type) {
		case *gcs.View:
			report(mcastReport{Type: "view", View: e.ID, Members: len(e.Members), TimeNs: time.Now().UnixNano()})
		case *gcs.Message:
			if len(e.Payload) < mcastHeader {
				continue
			}
			now := time.Now().UnixNano()
			pt := binary.LittleEndian.Uint32(e.Payload)
			sender := int(binary.LittleEndian.Uint32(e.Payload[4:]))
			seq := binary.LittleEndian.Uint64(e.Payload[8:])
			sendNs := int64(binary.LittleEndian.Uint64(e.Payload[16:]))
			mm.mu.Lock()
			if pt == mm.mu.point && sender < len(mm.mu.bySender) {
				mm.mu.bySender[sender]++
				if now >= mm.mu.from && now < mm.mu.to {
					mm.mu.delivered++
				}
				if seq%mm.mu.stride == 0 && sendNs >= mm.mu.from && sendNs < mm.mu.to {
					mm.mu.samples = append(mm.mu.samples, int64(sender), int64(seq), sendNs, now)
				}
				if mm.mu.notify != nil {
					close(mm.mu.notify)
					mm.mu.notify = nil
				}
			}
			mm.mu.Unlock()
		case *gcs.Evicted:
			return
		}
	}
}

// run sends for one point and reports what was sent.
func (mm *memberRun) run(ctx context.Context, c mcastCmd) mcastReport {
	start := time.Unix(0, c.StartNs)
	from := start.Add(time.Duration(c.WarmNs))
	end := from.Add(time.Duration(c.DurNs))
	mm.mu.Lock()
	mm.mu.point, mm.mu.from, mm.mu.to, mm.mu.stride = c.Point, from.UnixNano(), end.UnixNano(), max(1, c.Stride)
	mm.mu.delivered, mm.mu.samples = 0, nil
	mm.mu.bySender = make([]int64, 64)
	mm.mu.Unlock()
	cpu0 := cpuTime()
	stats0 := mm.grp.SendStats()
	var seq atomic.Uint64
	var sent, errs atomic.Int64
	hist := hdrhistogram.New(1, 600_000_000, 3)
	var hmu sync.Mutex
	message := func() ([]byte, time.Time) {
		s := seq.Add(1)
		p := make([]byte, mm.msgBytes)
		if mm.random {
			copy(p, randomFill(mm.index, s, len(p)))
		}
		binary.LittleEndian.PutUint32(p, c.Point)
		binary.LittleEndian.PutUint32(p[4:], uint32(mm.index))
		binary.LittleEndian.PutUint64(p[8:], s)
		t0 := time.Now()
		binary.LittleEndian.PutUint64(p[16:], uint64(t0.UnixNano()))
		return p, t0
	}
	ordered := func(t0 time.Time, err error) {
		if err != nil {
			errs.Add(1)
			return
		}
		sent.Add(1)
		if t0.After(from) {
			hmu.Lock()
			hist.RecordValue(max(1, time.Since(t0).Microseconds()))
			hmu.Unlock()
		}
	}
	send := func() {
		p, t0 := message()
		ordered(t0, mm.grp.Multicast(ctx, p))
	}
	time.Sleep(time.Until(start))
	if c.Senders > 0 && mm.index >= c.Senders {
		time.Sleep(time.Until(end))
		return mcastReport{Type: "sent", Point: c.Point}
	}
	window := max(1, c.Window)
	if c.Rate > 0 {
		// Members send on staggered schedules (member i offset by i/n of
		// the interval): paced senders in lockstep would collide on every
		// link, which no real workload does.
		start = start.Add(time.Duration(float64(mm.index) / float64(max(1, c.Members)) / c.Rate * float64(time.Second)))
	}
	var wg sync.WaitGroup
	if c.Async {
		// One goroutine keeps window messages in flight: a slot is taken
		// per message and given back by its done, on the Group's
		// goroutine, which must not block (the slot it frees was taken,
		// so the receive cannot).
		slots := make(chan struct{}, window)
		pace := c.Rate > 0
		issued := int64(0)
		for ctx.Err() == nil {
			now := time.Now()
			if !now.Before(end) {
				break
			}
			due := issued + int64(window)
			if pace {
				due = int64(now.Sub(start).Seconds()*c.Rate) + 1
			}
			for ; issued < due && time.Now().Before(end); issued++ {
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
				}
				if ctx.Err() != nil {
					break
				}
				p, t0 := message()
				wg.Add(1)
				mm.grp.MulticastAsync(p, func(err error) {
					ordered(t0, err)
					<-slots
					wg.Done()
				})
			}
			if pace {
				next := start.Add(time.Duration(float64(issued) / c.Rate * float64(time.Second)))
				time.Sleep(max(time.Until(next), 50*time.Microsecond))
			}
		}
	} else if c.Rate == 0 {
		for range window {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && ctx.Err() == nil {
					send()
				}
			}()
		}
	} else {
		sem := make(chan struct{}, window)
		issued := int64(0)
		for ctx.Err() == nil {
			now := time.Now()
			if !now.Before(end) {
				break
			}
			due := int64(now.Sub(start).Seconds()*c.Rate) + 1
			for ; issued < due; issued++ {
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					send()
				}()
			}
			next := start.Add(time.Duration(float64(issued) / c.Rate * float64(time.Second)))
			time.Sleep(max(time.Until(next), 50*time.Microsecond))
		}
	}
	wg.Wait()
	stats := mm.grp.SendStats()
	return mcastReport{Type: "sent", Point: c.Point, Sent: sent.Load(), Errors: errs.Load(),
		OrderP50: float64(hist.ValueAtQuantile(50)), OrderP99: float64(hist.ValueAtQuantile(99)),
		CPUs: (cpuTime() - cpu0).Seconds(), Links: stats.Links - stats0.Links, LostRaces: stats.LostRaces - stats0.LostRaces}
}

// drain waits until every sender's messages of the point were delivered
// (at most 60 s), then reports.
func (mm *memberRun) drain(ctx context.Context, c mcastCmd) mcastReport {
	deadline := time.Now().Add(60 * time.Second)
	var missing int64
	for {
		mm.mu.Lock()
		missing = 0
		for i, s := range c.Sent {
			missing += max(0, s-mm.mu.bySender[i])
		}
		if missing == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			mm.mu.Unlock()
			break
		}
		ch := make(chan any)
		mm.mu.notify = ch
		mm.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	mm.mu.Lock()
	defer mm.mu.Unlock()
	return mcastReport{Type: "result", Point: c.Point, Delivered: mm.mu.delivered, Missing: missing, Samples: mm.mu.samples}
}
