package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/membership"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

func newServer(g *globals) *cobra.Command {
	var (
		tf         tlsFlags
		metrics    string
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
		snapBytes  uint64
		cacheBytes uint64
		join       bool
		mf         memberFlags
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

The first boot (an empty --data-dir) bootstraps only once every host this
one shares a memnode with answers, and each is booting too or recorded this
host's boot nonce (TUTTI-BOOT-NONCE) when it bootstrapped. A host whose data
directory was lost (a replaced disk) is restarted with the same flags and an
empty --data-dir: it finds the cluster running, bootstraps nothing, and its
replicas are removed from their Raft groups and added back as new members
that catch up by snapshot (README, "Replacing a host's disk").

Every host also runs a membership agent, process id host-<id> (--name), so
'tutti members' lists the hosts. It gossips on --gossip-addr, by default the
host of --listen at the gRPC port + 1000 (7400 -> 8400), and joins
--gossip-seeds, by default every other host of --peers at its port + 1000
(and every live process in the process table). A host that finds no seed
reachable starts gossip alone after (its rank in --peers) x 5 s and keeps
joining the seeds until one answers. On SIGTERM/SIGINT the agent leaves
gracefully (its row becomes left) before the host stops. --gossip-key (or
--gossip-key-file) encrypts gossip; a process with another key cannot join
and logs why. A host whose connections the other hosts refuse (a TLS
handshake or authentication failure, e.g. started without the cluster's
--tls-* flags) says so at warn level every 30 s until its agent starts.
Failure detection: the defaults (--probe-interval 200ms,
--probe-timeout 100ms, --suspicion-mult 4, --suspicion-max-mult 6) marked a
SIGKILLed process dead in 1.2 s at p50 and 1.9 s at p99 with 7 processes,
with no false removal in a 10-minute soak (README, Membership).

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
  TUTTI_ID=2 TUTTI_PEERS=1=a:7400,2=b:7400,3=c:7400 TUTTI_DATA_DIR=/data tutti server
  # encrypted gossip (same key on every host):
  TUTTI_GOSSIP_KEY=$(cat /etc/tutti/gossip.key) tutti server --id 1 ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndConfig(cmd.Flags(), config); err != nil {
				return err
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			if dataDir == "" {
				return fmt.Errorf("--data-dir is required: the directory of this host's Raft log and snapshots (env TUTTI_DATA_DIR)")
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
			if snapBytes != 0 {
				rc.SnapshotBytes = snapBytes
			}
			if cacheBytes != 0 {
				rc.LogCacheBytes = cacheBytes
			}
			mcfg, explicit, rank, err := serverMembership(&mf, log, id, listen, hosts)
			if err != nil {
				return err
			}
			tm, err := tf.load()
			if err != nil {
				return err
			}
			sctx, stop := notifyStop(cmd.Context())
			defer stop()
			mlis, err := metricsListen(metrics)
			if err != nil {
				return err
			}
			if mlis != nil {
				defer mlis.Close() // if the host does not start
			}
			h, err := service.StartHost(service.HostConfig{
				ID: id, Listen: listen, Hosts: hosts, Memnodes: specs, DataDir: dataDir,
				Memnode: mc, Replication: rc, Logger: log,
				ServerOptions: tm.serverOptions(log), DialOptions: tm.dialOptions(),
				AuthorizeRaftPeer: tm.authorizeRaftPeer(),
			})
			if err != nil {
				return err
			}
			agent := startServerAgent(log, mcfg, explicit, hosts[id], hosts, time.Duration(rank)*5*time.Second, tm.dialOptions())
			if mlis != nil {
				ms := metricsServe(mlis, log, []string{hosts[id]}, tm.dialOptions(), h)
				defer ms.Close()
				log.Info().Str("addr", ms.Addr()).Msg("serving Prometheus metrics at /metrics and the cluster's status at /status")
			}
			<-sctx.Done()
			log.Info().Msg("stopping")
			agent.stop()
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
	f.Uint64Var(&snapshotAt, "snapshot-entries", 0, "snapshot and compact a memnode's log every this many entries (default 100000)")
	f.Uint64Var(&snapBytes, "snapshot-bytes", 0, "also snapshot a memnode once its log grew this many bytes, or twice its last snapshot if larger (default 256 MiB)")
	f.Uint64Var(&cacheBytes, "log-cache-bytes", 0, "applied log entries each memnode replica keeps in memory; older ones are read from disk (default 8 MiB)")
	mf.register(f, "membership process id (default host-<id>)",
		"gossip bind address, host:port (default: the host of --listen at its port + 1000)",
		"gossip addresses to join, comma-separated (default: every other host of --peers at its port + 1000)")
	tf.register(f)
	f.StringVar(&metrics, "metrics-addr", "", "serve Prometheus metrics (Raft, recovery, memnodes this host leads) at http://<addr>/metrics and the cluster's status (memnodes, leaders, groups, views) at /status, e.g. :9400; off if empty")
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
		if h, port, err := net.SplitHostPort(v); err != nil || h == "" {
			return nil, fmt.Errorf("--peers: %q: the address must be host:port, e.g. %d=10.0.0.1:7400", p, id)
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("--peers: %q: port %q is not a number in 1..65535", p, port)
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

// gossipPort maps a gRPC address to its default gossip address (port+1000).
func gossipPort(addr string) (string, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n+1000 > 65535 {
		return "", fmt.Errorf("%q: no default gossip port (gRPC port + 1000); set --gossip-addr/--gossip-seeds", addr)
	}
	return net.JoinHostPort(h, strconv.Itoa(n+1000)), nil
}

// serverMembership derives a host's membership config from its flags: the
// process id, bind and advertise addresses, explicit seeds, and this
// host's rank among the peers (how long it waits before gossiping alone).
func serverMembership(mf *memberFlags, log zerolog.Logger, id uint64, listen string, hosts map[uint64]string) (membership.Config, []string, int, error) {
	if mf.name == "" {
		mf.name = fmt.Sprintf("host-%d", id)
	}
	own, ok := hosts[id]
	if !ok {
		return membership.Config{}, nil, 0, fmt.Errorf("--id %d is not in --peers", id)
	}
	if mf.gossipAddr == "" {
		g, err := gossipPort(listen)
		if err != nil {
			return membership.Config{}, nil, 0, fmt.Errorf("--gossip-addr: %w", err)
		}
		mf.gossipAddr = g
	}
	bh, bp, err := net.SplitHostPort(mf.gossipAddr)
	if err != nil {
		return membership.Config{}, nil, 0, fmt.Errorf("--gossip-addr %q: %w", mf.gossipAddr, err)
	}
	if bh == "" {
		bh = "0.0.0.0"
		mf.gossipAddr = net.JoinHostPort(bh, bp)
	}
	if ip := net.ParseIP(bh); mf.advertise == "" && ip != nil && ip.IsUnspecified() {
		// Advertise this host's address in --peers (resolved: gossip needs
		// an IP), at the bind port.
		if ph, _, err := net.SplitHostPort(own); err == nil {
			if net.ParseIP(ph) == nil {
				if ips, err := net.LookupHost(ph); err == nil && len(ips) > 0 {
					ph = ips[0]
				} else {
					ph = ""
				}
			}
			if ph != "" {
				mf.advertise = net.JoinHostPort(ph, bp)
			}
		}
	}
	cfg, err := mf.config(log)
	if err != nil {
		return membership.Config{}, nil, 0, err
	}
	cfg.GRPCAddr = own
	ids := make([]uint64, 0, len(hosts))
	for h := range hosts {
		ids = append(ids, h)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	rank := sort.Search(len(ids), func(i int) bool { return ids[i] >= id })
	explicit := splitSeeds(mf.seeds)
	if mf.seeds == "" {
		for _, h := range ids {
			if h == id {
				continue
			}
			g, err := gossipPort(hosts[h])
			if err != nil {
				return membership.Config{}, nil, 0, fmt.Errorf("--gossip-seeds: %w", err)
			}
			explicit = append(explicit, g)
		}
	}
	cfg.ID = mf.name
	probe := cfg
	probe.Client = new(client.Client) // Validate only checks that it is set
	if err := probe.Validate(); err != nil {
		return membership.Config{}, nil, 0, err
	}
	return cfg, explicit, rank, nil
}

// serverAgent is a host's membership agent, started in the background
// (the process table needs a quorum of the memnode's replicas, which may
// be on hosts not started yet).
type serverAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
	log    zerolog.Logger
	node   *membership.Node
	cl     *client.Client
}

func startServerAgent(log zerolog.Logger, cfg membership.Config, explicit []string, own string, hosts map[uint64]string, aloneAfter time.Duration, dial []grpc.DialOption) *serverAgent {
	ctx, cancel := context.WithCancel(context.Background())
	a := &serverAgent{cancel: cancel, done: make(chan struct{}), log: log}
	seeds := []string{own}
	for _, h := range hosts {
		if h != own {
			seeds = append(seeds, h)
		}
	}
	go func() {
		defer close(a.done)
		for a.cl == nil {
			cl, err := newClient(ctx, log, seeds, dial...)
			if err == nil {
				a.cl = cl
				break
			}
			log.Info().Err(err).Msg("membership: connecting to the cluster")
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
		cfg.Client = a.cl
		// The dial options are the --tls-* credentials, nil without TLS.
		dctx, dstop := context.WithCancel(ctx)
		go warnRefused(dctx, log, seeds[1:], dial, len(dial) > 0)
		n, err := memberStart(ctx, log, cfg, explicit, aloneAfter)
		dstop()
		if err != nil {
			if ctx.Err() != nil {
				// stop: the host is shutting down before the agent started.
				log.Debug().Err(err).Msg("membership: agent start abandoned (stopping)")
				return
			}
			// memberStart retries what time can fix: this will not start
			// by itself, and the host runs on without its agent.
			log.Error().Err(err).Str("process", cfg.ID).
				Msg("membership: the agent did not start: this host is not in the process table ('tutti members' does not list it) and takes no part in failure detection; fix the cause and restart the host")
			return
		}
		a.node = n
		log.Info().Str("process", n.ID()).Uint64("incarnation", n.Incarnation()).Str("gossip", n.GossipAddr()).Msg("membership agent registered")
	}()
	return a
}

// Timing of warnRefused: first look after refusedFirst, then every
// refusedEvery while the refusal lasts.
const (
	refusedFirst = 2 * time.Second
	refusedEvery = 30 * time.Second
)

// warnRefused runs while the server's membership agent waits to start.
// It asks the other hosts (addrs) for the cluster's layout and, if they
// refuse this host's connections for a reason waiting does not fix (a TLS
// handshake failure: this host lacks the cluster's --tls-* flags, or has a
// certificate of another CA; an authentication error), says so at warn
// level, at most every refusedEvery. Otherwise the only sign would be the
// agent's info-level "waiting for the process table" with "the cluster has
// no memnode 0": this host's own layout, since it never read the
// directory from the others.
func warnRefused(ctx context.Context, log zerolog.Logger, addrs []string, dial []grpc.DialOption, tlsOn bool) {
	if len(addrs) == 0 {
		return
	}
	wait := refusedFirst
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = refusedFirst
		var refused []string
		var why error
		for _, addr := range addrs {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			cl, err := client.New(cctx, client.Config{Seeds: []string{addr}, DialOptions: dial, Logger: zerolog.Nop()})
			cancel()
			if err == nil {
				cl.Close()
				continue
			}
			if ex := explainConnErr(err, tlsOn); ex != err || status.Code(err) == codes.Unauthenticated || status.Code(err) == codes.PermissionDenied {
				refused = append(refused, addr)
				why = ex
			}
		}
		if ctx.Err() != nil {
			return
		}
		if len(refused) > 0 {
			log.Warn().Err(why).Strs("hosts", refused).Bool("tls", tlsOn).
				Msg("cluster: other hosts refuse this host's connections (TLS handshake or authentication), so it cannot read the directory or join; start it with the cluster's --tls-cert, --tls-key and --tls-ca")
			wait = refusedEvery
		}
	}
}

// stop leaves the process table gracefully (bounded to 5 s) or, if the
// agent is still starting, abandons the start.
func (a *serverAgent) stop() {
	a.cancel()
	<-a.done
	if a.node != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.node.Leave(ctx); err != nil {
			a.log.Warn().Err(err).Msg("membership: leaving the process table")
		}
		cancel()
	}
	if a.cl != nil {
		a.cl.Close()
	}
}
