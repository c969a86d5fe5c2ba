package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/membership"
)

// memberJSON is one row of `tutti members --json`; field names are the
// JSON contract.
type memberJSON struct {
	ID          string `json:"id"`
	Incarnation uint64 `json:"incarnation"`
	State       string `json:"state"`
	// Addr is the process's gRPC address if it serves one, else its
	// gossip address.
	Addr    string `json:"addr"`
	GRPC    string `json:"grpc,omitempty"`
	Gossip  string `json:"gossip,omitempty"`
	Since   string `json:"since"`
	By      uint64 `json:"by"`
	Slot    int    `json:"slot"`
	Version uint64 `json:"table_version"`
}

func memberOf(r membership.Row, version uint64) memberJSON {
	addr := r.GRPCAddr
	if addr == "" {
		addr = r.GossipAddr
	}
	return memberJSON{Slot: r.Slot, ID: r.ID, Incarnation: r.Incarnation, State: r.State.String(), Addr: addr,
		Since: r.Since.UTC().Format(time.RFC3339Nano), By: r.By, GRPC: r.GRPCAddr, Gossip: r.GossipAddr, Version: version}
}

func newMembers(g *globals) *cobra.Command {
	var (
		tf       tlsFlags
		seed     string
		asJSON   bool
		watch    bool
		all      bool
		interval time.Duration
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "members",
		Short: "Show the process table (who is alive, dead or left)",
		Long: `Show the authoritative process table kept in the memnodes: every process
(server, agent, or application embedding tutti) with its incarnation, state
and addresses. Gossip only suspects; this table is what the cluster decided.

States: alive, dead (declared dead by a surviving process), left (left
gracefully). A process that restarts or comes back after a false suspicion
gets a new, larger incarnation in the same row.

By default only live processes are listed; --all lists every row. --json
prints a JSON array with one object per process: id, incarnation, state,
addr (gRPC address, or gossip address for processes without one), grpc,
gossip, since, by, slot, table_version. --watch prints the table, then every
confirmed change as it happens (one line, or one JSON object per line with
--json: version, kind, member), until interrupted.`,
		Example: `  tutti members
  tutti members --all --json
  tutti members --watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval <= 0 {
				return &exitError{2, fmt.Errorf("--interval %v: must be positive (e.g. 250ms)", interval)}
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			dial, err := tf.loadDial()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c, err := client.New(ctx, client.Config{Seeds: splitSeeds(seed), Logger: log, DialOptions: dial})
			if err != nil {
				return &exitError{2, explainConnErr(err, dial != nil)}
			}
			defer c.Close()
			w, err := membership.NewWatcher(ctx, c, membership.DefaultTable)
			if err != nil {
				return &exitError{2, err}
			}
			out := cmd.OutOrStdout()
			printMembers(out, w.Table(), asJSON, all)
			if !watch {
				return nil
			}
			wctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				select {
				case <-wctx.Done():
					return nil
				case <-tick.C:
				}
				cs, err := w.Poll(wctx)
				for _, ch := range cs {
					printChange(out, ch, asJSON)
				}
				if err != nil && wctx.Err() == nil {
					fmt.Fprintln(cmd.ErrOrStderr(), errorLine(fmt.Errorf("reading the process table: %w", err))+" (retrying)")
				}
			}
		},
	}
	f := cmd.Flags()
	seedFlag(f, &seed)
	tf.register(f)
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.BoolVar(&watch, "watch", false, "keep printing confirmed changes until interrupted")
	f.BoolVar(&all, "all", false, "list dead and left rows too")
	f.DurationVar(&interval, "interval", 250*time.Millisecond, "with --watch: how often to read the table's version")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "give up connecting and reading after this long")
	return cmd
}

func printMembers(out io.Writer, t membership.Table, asJSON, all bool) {
	var rows []membership.Row
	for _, r := range t.Rows {
		if all || r.State.Live() {
			rows = append(rows, r)
		}
	}
	if asJSON {
		ms := []memberJSON{}
		for _, r := range rows {
			ms = append(ms, memberOf(r, t.Version))
		}
		b, _ := json.Marshal(ms)
		fmt.Fprintln(out, string(b))
		return
	}
	fmt.Fprintf(out, "process table version %d\n", t.Version)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tINCARNATION\tSTATE\tSINCE\tGRPC\tGOSSIP")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", r.ID, r.Incarnation, r.State,
			r.Since.Local().Format(time.DateTime), dash(r.GRPCAddr), dash(r.GossipAddr))
	}
	tw.Flush()
}

func printChange(out io.Writer, ch membership.Change, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(struct {
			Version uint64     `json:"version"`
			Kind    string     `json:"kind"`
			Resync  bool       `json:"resync,omitempty"`
			Member  memberJSON `json:"member"`
		}{ch.Version, ch.Kind.String(), ch.Resync, memberOf(ch.Row, ch.Version)})
		fmt.Fprintln(out, string(b))
		return
	}
	note := ""
	if ch.Resync {
		note = " (resync: intermediate versions missed)"
	}
	fmt.Fprintf(out, "v%d %s %s#%d%s\n", ch.Version, ch.Kind, ch.Row.ID, ch.Row.Incarnation, note)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
