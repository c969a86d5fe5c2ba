package agents

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/membership"
)

// Config configures the agents.
type Config struct {
	// BasePort: host i's agent gossips on 127.0.0.1:BasePort+i-1; 0 picks
	// free ports.
	BasePort int
	// Key encrypts gossip (16, 24 or 32 bytes) if set.
	Key    []byte
	Gossip membership.GossipTiming
	Timing membership.Timing
	Logger zerolog.Logger
}

// Agents are the running agents, one per host, in host order.
type Agents struct {
	mu      sync.Mutex
	nodes   []*membership.Node
	clients []*client.Client
}

// Start starts one agent per host of c (which must be ready, see
// cluster.WaitReady), each with its own client whose first seed is its own
// host, and returns once every agent is registered in the process table.
func Start(ctx context.Context, c *cluster.Cluster, cfg Config) (*Agents, error) {
	a := &Agents{}
	hosts := c.Seeds()
	var gossip []string
	for i, h := range hosts {
		seeds := append([]string{h}, hosts[:i]...)
		seeds = append(seeds, hosts[i+1:]...)
		cl, err := client.New(ctx, client.Config{Seeds: seeds, Logger: cfg.Logger})
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("membership agent of host %d: %w", i+1, err)
		}
		bind := "127.0.0.1:0"
		if cfg.BasePort != 0 {
			bind = fmt.Sprintf("127.0.0.1:%d", cfg.BasePort+i)
		}
		n, err := membership.Start(ctx, membership.Config{
			ID: fmt.Sprintf("host-%d", i+1), Client: cl, Bind: bind, GRPCAddr: h,
			Seeds: gossip, Key: cfg.Key, Logger: cfg.Logger, Gossip: cfg.Gossip, Timing: cfg.Timing,
		})
		if err != nil {
			cl.Close()
			a.Close()
			return nil, fmt.Errorf("membership agent of host %d: %w", i+1, err)
		}
		gossip = append(gossip, n.GossipAddr())
		a.mu.Lock()
		a.nodes = append(a.nodes, n)
		a.clients = append(a.clients, cl)
		a.mu.Unlock()
	}
	return a, nil
}

// Node returns host i's agent (0-based), nil once crashed or left.
func (a *Agents) Node(i int) *membership.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nodes[i]
}

// Len is the number of hosts.
func (a *Agents) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.nodes)
}

// GossipAddrs returns the running agents' gossip addresses (seeds for
// other processes).
func (a *Agents) GossipAddrs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, n := range a.nodes {
		if n != nil {
			out = append(out, n.GossipAddr())
		}
	}
	return out
}

func (a *Agents) take(i int) (*membership.Node, *client.Client) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, cl := a.nodes[i], a.clients[i]
	a.nodes[i], a.clients[i] = nil, nil
	return n, cl
}

// Crash stops host i's agent without leaving: the others declare it dead.
func (a *Agents) Crash(i int) {
	n, cl := a.take(i)
	if n != nil {
		n.Close()
		cl.Close()
	}
}

// Leave makes host i's agent leave gracefully.
func (a *Agents) Leave(ctx context.Context, i int) error {
	n, cl := a.take(i)
	if n == nil {
		return nil
	}
	defer cl.Close()
	return n.Leave(ctx)
}

// Close makes every running agent leave (bounded to 5 s in all).
func (a *Agents) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.mu.Lock()
	n := len(a.nodes)
	a.mu.Unlock()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = a.Leave(ctx, i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
