package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
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
	GOMAXPROCS int     `json:"gomaxprocs"`
	Time       string  `json:"time"`
}

func newBench(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure throughput and latency",
	}
	cmd.AddCommand(newBenchMtx(g))
	return cmd
}

func newBenchMtx(g *globals) *cobra.Command {
	var (
		seed        string
		workload    string
		outstanding string
		duration    time.Duration
		warmup      time.Duration
		asJSON      bool
		outFile     string
		words       int
		memnodes    int
		noSync      bool
		quiet       bool
	)
	cmd := &cobra.Command{
		Use:   "mtx",
		Short: "Minitransaction throughput and latency (Sinfonia's workloads)",
		Long: `Measure minitransactions per second and latency percentiles at each level of
outstanding requests.

Workloads:
  base   six 4-byte word-aligned write items chosen at random among --words
         words, on memnode 0 (Sinfonia's base workload; one-phase commit)

Without --seed the benchmark starts its own local cluster in this process, as
'tutti up' does (3 hosts, 3 replicas per memnode, fsync on), so the figures
include the servers' CPU. With --seed it drives an existing cluster.`,
		Example: `  tutti bench mtx
  tutti bench mtx --outstanding 1,16,64,256 --duration 10s --json --out bench-mtx.json
  tutti bench mtx --seed 127.0.0.1:7400 --outstanding 64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			levels, err := parseLevels(outstanding)
			if err != nil {
				return err
			}
			if workload != "base" {
				return fmt.Errorf("--workload %q: unknown (known: base)", workload)
			}
			if words < 6 {
				return fmt.Errorf("--words must be at least 6")
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			seeds := splitSeeds(seed)
			embedded := !cmd.Flags().Changed("seed") && os.Getenv("TUTTI_SEED") == ""
			replicas := 0
			if embedded {
				c, err := cluster.Start(cluster.Config{Memnodes: memnodes, NoSync: noSync, Logger: log.Level(max(log.GetLevel(), zerolog.WarnLevel))})
				if err != nil {
					return err
				}
				defer c.Close()
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				err = c.WaitReady(ctx)
				cancel()
				if err != nil {
					return err
				}
				seeds = c.Seeds()
				replicas = len(c.Memnodes()[0].Replicas)
			}
			ctx := cmd.Context()
			cl, err := client.New(ctx, client.Config{Seeds: seeds, Logger: log})
			if err != nil {
				return err
			}
			defer cl.Close()
			if !embedded {
				for _, m := range cl.Cluster().GetMemnodes() {
					if m.GetId() == 0 {
						replicas = len(m.GetReplicas())
					}
				}
			}
			var sinks []io.Writer
			if asJSON {
				sinks = append(sinks, cmd.OutOrStdout())
			}
			if outFile != "" {
				f, err := os.Create(outFile)
				if err != nil {
					return err
				}
				defer f.Close()
				sinks = append(sinks, f)
			}
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "%-9s %11s %10s %12s %9s %9s %9s %7s\n",
					"workload", "outstanding", "ops", "ops/s", "p50 ms", "p99 ms", "cpu µs/op", "errors")
			}
			for _, n := range levels {
				p, err := runMtxPoint(ctx, cl, n, warmup, duration, words, quiet, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				p.Workload, p.Fsync, p.Embedded, p.Replicas = workload, !noSync, embedded, replicas
				p.Memnodes = len(cl.Cluster().GetMemnodes())
				b, _ := json.Marshal(p)
				for _, w := range sinks {
					fmt.Fprintln(w, string(b))
				}
				if !asJSON {
					fmt.Fprintf(cmd.OutOrStdout(), "%-9s %11d %10d %12.0f %9.3f %9.3f %9.1f %7d\n",
						p.Workload, p.Outstanding, p.Ops, p.OpsPerSec, p.P50ms, p.P99ms, p.CPUusPerOp, p.Errors)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	seedFlag(f, &seed)
	f.StringVar(&workload, "workload", "base", "workload: base")
	f.StringVar(&outstanding, "outstanding", "1,16,64,256", "comma-separated levels of outstanding minitransactions")
	f.DurationVar(&duration, "duration", 10*time.Second, "measured time per level")
	f.DurationVar(&warmup, "warmup", time.Second, "unmeasured time before each level")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per measured point instead of a table")
	f.StringVar(&outFile, "out", "", "also write the JSON lines to this file")
	f.IntVar(&words, "words", 50000, "number of 4-byte words the items are drawn from")
	f.IntVar(&memnodes, "memnodes", 3, "memnodes of the embedded cluster")
	f.BoolVar(&noSync, "no-fsync", false, "embedded cluster without fsync (not Sinfonia's durable setting)")
	f.BoolVar(&quiet, "quiet", false, "no progress lines on stderr")
	return cmd
}

func parseLevels(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > 100000 {
			return nil, fmt.Errorf("--outstanding: %q is not a number between 1 and 100000", p)
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

// runMtxPoint runs n workers issuing the base workload back to back.
func runMtxPoint(ctx context.Context, cl *client.Client, n int, warmup, dur time.Duration, words int, quiet bool, progress io.Writer) (benchPoint, error) {
	start := time.Now().Add(warmup)
	end := start.Add(dur)
	var ops, errs, notCommitted atomic.Int64
	var firstErr atomic.Value
	hists := make([]*hdrhistogram.Histogram, n)
	var wg sync.WaitGroup
	var cpuStart time.Duration
	var cpuOnce sync.Once
	for w := 0; w < n; w++ {
		hists[w] = hdrhistogram.New(1, 60_000_000, 3) // µs
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			val := make([]byte, 4)
			for {
				now := time.Now()
				if now.After(end) || ctx.Err() != nil {
					return
				}
				tx := client.NewTx()
				var picked [6]uint64
				for i := 0; i < 6; i++ {
				again:
					wd := uint64(rng.IntN(words))
					for _, p := range picked[:i] {
						if p == wd {
							goto again
						}
					}
					picked[i] = wd
					binary.LittleEndian.PutUint32(val, rng.Uint32())
					tx.Write(0, wd*4, append([]byte(nil), val...))
				}
				t0 := time.Now()
				res, err := cl.Exec(ctx, tx)
				lat := time.Since(t0)
				if t0.Before(start) {
					continue
				}
				if t0.After(end) {
					return
				}
				cpuOnce.Do(func() { cpuStart = cpuTime() })
				switch {
				case err != nil:
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
				case !res.Committed:
					notCommitted.Add(1)
				default:
					ops.Add(1)
					hists[w].RecordValue(max(1, lat.Microseconds()))
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
	if ctx.Err() != nil {
		return benchPoint{}, ctx.Err()
	}
	h := hdrhistogram.New(1, 60_000_000, 3)
	for _, x := range hists {
		h.Merge(x)
	}
	p := benchPoint{
		Outstanding: n, DurationS: dur.Seconds(), Ops: ops.Load(), Errors: errs.Load(), NotCommitted: notCommitted.Load(),
		OpsPerSec: float64(ops.Load()) / dur.Seconds(),
		P50ms:     float64(h.ValueAtQuantile(50)) / 1000, P99ms: float64(h.ValueAtQuantile(99)) / 1000,
		P999ms: float64(h.ValueAtQuantile(99.9)) / 1000, MaxMs: float64(h.Max()) / 1000,
		GOMAXPROCS: runtime.GOMAXPROCS(0), Time: time.Now().UTC().Format(time.RFC3339),
	}
	if p.Ops > 0 {
		p.CPUusPerOp = float64(cpu.Microseconds()) / float64(p.Ops)
	}
	if p.Ops == 0 && p.Errors > 0 {
		return p, fmt.Errorf("every minitransaction failed: %v", firstErr.Load())
	}
	if e, ok := firstErr.Load().(error); ok && !quiet {
		fmt.Fprintf(progress, "  %d errors, first: %v\n", p.Errors, errors.Unwrap(e))
	}
	return p, nil
}
