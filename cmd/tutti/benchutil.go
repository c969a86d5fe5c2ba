package main

import (
	"context"
	"io"
	"os"
	"runtime/pprof"
	"time"

	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/replication"
)

// startCPUProfile writes a Go CPU profile to path until the returned stop is
// called; with an empty path it does nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// allocsProfile returns a function that writes the allocations profile
// (every allocation since the process started, sampled as the runtime does)
// to path; with an empty path it does nothing.
func allocsProfile(path string) func() error {
	return func() error {
		if path == "" {
			return nil
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
}

// startEmbedded starts a local cluster for a benchmark and waits up to 30 s
// until every memnode has a leader.
func startEmbedded(ctx context.Context, cfg cluster.Config) (*cluster.Cluster, error) {
	c, err := cluster.Start(cfg)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitReady(rctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// benchLogDir returns dir, created if needed, or a fresh temporary directory
// named after prefix that cleanup removes.
func benchLogDir(dir, prefix string) (string, func(), error) {
	if dir == "" {
		d, err := os.MkdirTemp("", prefix)
		if err != nil {
			return "", nil, err
		}
		return d, func() { os.RemoveAll(d) }, nil
	}
	return dir, func() {}, os.MkdirAll(dir, 0o755)
}

// jsonSinks returns where a benchmark writes its JSON lines: stdout with
// --json and the --out file if given (created or truncated); close closes
// the file.
func jsonSinks(stdout io.Writer, asJSON bool, outFile string) (sinks []io.Writer, close func(), err error) {
	if asJSON {
		sinks = append(sinks, stdout)
	}
	if outFile == "" {
		return sinks, func() {}, nil
	}
	f, err := os.Create(outFile)
	if err != nil {
		return nil, nil, err
	}
	return append(sinks, f), func() { f.Close() }, nil
}

// sumReplStats sums the counters of the embedded cluster's hosts that the
// benchmarks report (leader changes, fsyncs, Raft entries).
func sumReplStats(c *cluster.Cluster) replication.Stats {
	var sum replication.Stats
	for _, h := range c.Hosts {
		st := h.Replication().Stats()
		sum.LeaderChanges += st.LeaderChanges
		sum.Fsyncs += st.Fsyncs
		sum.Entries += st.Entries
	}
	return sum
}
