// Package client is the Sinfonia coordinator: it builds minitransactions and
// executes them against a tutti cluster.
//
// # Usage
//
//	c, err := client.New(ctx, client.Config{Seeds: []string{"127.0.0.1:7400"}})
//	...
//	tx := client.NewTx().
//		Compare(0, 0x10, []byte("hello")).   // memnode 0, address 0x10
//		Write(0, 0x10, []byte("world")).
//		Read(0, 0x10, 5)
//	res, err := c.Exec(ctx, tx)
//	if err != nil { ... }            // nothing decided (see errors below)
//	if !res.Committed { ... }        // res.FailedCompare names the compare
//
// # What Exec does
//
//  1. It splits the items by memnode and picks a fresh tid (client id,
//     counter, wall time for garbage collection at memnodes).
//  2. One memnode with writes: one Exec request, applied as one Raft entry
//     (one-phase commit). One memnode without writes: a ReadIndex read with a
//     lock check; nothing is logged.
//  3. Several memnodes: Prepare to every participant in parallel; committed
//     exactly when every vote is OK; Commit or Abort is then sent to all in
//     the background (the caller does not wait; a later reader of a written
//     item waits on its lock, so reads stay linearizable). Read-only
//     minitransactions over several memnodes take the same path, so their
//     reads are atomic.
//  4. BAD-LOCK (and BAD-FORCED) votes: retry with a new tid after randomized
//     exponential backoff, at most RetryPolicy.MaxAttempts times
//     (ErrContention after that). BAD-CMP: a Result with Committed false and
//     FailedCompare set — a result, not an error.
//
// # Routing and retries
//
// The client learns hosts and memnode placement from any seed (the Cluster
// RPC) and caches each memnode's leader. A host that does not lead answers
// NOT_LEADER with a hint; the client follows it, or tries the next replica
// with backoff while an election runs. Requests are retried only when it is
// certain they were not applied (NOT_LEADER, never sent, reads). A one-phase
// write whose leader changed after the proposal, or whose connection broke
// after sending, returns ErrUnknownOutcome: read the items to find out. A
// two-phase attempt whose votes are unknown is aborted at every participant
// and retried, because an applied Abort fences a late Prepare.
//
// # Transport
//
// One gRPC connection and one long-lived bidirectional Session stream per
// host. A caller sends its request directly when the stream is idle (no
// goroutine hand-off at low load); while a send is under way, later callers
// queue and the sender flushes the queue as one batch (batching at high
// load). Responses are matched by id.
//
// # Threading
//
// A Client is safe for concurrent use. A Tx is not; build one per goroutine.
// Close waits for background Commit/Abort messages.
//
// This package must not import memnode, replication or the server: it speaks
// only the api/tuttipb wire protocol, like clients in other languages.
package client
