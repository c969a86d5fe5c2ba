package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/membership"
)

// membersPoint is one measured point of `tutti bench members`; field names
// are the JSON contract.
type membersPoint struct {
	Mode        string `json:"mode"` // "crash" or "soak"
	Processes   int    `json:"processes"`
	OSProcesses bool   `json:"os_processes"`
	CPUHogs     int    `json:"cpu_hogs"`
	// crash: trials run, deaths seen in the table, trials that timed out,
	// and the kill-to-dead-in-the-table percentiles.
	Trials   int     `json:"trials"`
	Detected int     `json:"detected"`
	Timeouts int     `json:"timeouts"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	MeanMs   float64 `json:"mean_ms"`
	// DurationS: wall time of the phase.
	DurationS float64 `json:"duration_s"`
	// FalseRemovals: rows of processes that were not killed that went
	// dead; Rejoins: incarnations taken by processes that were not
	// restarted by the benchmark (an evicted process rejoining).
	FalseRemovals int      `json:"false_removals"`
	Rejoins       int      `json:"rejoins"`
	FalseDetail   []string `json:"false_detail,omitempty"`
	AgentFlags    []string `json:"agent_flags,omitempty"`
	Embedded      bool     `json:"embedded_cluster"`
	GOMAXPROCS    int      `json:"gomaxprocs"`
	Time          string   `json:"time"`
}

func newBenchMembers(g *globals) *cobra.Command {
	var (
		seed       string
		procs      int
		trials     int
		soak       time.Duration
		cpuHogs    int
		settle     time.Duration
		trialMax   time.Duration
		asJSON     bool
		outFile    string
		quiet      bool
		agentFlags []string
		logDir     string
	)
	cmd := &cobra.Command{
		Use:   "members",
		Short: "Failure detection: crash-to-dead time and false removals under load",
		Long: `Measure the membership agent with separate OS processes: this command re-runs
its own binary as 'tutti agent' --processes times (each a membership agent with
no memnode, as an application embedding tutti; default timing unless
--agent-flag says otherwise), against a local cluster started in this process
as 'tutti up' does (3 hosts, 3 memnodes, fsync on), or the cluster at --seed.

Crash phase (--trials, default 20): each trial SIGKILLs one agent (round
robin), measures the time until the process table marks that incarnation
dead (the table is polled every 10 ms), restarts it on the same gossip port
(on a free one if another socket took it meanwhile) under a new incarnation
and lets it settle. Reports p50/p99/max.

Soak phase (--soak DURATION): the agents run with --cpu-hogs busy goroutines
each and nothing is killed; every row that goes dead is a false removal.

Both phases count false removals (a process not killed declared dead) and
rejoins (an evicted process coming back). One JSON object per phase with
--json.`,
		Example: `  tutti bench members
  tutti bench members --processes 7 --trials 20 --json
  tutti bench members --trials 0 --soak 10m --cpu-hogs 2 --json --out soak.json
  tutti bench members --agent-flag=--probe-interval=100ms --agent-flag=--probe-timeout=50ms`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if procs < 2 || procs > 64 {
				return fmt.Errorf("--processes must be 2..64")
			}
			if trials < 0 || trials > 1000 {
				return fmt.Errorf("--trials must be 0..1000")
			}
			if trials == 0 && soak <= 0 {
				return fmt.Errorf("nothing to do: --trials 0 and no --soak")
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
			embedded := seed == ""
			seeds := splitSeeds(seed)
			if embedded {
				c, err := startEmbedded(ctx, cluster.Config{Logger: log})
				if err != nil {
					return err
				}
				defer c.Close()
				seeds = c.Seeds()
			}
			logDir, cleanup, err := benchLogDir(logDir, "tutti-bench-members-")
			if err != nil {
				return err
			}
			defer cleanup()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			cl, err := client.New(cctx, client.Config{Seeds: seeds, Logger: log})
			cancel()
			if err != nil {
				return err
			}
			defer cl.Close()

			progress := io.Writer(cmd.ErrOrStderr())
			if quiet {
				progress = io.Discard
			}
			out := cmd.OutOrStdout()
			var file *os.File
			if outFile != "" {
				if file, err = os.OpenFile(outFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
					return err
				}
				defer file.Close()
			}
			b := &membersBench{
				exe: exe, seeds: seeds, logDir: logDir, cpuHogs: cpuHogs, extra: agentFlags,
				progress: progress, cl: cl, killed: map[string]bool{}, restarted: map[string]bool{},
			}
			defer b.stopAll()
			emit := func(p membersPoint) {
				p.Processes, p.OSProcesses, p.CPUHogs, p.AgentFlags, p.Embedded = procs, true, cpuHogs, agentFlags, embedded
				p.GOMAXPROCS, p.Time = runtime.GOMAXPROCS(0), time.Now().UTC().Format(time.RFC3339)
				if asJSON {
					j, _ := json.Marshal(p)
					fmt.Fprintln(out, string(j))
				} else {
					fmt.Fprintf(out, "%s: %d processes, cpu-hogs %d: ", p.Mode, p.Processes, p.CPUHogs)
					if p.Mode == "crash" {
						fmt.Fprintf(out, "%d trials, %d detected, %d timeouts, p50 %.0f ms, p99 %.0f ms, max %.0f ms, ",
							p.Trials, p.Detected, p.Timeouts, p.P50ms, p.P99ms, p.MaxMs)
					}
					fmt.Fprintf(out, "%.0f s, false removals %d, rejoins %d\n", p.DurationS, p.FalseRemovals, p.Rejoins)
				}
				if file != nil {
					j, _ := json.Marshal(p)
					fmt.Fprintln(file, string(j))
				}
			}

			if err := b.init(ctx); err != nil {
				return err
			}
			for i := range procs {
				if err := b.spawn(ctx, fmt.Sprintf("bench-%d", i+1), ""); err != nil {
					return err
				}
			}
			fmt.Fprintf(progress, "bench members: %d agent processes up (logs in %s)\n", procs, logDir)
			if trials > 0 {
				p, err := b.crash(ctx, trials, settle, trialMax)
				if err != nil {
					return err
				}
				emit(p)
			}
			if soak > 0 {
				p, err := b.soak(ctx, soak)
				if err != nil {
					return err
				}
				emit(p)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&seed, "seed", "", "drive the cluster at this address instead of starting one in this process")
	f.IntVar(&procs, "processes", 7, "agent OS processes")
	f.IntVar(&trials, "trials", 20, "crash trials (0: none)")
	f.DurationVar(&soak, "soak", 0, "run the false-removal soak for this long (e.g. 10m)")
	f.IntVar(&cpuHogs, "cpu-hogs", 0, "busy goroutines inside each agent process")
	f.DurationVar(&settle, "settle", time.Second, "after a restart, wait this long before the next kill")
	f.DurationVar(&trialMax, "trial-timeout", 20*time.Second, "a crash not in the table after this long counts as a timeout")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per phase")
	f.StringVar(&outFile, "out", "", "also append the JSON objects to this file")
	f.BoolVar(&quiet, "quiet", false, "no progress on stderr")
	f.StringArrayVar(&agentFlags, "agent-flag", nil, "extra flag for every agent, e.g. --agent-flag=--probe-interval=100ms (repeatable)")
	f.StringVar(&logDir, "logs", "", "keep the agents' logs in this directory (default: a temporary one, removed)")
	return cmd
}

type benchAgent struct {
	id     string
	addr   string
	inc    uint64
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
}

type membersBench struct {
	exe      string
	seeds    []string
	logDir   string
	cpuHogs  int
	extra    []string
	progress io.Writer
	cl       *client.Client
	w        *membership.Watcher
	agents   []*benchAgent

	// killed: "id#inc" the benchmark killed (their Died is expected);
	// restarted: "id#inc" the benchmark started (their Joined/Rejoined is
	// expected).
	killed, restarted map[string]bool
	falseRemovals     int
	rejoins           int
	falseDetail       []string
}

func rowKey(id string, inc uint64) string { return id + "#" + strconv.FormatUint(inc, 10) }

func (b *membersBench) init(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := membership.NewWatcher(wctx, b.cl, membership.DefaultTable)
	b.w = w
	return err
}

// poll applies the table's changes since the last poll and classifies them.
func (b *membersBench) poll(ctx context.Context) error {
	cs, err := b.w.Poll(ctx)
	for _, ch := range cs {
		r := ch.Row
		switch ch.Kind {
		case membership.Died:
			if !b.killed[rowKey(r.ID, r.Incarnation)] && b.ours(r.ID) {
				b.falseRemovals++
				d := fmt.Sprintf("%s %s#%d dead (v%d)", time.Now().UTC().Format(time.RFC3339), r.ID, r.Incarnation, ch.Version)
				b.falseDetail = append(b.falseDetail, d)
				fmt.Fprintln(b.progress, "bench members: FALSE REMOVAL:", d)
			}
		case membership.Joined, membership.Rejoined:
			if b.ours(r.ID) && !b.restarted[rowKey(r.ID, r.Incarnation)] {
				b.rejoins++
				fmt.Fprintf(b.progress, "bench members: %s rejoined as #%d without a restart (it was evicted)\n", r.ID, r.Incarnation)
			}
		}
	}
	return err
}

func (b *membersBench) ours(id string) bool {
	for _, a := range b.agents {
		if a.id == id {
			return true
		}
	}
	return false
}

// pollUntil polls every 10 ms until cond holds (true) or d passes (false).
func (b *membersBench) pollUntil(ctx context.Context, d time.Duration, cond func(membership.Table) bool) (bool, error) {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := b.poll(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(b.progress, "bench members: reading the table: %v (retrying)\n", err)
		}
		if cond != nil && cond(b.w.Table()) {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-tick.C:
		}
	}
}

// spawn starts agent id and waits for its ready line. addr is the gossip
// address it binds: a restarted agent's is its predecessor's, as for a
// restarted process; with "" the agent binds a port the kernel picks and
// reports it on its ready line (a port found free here and bound there
// later could be taken in between). The predecessor's port can be taken
// too, after its death: then the agent, whose bind fails, is started again
// on a port the kernel picks.
func (b *membersBench) spawn(ctx context.Context, id, addr string) error {
	err := b.start(ctx, id, addr)
	if err != nil && addr != "" && ctx.Err() == nil && portTaken(addr) {
		fmt.Fprintf(b.progress, "bench members: %s's gossip address %s is held by another socket; restarting it on a free port\n", id, addr)
		return b.start(ctx, id, "")
	}
	return err
}

// start is one attempt of spawn.
func (b *membersBench) start(ctx context.Context, id, addr string) error {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	args := []string{"agent", "--seed", strings.Join(b.seeds, ","), "--name", id, "--gossip-addr", addr,
		"--cpu-hogs", strconv.Itoa(b.cpuHogs), "--ready-json", "--exit-on-stdin-eof", "--log-format", "json", "--log-level", "info"}
	args = append(args, b.extra...)
	logf, err := os.OpenFile(filepath.Join(b.logDir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	c := exec.Command(b.exe, args...)
	c.Stderr = logf
	stdin, err := c.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return err
	}
	if err := c.Start(); err != nil {
		return err
	}
	a := &benchAgent{id: id, cmd: c, stdin: stdin, exited: make(chan struct{})}
	ready := make(chan agentReady, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			var r agentReady
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				ready <- r
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = c.Wait()
		close(a.exited)
	}()
	select {
	case r := <-ready:
		a.inc, a.addr = r.Incarnation, r.Gossip
	case <-a.exited:
		return fmt.Errorf("agent %s exited before registering (see %s)", id, filepath.Join(b.logDir, id+".log"))
	case <-time.After(30 * time.Second):
		_ = c.Process.Kill()
		return fmt.Errorf("agent %s not registered after 30 s (see %s)", id, filepath.Join(b.logDir, id+".log"))
	case <-ctx.Done():
		_ = c.Process.Kill()
		return ctx.Err()
	}
	b.restarted[rowKey(id, a.inc)] = true
	for i, o := range b.agents {
		if o.id == id {
			b.agents[i] = a
			return nil
		}
	}
	b.agents = append(b.agents, a)
	return nil
}

func (b *membersBench) crash(ctx context.Context, trials int, settle, trialMax time.Duration) (membersPoint, error) {
	start := time.Now()
	f0, r0 := b.falseRemovals, b.rejoins
	var took []time.Duration
	timeouts := 0
	// Let the gossip cluster settle after the initial joins.
	if _, err := b.pollUntil(ctx, settle, nil); err != nil {
		return membersPoint{}, err
	}
	for t := range trials {
		a := b.agents[t%len(b.agents)]
		b.killed[rowKey(a.id, a.inc)] = true
		t0 := time.Now()
		if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			return membersPoint{}, fmt.Errorf("killing %s: %w", a.id, err)
		}
		dead, err := b.pollUntil(ctx, trialMax, func(tb membership.Table) bool {
			r, ok := tb.Lookup(a.id)
			return ok && r.Incarnation == a.inc && r.State == membership.StateDead
		})
		d := time.Since(t0)
		if err != nil {
			return membersPoint{}, err
		}
		if dead {
			took = append(took, d)
			fmt.Fprintf(b.progress, "bench members: trial %d/%d: %s#%d dead in the table after %v\n", t+1, trials, a.id, a.inc, d.Round(time.Millisecond))
		} else {
			timeouts++
			fmt.Fprintf(b.progress, "bench members: trial %d/%d: %s#%d NOT dead after %v\n", t+1, trials, a.id, a.inc, trialMax)
		}
		select {
		case <-a.exited:
		case <-time.After(5 * time.Second):
			return membersPoint{}, fmt.Errorf("%s did not exit after SIGKILL", a.id)
		}
		if err := b.spawn(ctx, a.id, a.addr); err != nil {
			return membersPoint{}, err
		}
		if _, err := b.pollUntil(ctx, settle, nil); err != nil {
			return membersPoint{}, err
		}
	}
	p := membersPoint{Mode: "crash", Trials: trials, Detected: len(took), Timeouts: timeouts,
		DurationS: time.Since(start).Seconds(), FalseRemovals: b.falseRemovals - f0, Rejoins: b.rejoins - r0,
		FalseDetail: b.falseDetail[f0:]}
	if len(took) > 0 {
		slices.Sort(took)
		var sum time.Duration
		for _, d := range took {
			sum += d
		}
		p.P50ms, p.P99ms, p.MaxMs = ms(pct(took, 0.50)), ms(pct(took, 0.99)), ms(took[len(took)-1])
		p.MeanMs = ms(sum / time.Duration(len(took)))
	}
	return p, nil
}

func (b *membersBench) soak(ctx context.Context, d time.Duration) (membersPoint, error) {
	start := time.Now()
	f0, r0 := b.falseRemovals, b.rejoins
	next := start.Add(time.Minute)
	for time.Since(start) < d {
		step := min(time.Until(next), d-time.Since(start))
		if _, err := b.pollUntil(ctx, step, nil); err != nil {
			return membersPoint{}, err
		}
		if !time.Now().Before(next) {
			fmt.Fprintf(b.progress, "bench members: soak %v/%v: false removals %d, rejoins %d\n",
				time.Since(start).Round(time.Second), d, b.falseRemovals-f0, b.rejoins-r0)
			next = next.Add(time.Minute)
		}
		for _, a := range b.agents {
			select {
			case <-a.exited:
				return membersPoint{}, fmt.Errorf("agent %s exited during the soak (see %s)", a.id, filepath.Join(b.logDir, a.id+".log"))
			default:
			}
		}
	}
	return membersPoint{Mode: "soak", DurationS: time.Since(start).Seconds(),
		FalseRemovals: b.falseRemovals - f0, Rejoins: b.rejoins - r0, FalseDetail: b.falseDetail[f0:]}, nil
}

// stopAll asks every agent to leave (stdin EOF and SIGTERM), then kills
// those still running after 10 s.
func (b *membersBench) stopAll() {
	for _, a := range b.agents {
		_ = a.stdin.Close()
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(10 * time.Second)
	for _, a := range b.agents {
		select {
		case <-a.exited:
		case <-deadline:
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	}
}

// portTaken reports whether another socket holds addr's port for TCP or
// UDP (binding it fails with EADDRINUSE).
func portTaken(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		l.Close()
	} else if errors.Is(err, syscall.EADDRINUSE) {
		return true
	}
	u, err := net.ListenPacket("udp", addr)
	if err == nil {
		u.Close()
		return false
	}
	return errors.Is(err, syscall.EADDRINUSE)
}

// pct is the nearest-rank percentile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }
