// Package service is the shell around the pure memnode state machine: it
// runs a tutti host (HostConfig, StartHost) — one gRPC server carrying the
// client-facing Memnode service and the Raft transport, a replication.Host
// with one Raft group per local memnode replica, and a memnode.Memnode as
// each group's state machine.
//
// # Request path
//
//  1. Session streams carry batches of requests. Each request is checked
//     (known memnode, replica here, size, items within the memnode's bounds:
//     memnode.Config.ValidateOp); a bad one gets STATUS_INVALID or
//     STATUS_UNKNOWN_MEMNODE and changes nothing.
//  2. Writes and two-phase steps become memnode entries stamped with this
//     host's clock (the leader's clock: the only time a memnode ever sees)
//     and are proposed to the memnode's Raft group; the group batches all
//     proposals queued at one moment into one entry.
//  3. Read-only requests (KIND_READ) are served with a ReadIndex read and
//     memnode.Query: no log entry.
//  4. Results come back from the Raft worker through a non-blocking outbox;
//     one sender goroutine per stream sends whatever has accumulated as one
//     batch.
//
// A host that is not the leader answers STATUS_NOT_LEADER with the leader's
// id and address; it does not forward (one hop fewer, and clients cache
// leaders). A proposal whose fate is unknown (leadership lost after
// proposing) is answered STATUS_UNKNOWN_OUTCOME and never retried here.
//
// Place computes the static placement of memnode replicas on hosts from the
// host list; every host computes the same one.
//
// This package must not hold Sinfonia logic of its own (that is memnode's)
// nor Raft logic (replication's); it translates and routes.
package service
