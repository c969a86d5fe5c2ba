package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/membership"
)

// agentReady is the line `tutti agent --ready-json` prints once registered.
type agentReady struct {
	ID          string `json:"id"`
	Incarnation uint64 `json:"incarnation"`
	Gossip      string `json:"gossip"`
	PID         int    `json:"pid"`
}

// newAgent is the hidden `tutti agent`: one membership agent (a process
// with no memnode) against the cluster at --seed, as an application that
// embeds the library runs. `tutti bench members` starts these as separate
// OS processes.
func newAgent(g *globals) *cobra.Command {
	var (
		tf        tlsFlags
		mf        memberFlags
		seed      string
		cpuHogs   int
		readyJSON bool
		stdinEOF  bool
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:    "agent",
		Short:  "Run one membership agent (a process without memnodes) until interrupted",
		Hidden: true,
		Long: `Run one membership agent against the cluster at --seed: the process joins
gossip (through --gossip-seeds and every live process in the process table),
registers in the table under a new incarnation, helps declare crashed
processes dead, and on SIGINT/SIGTERM leaves gracefully (its row becomes
left). 'tutti bench members' runs these as separate OS processes.

Exits 1 if no gossip seed accepts it (for example a wrong --gossip-key; the
log says which) or its membership ends (superseded), 2 on any other error
(the cluster unreachable, bad flags).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if mf.name == "" {
				h, _ := os.Hostname()
				mf.name = fmt.Sprintf("agent-%s-%d", h, os.Getpid())
			}
			if mf.gossipAddr == "" {
				mf.gossipAddr = "127.0.0.1:0"
			}
			cfg, err := mf.config(log)
			if err != nil {
				return &exitError{2, err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if stdinEOF {
				// The parent (a benchmark) closes our stdin, or dies: stop.
				go func() {
					_, _ = io.Copy(io.Discard, os.Stdin)
					stop()
				}()
			}
			var hogsStop atomic.Bool
			defer hogsStop.Store(true)
			for range cpuHogs {
				go burn(&hogsStop)
			}
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			dial, err := tf.loadDial()
			if err != nil {
				return &exitError{2, err}
			}
			cl, err := newClient(sctx, log, splitSeeds(seed), dial...)
			if err != nil {
				return &exitError{2, explainConnErr(err, dial != nil)}
			}
			defer cl.Close()
			cfg.Client = cl
			t, err := membership.ReadTable(sctx, cl, membership.DefaultTable)
			if err != nil {
				return &exitError{2, fmt.Errorf("reading the process table: %w", err)}
			}
			cfg.Seeds = tableSeeds(splitSeeds(mf.seeds), t, cfg.ID, cfg.Bind, cfg.Advertise)
			n, err := membership.Start(sctx, cfg)
			if errors.Is(err, membership.ErrJoin) {
				return &exitError{1, err} // the seeds refused us (e.g. another gossip key)
			}
			if err != nil {
				return &exitError{2, err}
			}
			changes, unsub := n.Subscribe()
			defer unsub()
			if readyJSON {
				b, _ := json.Marshal(agentReady{ID: n.ID(), Incarnation: n.Incarnation(), Gossip: n.GossipAddr(), PID: os.Getpid()})
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "tutti agent %s: incarnation %d, gossip %s\n", n.ID(), n.Incarnation(), n.GossipAddr())
			}
			for {
				select {
				case <-ctx.Done():
					lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
					err := n.Leave(lctx)
					lcancel()
					if err != nil {
						log.Warn().Err(err).Msg("leaving")
					}
					return nil
				case ch, ok := <-changes:
					if !ok {
						return &exitError{1, fmt.Errorf("membership agent stopped")}
					}
					if ch.Kind == membership.Superseded {
						n.Close()
						return &exitError{1, membership.ErrSuperseded}
					}
				}
			}
		},
	}
	f := cmd.Flags()
	seedFlag(f, &seed)
	tf.register(f)
	mf.register(f, "process id (default agent-<hostname>-<pid>)",
		"gossip bind address, host:port (default 127.0.0.1:0: a free port on loopback)",
		"gossip addresses to join, comma-separated (the live processes in the table are always tried too)")
	f.IntVar(&cpuHogs, "cpu-hogs", 0, "busy goroutines to run in this process (CPU load for benchmarks)")
	f.BoolVar(&readyJSON, "ready-json", false, "print one JSON line (id, incarnation, gossip, pid) once registered")
	f.BoolVar(&stdinEOF, "exit-on-stdin-eof", false, "leave and exit when stdin closes (for a parent process)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up connecting and registering after this long")
	return cmd
}

// burn keeps one goroutine busy until stop is set.
func burn(stop *atomic.Bool) {
	x := uint64(1)
	for i := 0; !stop.Load(); i++ {
		x = x*6364136223846793005 + 1442695040888963407
		if i%(1<<20) == 0 {
			runtime.Gosched()
		}
	}
	_ = x
}
