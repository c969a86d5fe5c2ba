package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/cluster/agents"
)

func newUp(g *globals) *cobra.Command {
	var (
		memnodes   int
		hosts      int
		port       int
		dataDir    string
		noSync     bool
		gossip     int
		keys       memberFlags
		metrics    string
		cpuProfile string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a complete local cluster in this process",
		Long: `Run a complete local cluster in one process: 3 hosts on loopback, each holding
a replica of every memnode (Raft groups of 3), with fsync on. Host 1 serves
clients on 127.0.0.1:7400 (the default --seed of every client command), hosts 2
and 3 on the next ports (--port 0: free ports, printed). Data goes to a
temporary directory removed on exit, or to --data-dir, which is kept and
recovered on the next start with the --hosts and --memnodes it was made
with (others are refused; add memnodes online with 'tutti memnode add').

Each host also runs a membership agent (process id host-<i>), gossiping on
127.0.0.1:--gossip-port+i-1 (default --port + 1000, so 8400..8402), so right
after the banner 'tutti members' lists the hosts alive. --gossip-key encrypts
gossip as 'tutti server' does.

Runs until interrupted (Ctrl-C).`,
		Example: `  tutti up
  tutti up --memnodes 8 --data-dir ./tutti-data
  tutti up --port 0    # free ports (tests, several clusters on one machine)
  # in another terminal:
  tutti mtx --write 0:0x10=hello --read 0:0x10:5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			key, err := keys.gossipKey()
			if err != nil {
				return err
			}
			stopProfile, err := startCPUProfile(cpuProfile)
			if err != nil {
				return err
			}
			defer stopProfile()
			if dataDir != "" {
				if err := keepShape(cmd, dataDir, &hosts, &memnodes); err != nil {
					return err
				}
			}
			if memnodes < 1 {
				return &exitError{2, fmt.Errorf("--memnodes %d: must be at least 1", memnodes)}
			}
			if hosts < 1 {
				return &exitError{2, fmt.Errorf("--hosts %d: must be at least 1", hosts)}
			}
			if port < 0 || port+hosts-1 > 65535 {
				return &exitError{2, fmt.Errorf("--port %d: the %d hosts listen on ports %d..%d, which must lie in 1..65535 (or --port 0: free ports)", port, hosts, port, port+hosts-1)}
			}
			if !cmd.Flags().Changed("gossip-port") {
				gossip = 0
				if port != 0 {
					gossip = port + 1000
				}
			}
			if gossip < 0 || gossip+hosts-1 > 65535 {
				what := "--gossip-port"
				if !cmd.Flags().Changed("gossip-port") {
					what = "--gossip-port (default --port + 1000)"
				}
				return &exitError{2, fmt.Errorf("%s %d: the agents gossip on ports %d..%d, which must lie in 1..65535 (give --gossip-port; 0: free ports)", what, gossip, gossip, gossip+hosts-1)}
			}
			sctx, stop := notifyStop(cmd.Context())
			defer stop()
			mlis, err := metricsListen(metrics)
			if err != nil {
				return err
			}
			if mlis != nil {
				defer mlis.Close() // if the cluster does not start
			}
			if dataDir != "" {
				if err := os.MkdirAll(dataDir, 0o755); err != nil {
					return fmt.Errorf("--data-dir: %w", err)
				}
			}
			c, err := cluster.Start(cluster.Config{
				Hosts: hosts, Memnodes: memnodes, DataDir: dataDir, BasePort: port, NoSync: noSync, Logger: log,
			})
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(sctx, 30*time.Second)
			defer cancel()
			if err := c.WaitReady(ctx); err != nil {
				if sctx.Err() != nil {
					return errors.New("interrupted while starting")
				}
				return err
			}
			ag, err := agents.Start(ctx, c, agents.Config{BasePort: gossip, Key: key, Logger: log})
			if err != nil {
				if sctx.Err() != nil {
					return errors.New("interrupted while starting")
				}
				return err
			}
			defer ag.Close() // leave before the hosts stop
			cancel()
			if dataDir != "" {
				if err := writeShape(dataDir, hosts, memnodes); err != nil {
					return err
				}
			}
			metricsLine := ""
			if mlis != nil {
				ms := metricsServe(mlis, log, c.Seeds(), nil, c.Hosts...)
				defer ms.Close()
				metricsLine = "\n  metrics:  http://" + ms.Addr() + "/metrics\n  status:   http://" + ms.Addr() + "/status"
			}
			out := cmd.OutOrStdout()
			var hs []string
			for i, s := range c.Seeds() {
				hs = append(hs, fmt.Sprintf("%d=%s", i+1, s))
			}
			seedArg := ""
			if c.Seeds()[0] != DefaultSeed {
				seedArg = " --seed " + c.Seeds()[0]
			}
			fsync := "on"
			if noSync {
				fsync = "OFF (acknowledged writes can be lost)"
			}
			fmt.Fprintf(out, `tutti: local cluster up
  hosts:    %s
  memnodes: %d (ids 0-%d), %d replicas each, fsync %s
  data:     %s%s
  members:  host-1..host-%d alive, gossip on %s%s

Try, in another terminal:
  tutti members%s
  tutti members%s --watch
  tutti mtx%s --write 0:0x10=hello
  tutti mtx%s --cmp 0:0x10=hello --write 0:0x10=world --read 0:0x10:5
  tutti bench mtx --seed %s --duration 5s

Press Ctrl-C to stop.
`, strings.Join(hs, " "), memnodes, memnodes-1, min(3, hosts), fsync, c.Dir, tempNote(dataDir),
				hosts, strings.Join(ag.GossipAddrs(), " "), metricsLine, seedArg, seedArg, seedArg, seedArg, c.Seeds()[0])
			<-sctx.Done()
			log.Info().Msg("stopping local cluster")
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&memnodes, "memnodes", 3, "number of memnodes")
	f.IntVar(&hosts, "hosts", 3, "number of hosts (each holds up to 3 replicas of each memnode)")
	f.IntVar(&port, "port", 7400, "port of host 1; host i listens on port+i-1 (0: free ports)")
	f.IntVar(&gossip, "gossip-port", 8400, "gossip port of host 1's membership agent; host i's is gossip-port+i-1 (default --port + 1000; 0 or --port 0: free ports)")
	f.StringVar(&keys.key, "gossip-key", "", "encrypt gossip with this AES key, base64 of 16, 24 or 32 bytes")
	f.StringVar(&keys.keyFile, "gossip-key-file", "", "read the gossip key (base64) from this file")
	f.StringVar(&dataDir, "data-dir", "", "keep data here and recover it on restart (default: a temporary directory)")
	f.BoolVar(&noSync, "no-fsync", false, "do not fsync the Raft log (faster; loses acknowledged writes on power loss)")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a Go CPU profile of the cluster to this file until it stops")
	f.StringVar(&metrics, "metrics-addr", "", "serve Prometheus metrics of every host at http://<addr>/metrics and the cluster's status at /status (e.g. 127.0.0.1:9400; off if empty)")
	return cmd
}

func tempNote(dataDir string) string {
	if dataDir == "" {
		return " (temporary, removed on exit)"
	}
	return ""
}

// upShapeFile, in a --data-dir of 'tutti up', records the cluster it holds.
const upShapeFile = "tutti-up.json"

type upShape struct {
	Hosts    int `json:"hosts"`
	Memnodes int `json:"memnodes"`
}

// keepShape starts the cluster of an existing --data-dir as it was made:
// --hosts and --memnodes default to what dir holds and may not differ
// from it (the hosts would wait for memnodes the directory does not have,
// or place replicas on hosts the Raft groups do not have). Memnodes are
// added online with 'tutti memnode add'.
func keepShape(cmd *cobra.Command, dir string, hosts, memnodes *int) error {
	b, err := os.ReadFile(filepath.Join(dir, upShapeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil // a new cluster (or one made before the file existed)
	}
	if err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	var was upShape
	if err := json.Unmarshal(b, &was); err != nil || was.Hosts < 1 || was.Memnodes < 1 {
		return fmt.Errorf("--data-dir: %s is not what 'tutti up' wrote (%q)", filepath.Join(dir, upShapeFile), b)
	}
	for _, f := range []struct {
		name string
		p    *int
		was  int
	}{{"hosts", hosts, was.Hosts}, {"memnodes", memnodes, was.Memnodes}} {
		if cmd.Flags().Changed(f.name) && *f.p != f.was {
			return &exitError{2, fmt.Errorf("--%s %d: --data-dir %s holds a cluster of %s and %s, made by an earlier 'tutti up'; start it without --hosts and --memnodes (add memnodes online with 'tutti memnode add'), or give another --data-dir",
				f.name, *f.p, dir, plural(was.Hosts, "host"), plural(was.Memnodes, "memnode"))}
		}
		*f.p = f.was
	}
	return nil
}

// writeShape records the cluster dir holds once it is up.
func writeShape(dir string, hosts, memnodes int) error {
	b, _ := json.Marshal(upShape{Hosts: hosts, Memnodes: memnodes})
	if err := os.WriteFile(filepath.Join(dir, upShapeFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
