package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/internal/cluster"
)

func newUp(g *globals) *cobra.Command {
	var (
		memnodes int
		hosts    int
		port     int
		dataDir  string
		noSync   bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a complete local cluster in this process",
		Long: `Run a complete local cluster in one process: 3 hosts on loopback, each holding
a replica of every memnode (Raft groups of 3), with fsync on. Host 1 serves
clients on 127.0.0.1:7400 (the default --seed of every client command), hosts 2
and 3 on the next ports. Data goes to a temporary directory removed on exit, or
to --data-dir, which is kept and recovered on the next start.

Runs until interrupted (Ctrl-C).`,
		Example: `  tutti up
  tutti up --memnodes 8 --data-dir ./tutti-data
  # in another terminal:
  tutti mtx --write 0:0x10=hello --read 0:0x10:5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if dataDir != "" {
				if err := os.MkdirAll(dataDir, 0o755); err != nil {
					return err
				}
			}
			c, err := cluster.Start(cluster.Config{
				Hosts: hosts, Memnodes: memnodes, DataDir: dataDir, BasePort: port, NoSync: noSync, Logger: log,
			})
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
			out := cmd.OutOrStdout()
			var hs []string
			for i, s := range c.Seeds() {
				hs = append(hs, fmt.Sprintf("%d=%s", i+1, s))
			}
			fsync := "on"
			if noSync {
				fsync = "OFF (acknowledged writes can be lost)"
			}
			fmt.Fprintf(out, `tutti: local cluster up
  hosts:    %s
  memnodes: %d (ids 0-%d), %d replicas each, fsync %s
  data:     %s%s

Try, in another terminal:
  tutti mtx --write 0:0x10=hello
  tutti mtx --cmp 0:0x10=hello --write 0:0x10=world --read 0:0x10:5
  tutti bench mtx --seed %s --duration 5s

Press Ctrl-C to stop.
`, strings.Join(hs, " "), memnodes, memnodes-1, min(3, hosts), fsync, c.Dir, tempNote(dataDir), c.Seeds()[0])
			sig := waitSignal()
			log.Info().Str("signal", sig.String()).Msg("stopping local cluster")
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&memnodes, "memnodes", 3, "number of memnodes")
	f.IntVar(&hosts, "hosts", 3, "number of hosts (each holds up to 3 replicas of each memnode)")
	f.IntVar(&port, "port", 7400, "port of host 1; host i listens on port+i-1")
	f.StringVar(&dataDir, "data-dir", "", "keep data here and recover it on restart (default: a temporary directory)")
	f.BoolVar(&noSync, "no-fsync", false, "do not fsync the Raft log (faster; loses acknowledged writes on power loss)")
	return cmd
}

func tempNote(dataDir string) string {
	if dataDir == "" {
		return " (temporary, removed on exit)"
	}
	return ""
}
