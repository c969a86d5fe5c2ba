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
//     lock check; nothing is logged (unless Tx.Logged: then it is an entry
//     like a write, ordered after every request the leader accepted before
//     it, which is what settling an ErrUnknownOutcome by reading needs).
//  3. Several memnodes: Prepare to every participant in parallel; committed
//     exactly when every vote is OK; Commit or Abort is then sent to all in
//     the background (the caller does not wait; a later reader of a written
//     item waits on its lock, so reads stay linearizable). Read-only
//     minitransactions over several memnodes take the same path, so their
//     reads are atomic. See "Decisions" below for when they leave. A
//     memnode the cluster does not have (after one layout refresh) fails
//     with ErrUnknownMemnode before any Prepare leaves: recovery could not
//     reach it, so the tid would stay in doubt at the others.
//  4. BAD-LOCK votes: retry with a new tid after randomized exponential
//     backoff, at most RetryPolicy.MaxAttempts times (ErrContention after
//     that). BAD-FORCED votes (a fresh tid refused: older than the
//     horizon, below, or fenced by recovery because a Prepare took longer
//     than its timeout to arrive): one retry, then ErrFenced, since a tid
//     of a clock that is behind is refused every time. BAD-CMP: a Result
//     with Committed false and FailedCompare set — a result, not an error.
//  5. Appends (Tx.Append): the memnode takes a ring position at apply time
//     and returns it (Result.Appended), so appenders never lose races on a
//     tail word as a compare-and-write would. A Tx with appends must touch
//     exactly one memnode (ErrInvalid before sending otherwise) and is
//     always logged (step 2); an append refused by its Limit is a failed
//     compare numbered after the compares. Appends are not idempotent:
//     settle an ErrUnknownOutcome with a fence before appending again.
//     They go out under their own request kind (KIND_EXEC_APPEND): a host
//     built before appends would ignore them as unknown fields and apply
//     the rest of the minitransaction, but it refuses a kind it does not
//     know, so Exec returns ErrInvalid ("upgrade memnode hosts before
//     clients that append") and nothing is applied.
//
// # Recovery of in-doubt minitransactions
//
// The coordinator logs nothing, so a coordinator that dies between Prepare
// and the decision leaves its tid in doubt, holding locks. Every host runs a
// recovery coordinator for the memnodes it leads (memnode/service): it lists
// tids in doubt for longer than a timeout and calls Recover, which asks every
// participant to abort unless it already voted (a participant that has not
// voted is fenced and will refuse the late Prepare), commits exactly when
// every vote is OK (a decided outcome reported by any participant wins), and
// sends the decision to all. Recover is idempotent and safe to run
// concurrently with the original coordinator and other recoverers; all reach
// the same outcome as long as they finish within the memnodes' horizon.
//
// Recovery of a tid must happen within the horizon of its TID.Time. Past
// it, a participant that is not holding the tid in doubt has forgotten
// whether it voted and how the tid was decided, and says so
// (OUTCOME_EXPIRED) instead of voting; unless another participant's answer
// settles the outcome, Recover decides nothing and returns ErrExpired. The
// tid then stays in doubt, its locks held, rather than risk an outcome
// that differs between participants; an operator must decide it.
//
// A tid carries the client's clock (Config.Now), and memnodes refuse
// attempts whose tid is older than their horizon (60 s by default) by
// their own clock: a Prepare as BAD-FORCED, a one-phase attempt with
// ErrFenced (a fence of it may have been forgotten by then); Exec then
// returns ErrFenced on one memnode or several. So a client's
// clock must not run behind the cluster's by as much as the horizon.
//
// Exec never aborts an attempt whose votes it could not all see (a lost
// response, a context that ended): it learns the missing votes with
// AbortUnlessVoted and decides by the same rule, because every vote may
// already be OK, which means committed. If even that fails it returns
// ErrUnknownOutcome and leaves the tid to recovery. Committed, it fetches
// the reads of a participant whose vote was lost with a duplicate Prepare;
// if the tid was decided there meanwhile (recovery committed it), the
// reads are gone and Exec returns an error wrapping ErrReadsLost:
// committed, writes applied, reads of that memnode (Error.Memnode) lost.
//
// Tests make the coordinator die with Config.Crash, at a CrashPoint
// (CrashAfterPrepareSent, CrashAfterVotes, CrashAfterFirstDecision): the
// coordinator stops sending at that point and Exec returns an error wrapping
// ErrCoordinatorCrashed. The hook is for tests only.
//
// # Routing and retries
//
// The client learns hosts and memnode placement from any seed (the Cluster
// RPC) and caches each memnode's leader. It never replaces its layout with
// one from an older directory version (a host that cannot read memnode 0
// answers from the layout it last knew): it asks the next host, or keeps
// its own. A host that does not lead answers
// NOT_LEADER with a hint; the client follows it, or tries the next replica
// with backoff while an election runs. Requests are retried only when it is
// certain they were not applied (NOT_LEADER, never sent, reads). A one-phase
// write whose leader changed after the proposal, or whose connection broke
// after sending, returns ErrUnknownOutcome: read the items to find out,
// with a logged minitransaction on the attempt's memnode (Error.Memnode)
// that fences the attempt (Client.Settle(ctx, tx, err), or
// Tx.Fence(UnknownAttempt(err))): a plain read can come before an attempt
// the leader has appended and not yet committed, and an unfenced logged
// one before an attempt still on its way to the leader, which may then
// apply after the read said it had not. A fenced attempt arriving later is
// refused (Entry.Fences in package memnode), so what the read shows is
// final. A fence on another memnode settles nothing; Settle refuses one
// with ErrInvalid. A two-phase attempt whose votes are unknown is settled as recovery would
// (see below): committed if every vote turns out OK, else aborted at every
// participant and retried.
//
// # Transport
//
// One gRPC connection and one long-lived bidirectional Session stream per
// host. A caller sends its request directly when the stream is idle (no
// goroutine hand-off at low load); while a send is under way, later callers
// queue and the sender flushes the queue as one batch (batching at high
// load). Responses are matched by id.
//
// Thousands of goroutines share these few sessions under load, so the
// paths every request takes avoid the client's and the sessions' locks:
// a memnode's route (leader host and connection) and a connection's live
// session are read from atomic snapshots, replaced under the lock when
// the layout, a leader or the session changes; the receiving goroutine
// takes a batch's answers under the session's lock and hands them over
// after releasing it; a two-phase round waits for all its answers with
// one wake-up, and queues its decisions with one lock per connection.
// Measured with `tutti bench mtx --workload base,cas2 --memnodes 2
// --outstanding 2048 --duration 4s --rounds 1`, five alternated runs of the
// binaries before and after (2026-12-02, 2-core machine): cas2 31.8–42.1k
// → 42.4–48.0k minitransactions/s (median 36.9k → 44.9k), base 83.5–95.9k
// → 83.3–101.8k, cas2/base 0.36–0.44 → 0.44–0.51 (median 0.43 → 0.48).
// Before, a profile showed the session lock only as 4% of CPU samples
// (spinning); the rest of the cost was goroutines parked and woken on it.
//
// A minitransaction allocates little: its parts live on Exec's stack, the
// wire items of each kind share one allocation (pack.go, joined only while
// the object stays within 512 bytes: larger objects carry a header and the
// collector scans them one by one), and the waits for answers (callMany's
// manyCall, conn.do's waiter) are pooled, reused only after their one
// answer has been received, never after their caller gave up on them.
// BenchmarkExecTwoPhase and BenchmarkExecOnePhase (an in-process cluster,
// so its hosts' allocations count too): 136–137 → 116–118 allocations per
// two-phase Exec, 80–81 → 66–68 per one-phase one (2026-12-02).
//
// # Decisions
//
// A decision (Commit or Abort at one participant) waits on the session to
// the participant's leader for the next batch that leaves it, and rides on a
// logged request of that batch for the same memnode, unless the request is
// too close to the hosts' 4 MiB request limit (Request.commit_tids,
// abort_tids: a Prepare or Exec that is sent anyway applies the decision
// first, in the same Raft entry), or else shares one decision request with
// the other decisions for that memnode. If the session has no request in
// flight the batch leaves at once; while it is busy, the decision waits for
// a caller's flush (under load they are constant), for the session to go
// idle, or for a timer of 500 µs (about 1 ms with the timer's granularity),
// whichever comes first. So a decision leaves at most about a millisecond
// after Exec returns, and the locks of a committed minitransaction are held
// that much longer at most; at one outstanding minitransaction the session
// is idle and nothing waits. A carrier answered other than STATUS_OK (not
// leader, invalid, unavailable, unknown outcome) makes its decisions go
// again, each on its own (they are idempotent); Close waits for every
// decision to be answered.
//
// # Structures built on minitransactions
//
// Reusable structures kept entirely in a memnode and changed only by
// minitransactions (no RPCs of their own), so any number of processes may
// share one:
//
//   - Allocator (alloc.go): carves regions out of an address range with a
//     bump pointer and a first-fit free list; ErrExhausted when nothing fits.
//   - Lease (lease.go): an expiring exclusive grant with a fencing token
//     (epoch) that grows at every acquisition; time comes from an injectable
//     clock and clocks are assumed to differ by at most MaxSkew;
//     ErrLeaseHeld, ErrNotHolder.
//   - Queue (queue.go): a bounded multi-producer circular queue on one
//     memnode whose items are named by position, for readers that track
//     positions; ErrFull, ErrTrimmed.
//
// Each documents its byte layout (little-endian uint64 words; all-zero
// memory is the initial state). Bad input fails with ErrInvalid and changes
// nothing. When a minitransaction's outcome is unknown, Allocator and Lease
// read their own write back to find out; Queue returns the position tried
// and Queue.Enqueued answers whether the item landed there.
//
// # Watching memory
//
// Watch subscribes to address ranges of one memnode and reports, on a
// channel, writes applied to them, so that readers (gcs delivery, queues)
// need not poll:
//
//	w, err := c.Watch(ctx, mn, client.Range{Addr: tail, Len: 8})
//	defer w.Close()
//	read()                  // the state as of the subscription
//	for ev := range w.C() { // ev.Ranges, or ev.Reset: re-read everything
//		read()
//	}
//
// Events are hints: they may coalesce several writes (a consumer that
// falls behind gets one merged event, never blocks the stream), and may
// repeat a write; every write applied after Watch returns is reported at
// least once. A read issued after an event observes at least the state at
// its Index, because reads are linearizable. Only writes that applied are
// reported: an Exec whose compares matched, a two-phase minitransaction
// when its Commit applies at that memnode (a Prepare alone reports
// nothing). The memnode's leader serves the stream; when leadership moves
// or the stream breaks, the watch subscribes again at the new leader and
// then delivers an event with Reset set, since changes may have been
// missed in between.
//
// The events of Watch carry no data. WatchWith with
// WatchOptions{Data: true} asks for the written bytes: an event's Data[i]
// is then the content of
// Ranges[i] as of Index (committed: the leader reports after applying),
// and WatchEvent.Bytes returns a sub-range. Coalescing, at the server and
// in the client, keeps the latest bytes, and every write since the
// previous event is in the event, so a consumer that applies each event's
// Data in order (after a read following the last Reset) tracks the
// watched memory exactly, without reading:
//
//	w, err := c.WatchWith(ctx, mn, client.WatchOptions{Data: true}, rng)
//	state := read()
//	for ev := range w.C() {
//		if ev.Data == nil { // Reset, or the data was dropped: a hint
//			state = read()
//			continue
//		}
//		for i, r := range ev.Ranges {
//			copy(state[r.Addr-rng.Addr:], ev.Data[i])
//		}
//	}
//
// An event comes without data (Data nil) when it is a Reset, when the
// server predates the option, or when more bytes were pending than the
// server (256 KiB per watch) or the client (1 MiB) keeps for a slow
// consumer: memory stays bounded, and the consumer falls back to reading.
// The data is copied from the memnode's memory on the apply path only for
// subscribers that asked for it.
//
// # Threading
//
// A Client is safe for concurrent use. A Tx is not; build one per goroutine.
// Close waits for background Commit/Abort messages and closes open watches.
//
// This package must not import memnode, replication or the server: it speaks
// only the api/tuttipb wire protocol, like clients in other languages.
package client
