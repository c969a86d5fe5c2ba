package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

func newServer(g *globals) *cobra.Command {
	var (
		id         uint64
		listen     string
		peers      string
		memnodes   int
		replicas   int
		dataDir    string
		config     string
		noSync     bool
		memSize    uint64
		snapshotAt uint64
		join       bool
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run one host of a tutti cluster",
		Long: `Run one host of a multi-host cluster. Every host is started with the same
--peers list and --memnodes/--replicas, from which each computes the same
placement of memnode replicas on hosts; clients and other hosts reach a host at
its address in --peers. That placement is written to the directory in memnode 0
at the first start; afterwards the directory decides, and changes online with
'tutti memnode add' and 'tutti replica add|remove|move'. A host added later
starts with --join and registers its address in the directory.

Every flag can also come from the environment (TUTTI_ plus the flag name in
upper case with - as _, e.g. TUTTI_DATA_DIR) or from a JSON config file given
with --config whose keys are the flag names ({"id": 1, "data-dir": "/var/lib/tutti"}).
Precedence: command line, then environment, then config file, then default.`,
		Example: `  # three hosts, each on its own machine:
  tutti server --id 1 --listen :7400 --data-dir /var/lib/tutti \
      --peers 1=10.0.0.1:7400,2=10.0.0.2:7400,3=10.0.0.3:7400
  # a fourth host joining the running cluster empty, then taking a replica:
  tutti server --id 4 --listen :7400 --data-dir /var/lib/tutti --join \
      --peers 1=10.0.0.1:7400,2=10.0.0.2:7400,3=10.0.0.3:7400,4=10.0.0.4:7400
  tutti replica move 1 1 4 --seed 10.0.0.1:7400 --wait
  # the same from the environment:
  TUTTI_ID=2 TUTTI_PEERS=1=a:7400,2=b:7400,3=c:7400 TUTTI_DATA_DIR=/data tutti server`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndConfig(cmd.Flags(), config); err != nil {
				return err
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			hosts, err := parsePeers(peers)
			if err != nil {
				return err
			}
			ids := make([]uint64, 0, len(hosts))
			for h := range hosts {
				ids = append(ids, h)
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			var specs []service.MemnodeSpec
			if !join {
				if specs, err = service.Place(ids, memnodes, replicas); err != nil {
					return err
				}
			}
			if listen == "" {
				listen = hosts[id]
			}
			mc := memnode.DefaultConfig()
			if memSize != 0 {
				mc.Size = memSize
			}
			rc := replication.DefaultConfig()
			rc.NoSync = noSync
			if snapshotAt != 0 {
				rc.SnapshotEntries = snapshotAt
			}
			h, err := service.StartHost(service.HostConfig{
				ID: id, Listen: listen, Hosts: hosts, Memnodes: specs, DataDir: dataDir,
				Memnode: mc, Replication: rc, Logger: log,
			})
			if err != nil {
				return err
			}
			sig := waitSignal()
			log.Info().Str("signal", sig.String()).Msg("stopping")
			return h.Close()
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&id, "id", 0, "this host's id (> 0, unique, one of --peers)")
	f.StringVar(&listen, "listen", "", "address to bind (default: this host's address in --peers)")
	f.StringVar(&peers, "peers", "", "every host of the cluster as id=host:port,... (this one included)")
	f.IntVar(&memnodes, "memnodes", 3, "number of memnodes in the cluster")
	f.IntVar(&replicas, "replicas", 3, "replicas per memnode")
	f.StringVar(&dataDir, "data-dir", "", "directory for the Raft log and snapshots (required)")
	f.StringVar(&config, "config", "", "JSON config file whose keys are flag names")
	f.BoolVar(&noSync, "no-fsync", false, "do not fsync the Raft log (loses acknowledged writes on power loss)")
	f.Uint64Var(&memSize, "memnode-size", 0, "address-space size of each memnode in bytes (default 2^40)")
	f.Uint64Var(&snapshotAt, "snapshot-entries", 0, "snapshot and compact the log every this many entries (default 10000)")
	f.BoolVar(&join, "join", false, "join a running cluster as an empty host (no replicas until 'tutti replica add' or 'tutti memnode add' places some here)")
	return cmd
}

// parsePeers reads "1=a:7400,2=b:7400".
func parsePeers(s string) (map[uint64]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("--peers is required: id=host:port for every host, comma-separated")
	}
	out := map[uint64]string{}
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		k, v, ok := strings.Cut(p, "=")
		if !ok || v == "" {
			return nil, fmt.Errorf("--peers: %q is not id=host:port", p)
		}
		id, err := strconv.ParseUint(k, 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("--peers: %q: host id must be a positive integer", p)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("--peers: host %d listed twice", id)
		}
		out[id] = v
	}
	return out, nil
}

// applyEnvAndConfig fills flags not set on the command line from TUTTI_*
// variables, then from the JSON config file.
func applyEnvAndConfig(fs *pflag.FlagSet, path string) error {
	var file map[string]any
	if path == "" {
		path = os.Getenv("TUTTI_CONFIG")
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber() // keep 1099511627776 from becoming 1.099511627776e+12
		if err := dec.Decode(&file); err != nil {
			return fmt.Errorf("--config %s: not a JSON object: %w", path, err)
		}
		for k := range file {
			if fs.Lookup(k) == nil {
				return fmt.Errorf("--config %s: unknown key %q (keys are flag names)", path, k)
			}
		}
	}
	var errs []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" {
			return
		}
		env := "TUTTI_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", env, v, err))
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := fs.Set(f.Name, fmt.Sprint(v)); err != nil {
				errs = append(errs, fmt.Sprintf("config key %q: %v", f.Name, err))
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("configuration: %s", strings.Join(errs, "; "))
	}
	return nil
}
