package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/membership"
)

// memberFlags are the membership agent's flags, shared by `tutti server`
// and `tutti agent`.
type memberFlags struct {
	name       string
	gossipAddr string
	advertise  string
	seeds      string
	key        string
	keyFile    string

	probeInterval    time.Duration
	probeTimeout     time.Duration
	suspicionMult    int
	suspicionMaxMult int
	indirectChecks   int
	gossipInterval   time.Duration
	retransmitMult   int

	pollInterval time.Duration
	takeover     time.Duration
	absent       time.Duration
}

func (m *memberFlags) register(fs *pflag.FlagSet, nameHelp, addrHelp, seedsHelp string) {
	g, t := membership.DefaultGossip, membership.DefaultTiming
	fs.StringVar(&m.name, "name", "", nameHelp)
	fs.StringVar(&m.gossipAddr, "gossip-addr", "", addrHelp)
	fs.StringVar(&m.advertise, "gossip-advertise", "", "gossip address other processes use to reach this one, ip:port (default: derived from --gossip-addr)")
	fs.StringVar(&m.seeds, "gossip-seeds", "", seedsHelp)
	fs.StringVar(&m.key, "gossip-key", "", "encrypt and authenticate gossip with this AES key, base64 of 16, 24 or 32 bytes (e.g. the output of: head -c 32 /dev/urandom | base64); every process must use the same key")
	fs.StringVar(&m.keyFile, "gossip-key-file", "", "read the gossip key (base64) from this file instead of --gossip-key")

	fs.DurationVar(&m.probeInterval, "probe-interval", g.ProbeInterval, "failure detection: how often gossip probes a random process")
	fs.DurationVar(&m.probeTimeout, "probe-timeout", g.ProbeTimeout, "failure detection: how long a probe waits for its ack (an RTT bound; below --probe-interval)")
	fs.IntVar(&m.suspicionMult, "suspicion-mult", g.SuspicionMult, "failure detection: a suspect has suspicion-mult x log10(N+1) x probe-interval to refute before it is declared dead")
	fs.IntVar(&m.suspicionMaxMult, "suspicion-max-mult", g.SuspicionMaxTimeoutMult, "failure detection: upper bound of the suspicion time, as a multiple of the base time")
	fs.IntVar(&m.indirectChecks, "indirect-checks", g.IndirectChecks, "failure detection: processes asked to probe on our behalf after a missed ack")
	fs.DurationVar(&m.gossipInterval, "gossip-interval", g.GossipInterval, "how often gossip messages are sent")
	fs.IntVar(&m.retransmitMult, "retransmit-mult", g.RetransmitMult, "each gossip broadcast is retransmitted retransmit-mult x log10(N+1) times")
	fs.DurationVar(&m.pollInterval, "table-poll", t.PollInterval, "how often the process table's version is read (with the cluster's watch stream, which notifies changes at once, a backup read every 4 x this)")
	fs.DurationVar(&m.takeover, "takeover-timeout", t.TakeoverTimeout, "if the first decider does not mark a crashed process dead, the next takes over after this long")
	fs.DurationVar(&m.absent, "absent-timeout", t.AbsentTimeout, "a live row whose process gossip never shows is declared dead after this long")
}

// gossipKey returns the configured key, or nil.
func (m *memberFlags) gossipKey() ([]byte, error) {
	s, what := m.key, "--gossip-key"
	if m.keyFile != "" {
		if m.key != "" {
			return nil, errors.New("--gossip-key and --gossip-key-file are exclusive")
		}
		b, err := os.ReadFile(m.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--gossip-key-file: %w", err)
		}
		s, what = string(b), "--gossip-key-file "+m.keyFile
	}
	if m.key == "" && m.keyFile == "" {
		return nil, nil // no key: gossip in the clear
	}
	// A blank key, or a key file with nothing in it, is a key that was
	// meant to be there: running unencrypted instead would be silent.
	if s = strings.TrimSpace(s); s == "" {
		return nil, fmt.Errorf("%s: empty; give the base64 of a 16, 24 or 32-byte key (e.g. head -c 32 /dev/urandom | base64)", what)
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		if k, err = base64.RawStdEncoding.DecodeString(s); err != nil {
			return nil, fmt.Errorf("%s: not base64: %w", what, err)
		}
	}
	if n := len(k); n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("%s: the key is %d bytes; it must be 16, 24 or 32 (AES-128/192/256)", what, n)
	}
	return k, nil
}

// config builds a membership.Config from the flags (not Client, Seeds).
func (m *memberFlags) config(log zerolog.Logger) (membership.Config, error) {
	key, err := m.gossipKey()
	if err != nil {
		return membership.Config{}, err
	}
	// membership replaces a zero or negative setting by its default, so
	// without this '--probe-interval -1s' would silently run with 200ms.
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--probe-interval", m.probeInterval}, {"--probe-timeout", m.probeTimeout}, {"--gossip-interval", m.gossipInterval},
		{"--table-poll", m.pollInterval}, {"--takeover-timeout", m.takeover}, {"--absent-timeout", m.absent}} {
		if d.v <= 0 {
			return membership.Config{}, fmt.Errorf("%s %v: must be positive", d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"--suspicion-mult", m.suspicionMult}, {"--suspicion-max-mult", m.suspicionMaxMult},
		{"--indirect-checks", m.indirectChecks}, {"--retransmit-mult", m.retransmitMult}} {
		if n.v <= 0 {
			return membership.Config{}, fmt.Errorf("%s %d: must be at least 1", n.name, n.v)
		}
	}
	if m.probeTimeout >= m.probeInterval {
		return membership.Config{}, fmt.Errorf("--probe-timeout %v must be below --probe-interval %v", m.probeTimeout, m.probeInterval)
	}
	cfg := membership.Config{
		ID: m.name, Bind: m.gossipAddr, Advertise: m.advertise, Key: key, Logger: log, Table: membership.DefaultTable,
		Gossip: membership.GossipTiming{
			ProbeInterval: m.probeInterval, ProbeTimeout: m.probeTimeout, SuspicionMult: m.suspicionMult,
			SuspicionMaxTimeoutMult: m.suspicionMaxMult, IndirectChecks: m.indirectChecks,
			GossipInterval: m.gossipInterval, RetransmitMult: m.retransmitMult,
		},
		Timing: membership.Timing{PollInterval: m.pollInterval, TakeoverTimeout: m.takeover, AbsentTimeout: m.absent},
	}
	return cfg, nil
}

// tableSeeds returns explicit plus the gossip addresses of the live rows of
// the process table other than self's, without duplicates.
func tableSeeds(explicit []string, t membership.Table, self string, own ...string) []string {
	seen := map[string]bool{"": true}
	for _, o := range own {
		seen[o] = true
	}
	var out []string
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, s := range explicit {
		add(s)
	}
	for _, r := range t.Live() {
		if r.ID != self {
			add(r.GossipAddr)
		}
	}
	return out
}

// anyReachable reports whether some seed accepts a TCP connection on its
// gossip port (then a failed join was a refusal, e.g. a wrong key, not an
// absence).
func anyReachable(seeds []string, timeout time.Duration) bool {
	for _, s := range seeds {
		c, err := net.DialTimeout("tcp", s, timeout)
		if err == nil {
			c.Close()
			return true
		}
	}
	return false
}

// memberStart is how a long-running process (a server) brings up its
// membership agent: it waits for the process table to be readable, joins
// the explicit seeds plus every live process in the table and, if none of
// them is reachable (TCP) for aloneAfter, starts a gossip cluster of its own and
// keeps joining the seeds until one answers (Node.Join), so servers
// started together end in one gossip cluster. A seed that is reachable but
// refuses (a wrong gossip key) is never bypassed: the start is retried and
// the reason logged. It returns when the node is registered or ctx ends,
// and at once on an invalid configuration or a process table this
// configuration cannot use (another layout, corrupt, or outside the
// memnode's address space): no wait fixes them.
func memberStart(ctx context.Context, log zerolog.Logger, cfg membership.Config, explicit []string, aloneAfter time.Duration) (*membership.Node, error) {
	var (
		firstFail time.Time
		backoff   = 200 * time.Millisecond
	)
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
		return nil
	}
	if cfg.Table == (membership.TableConfig{}) {
		cfg.Table = membership.DefaultTable
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("membership: config: %w", err)
	}
	for {
		t, err := membership.ReadTable(ctx, cfg.Client, cfg.Table)
		if permanent(err) {
			return nil, err
		}
		if err != nil {
			log.Info().Err(err).Msg("membership: waiting for the process table (memnode quorum)")
			if err := wait(); err != nil {
				return nil, err
			}
			continue
		}
		c := cfg
		c.Seeds = tableSeeds(explicit, t, cfg.ID, cfg.Bind, cfg.Advertise)
		alone := false
		if len(c.Seeds) > 0 && !anyReachable(c.Seeds, time.Second) {
			if firstFail.IsZero() {
				firstFail = time.Now()
			}
			if time.Since(firstFail) < aloneAfter {
				log.Info().Strs("seeds", c.Seeds).Msg("membership: waiting for a gossip seed to come up")
				if err := wait(); err != nil {
					return nil, err
				}
				continue
			}
			alone, c.Seeds = true, nil
		}
		n, err := membership.Start(ctx, c)
		if err == nil {
			if alone {
				log.Warn().Strs("seeds", cfg.Seeds).Msg("membership: no seed reachable; started a new gossip cluster and will keep joining them")
				go keepJoining(ctx, log, n, tableSeeds(explicit, t, cfg.ID, cfg.Bind, cfg.Advertise, n.GossipAddr()))
			}
			return n, nil
		}
		if permanent(err) {
			return nil, err
		}
		if !errors.Is(err, membership.ErrJoin) {
			log.Warn().Err(err).Msg("membership: starting the agent (retrying)")
		}
		if err := wait(); err != nil {
			return nil, err
		}
	}
}

// permanent reports a membership error that waiting does not clear: the
// table in the memnode is not one this configuration can use (another
// layout, or corrupt), or the memnodes refuse its reads as invalid (the
// table lies outside memnodes made smaller than its base, --memnode-size).
// memberStart returns it instead of retrying.
func permanent(err error) bool {
	return errors.Is(err, membership.ErrLayoutMismatch) || errors.Is(err, membership.ErrCorruptTable) ||
		errors.Is(err, client.ErrInvalid)
}

// keepJoining calls n.Join(seeds) every 2 s until one answers, ctx ends or
// n closes.
func keepJoining(ctx context.Context, log zerolog.Logger, n *membership.Node, seeds []string) {
	if len(seeds) == 0 {
		return
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		k, err := n.Join(seeds)
		if errors.Is(err, membership.ErrClosed) {
			return
		}
		if k > 0 {
			log.Info().Int("answered", k).Msg("membership: joined the seeds' gossip cluster")
			return
		}
	}
}

// newClient connects a client for a membership agent, first to own.
func newClient(ctx context.Context, log zerolog.Logger, seeds []string, dial ...grpc.DialOption) (*client.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return client.New(cctx, client.Config{Seeds: seeds, Logger: log, DialOptions: dial})
}
