package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

// Config describes a local cluster.
type Config struct {
	Hosts    int // default 3
	Memnodes int // default 3
	Replicas int // per memnode; default min(3, Hosts)
	// DataDir holds one subdirectory per host; a fresh temporary directory
	// (removed by Close) if empty. An existing DataDir is recovered.
	DataDir string
	// BasePort: host i listens on 127.0.0.1:BasePort+i-1. 0 picks free ports.
	BasePort int
	// NoSync turns fsync off (tests only).
	NoSync  bool
	Logger  zerolog.Logger
	Memnode memnode.Config
	// Replication tunes Raft (tick, snapshots); zero fields take defaults.
	Replication replication.Config
	// Recovery tunes every host's recovery coordinator for in-doubt tids.
	Recovery service.RecoveryConfig
	// WrapTransport, if set, wraps each host's Raft transport (see Faults).
	WrapTransport func(host uint64, t replication.Transport) replication.Transport
	// Spares: the last Spares of the Hosts hold no replica at bootstrap
	// (room to add or move replicas online; see admin.go).
	Spares int
	// DirectoryPoll: how often hosts reconcile with the directory; the
	// service default if 0.
	DirectoryPoll time.Duration
	// ServerOptions and DialOptions go to every host (e.g. mutual TLS
	// credentials); clients of the cluster then need matching ones.
	ServerOptions []grpc.ServerOption
	DialOptions   []grpc.DialOption
	// AuthorizeRaftPeer goes to every host (HostConfig.AuthorizeRaftPeer).
	AuthorizeRaftPeer func(ctx context.Context, host uint64, addr string) error
}

// Cluster is a running local cluster.
type Cluster struct {
	cfg     Config
	Dir     string
	tempDir bool
	Hosts   []*service.Host
	hostCfg []service.HostConfig
	specs   []service.MemnodeSpec
}

// Start starts every host and returns once they all serve.
func Start(cfg Config) (*Cluster, error) {
	if cfg.Hosts == 0 {
		cfg.Hosts = 3
	}
	if cfg.Memnodes == 0 {
		cfg.Memnodes = 3
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = min(3, cfg.Hosts-cfg.Spares)
	}
	c := &Cluster{cfg: cfg, Dir: cfg.DataDir}
	if c.Dir == "" {
		d, err := os.MkdirTemp("", "tutti-")
		if err != nil {
			return nil, err
		}
		c.Dir, c.tempDir = d, true
	}
	ids := make([]uint64, cfg.Hosts)
	addrs := map[uint64]string{}
	listeners := make([]net.Listener, cfg.Hosts)
	for i := range ids {
		ids[i] = uint64(i + 1)
		addr := "127.0.0.1:0"
		if cfg.BasePort != 0 {
			addr = fmt.Sprintf("127.0.0.1:%d", cfg.BasePort+i)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range listeners[:i] {
				l.Close()
			}
			c.cleanup()
			return nil, fmt.Errorf("local cluster: host %d: %w", ids[i], err)
		}
		listeners[i] = l
		addrs[ids[i]] = l.Addr().String()
	}
	specs, err := service.Place(ids[:max(0, len(ids)-cfg.Spares)], cfg.Memnodes, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	c.specs = specs
	for i, id := range ids {
		rc := cfg.Replication
		rc.NoSync = cfg.NoSync
		hc := service.HostConfig{
			ID:          id,
			Listen:      addrs[id],
			Listener:    listeners[i],
			Hosts:       addrs,
			Memnodes:    specs,
			DataDir:     filepath.Join(c.Dir, fmt.Sprintf("host-%d", id)),
			Memnode:     cfg.Memnode,
			Replication: rc,
			Logger:      cfg.Logger,
			Recovery:    cfg.Recovery,

			ServerOptions: cfg.ServerOptions,
			DialOptions:   cfg.DialOptions,

			AuthorizeRaftPeer: cfg.AuthorizeRaftPeer,
		}
		hc.WrapTransport = cfg.WrapTransport
		hc.DirectoryPoll = cfg.DirectoryPoll
		c.hostCfg = append(c.hostCfg, hc)
		h, err := service.StartHost(hc)
		if err != nil {
			for _, l := range listeners[i+1:] {
				l.Close()
			}
			c.Close()
			return nil, err
		}
		c.Hosts = append(c.Hosts, h)
	}
	return c, nil
}

// Seeds returns every host's address.
func (c *Cluster) Seeds() []string {
	var s []string
	for _, hc := range c.hostCfg {
		s = append(s, hc.Hosts[hc.ID])
	}
	return s
}

// Memnodes returns the placement.
func (c *Cluster) Memnodes() []service.MemnodeSpec { return c.specs }

// WaitReady waits until every memnode has a leader known to all its replicas.
func (c *Cluster) WaitReady(ctx context.Context) error {
	for {
		ready := true
		for _, m := range c.specs {
			for _, h := range c.Hosts {
				if h == nil {
					continue
				}
				for _, r := range m.Replicas {
					if r == h.ID() && h.Replication().Leader(m.ID) == 0 {
						ready = false
					}
				}
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("local cluster: memnodes without a leader: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// StopHost stops host i (0-based) as a crash would, keeping its data.
func (c *Cluster) StopHost(i int) error {
	if c.Hosts[i] == nil {
		return nil
	}
	err := c.Hosts[i].Close()
	c.Hosts[i] = nil
	return err
}

// RestartHost starts host i again from its data directory on its address.
func (c *Cluster) RestartHost(i int) error {
	if c.Hosts[i] != nil {
		return fmt.Errorf("host %d is running", i+1)
	}
	hc := c.hostCfg[i]
	hc.Listener = nil
	h, err := service.StartHost(hc)
	if err != nil {
		return err
	}
	c.Hosts[i] = h
	return nil
}

// Close stops every host and removes a temporary data directory.
func (c *Cluster) Close() error {
	var errs []error
	for i := range c.Hosts {
		errs = append(errs, c.StopHost(i))
	}
	c.cleanup()
	return errors.Join(errs...)
}

func (c *Cluster) cleanup() {
	if c.tempDir {
		os.RemoveAll(c.Dir)
	}
}
