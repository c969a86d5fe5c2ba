// Package cluster starts a complete tutti cluster inside one process: several
// hosts on loopback, each holding replicas of the memnodes. It backs
// `tutti up`, `tutti bench` and the integration tests, and offers the faults
// they inject (crash and restart a host, partition the Raft transport,
// spare hosts for online changes).
//
// It is not API: nothing outside this module may import it, and production
// code paths other than `tutti up` and `tutti bench` must not depend on it.
package cluster
