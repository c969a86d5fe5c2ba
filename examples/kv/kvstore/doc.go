// Package kvstore is the replicated key-value state machine of the kv
// example: a Store (the state), the Commands that change it, and a Replica
// that keeps a Store identical at every member of a gcs group.
//
// # Protocol
//
//  1. A client calls Replica.Do(cmd): the command is encoded with a
//     per-replica request number and multicast to the group.
//  2. Every replica receives the same commands in the same total order
//     (Group.Events) and submits each to a gcs.Parallel scheduler whose
//     conflict keys are the command's keys: commands on disjoint keys apply
//     on several workers, commands sharing a key apply in total order. MSET
//     carries all its keys (multi-key); CLEAR carries none, so it runs as a
//     barrier. Store.Apply touches only the command's keys, and its result
//     (an INCR of a non-integer fails) depends only on them, so every
//     replica ends in the state of the sequential application.
//  3. The replica that sent a command hands the result to the waiting Do
//     once it applied it: a Do that returned is visible to Get on that
//     replica (read-your-writes; other replicas catch up in order).
//  4. State transfer: the oldest member's Snapshot waits for the scheduler
//     (Parallel.Wait) and encodes the applied position and the sorted map at
//     the view that admits the joiner; the joiner's Restore loads it before
//     its first event. A joiner that gets no state although others are in
//     its view leaves with ErrNoState.
//  5. State takes a consistent cut with a local read-only barrier: the
//     digest is the state after exactly the commands up to State.Pos, so
//     replicas at equal Pos must have equal digests.
//
// # Threading
//
// Replica and Store are safe for concurrent use. Apply runs on the
// scheduler's workers, never for two commands that share a key at once.
//
// This package uses only public tutti packages (gcs).
package kvstore
