// Package metrics exposes a tutti host's counters and Raft state to
// Prometheus: a Collector that reads replication.Host.Stats, the status of
// every Raft group the host holds, the recovery coordinator's counters and,
// for memnodes the host leads, the memnode's in-doubt and decided-set sizes;
// and Serve, an HTTP server for /metrics.
//
// Values are read when Prometheus scrapes, from counters the host keeps
// anyway: nothing is added to the request path. Memnode sizes cost one
// ReadIndex read per led memnode per scrape, bounded by the scrape's
// context.
//
// This package only reads; it must not change a host or a memnode.
package metrics
