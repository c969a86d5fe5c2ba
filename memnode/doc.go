// Package memnode is the Sinfonia participant ("memory node") as a pure,
// deterministic state machine: Apply(entry) → Result. Each memnode is
// replicated by a Raft group; every replica applies the same entries in log
// order and ends in the same state, byte for byte.
//
// # What it owns
//
// One Memnode holds a participant's whole state:
//   - the address space: Config.Size bytes, sparse, in 4 KiB pages
//     allocated on first write; unwritten bytes read as zero; items may
//     span pages;
//   - locks: exclusive locks on the write items and shared locks on the
//     compare and read items (those not inside one of the transaction's own
//     writes: a compare-and-swap takes one lock) of every in-doubt
//     transaction. Locks are data, not mutexes, in a table indexed by
//     64-byte bucket for small locks and 4 KiB bucket for larger ones
//     (locks.go); none is held outside in-doubt transactions, and with none
//     held a lock check is O(1);
//   - in-doubt: tids that voted OK in Prepare and await Commit or Abort,
//     with their participants, write items and prepare time;
//   - forced-abort: tids aborted before they were prepared here, and
//     one-phase attempts fenced before they arrived;
//   - decided: outcomes of tids that were in doubt here. Forced-abort and
//     decided tids share one compact set (tidset.go): per client, blocks of
//     64 consecutive seqs with 2 bits each and the exact Time of each
//     recorded seq, since each client numbers its tids in increasing seqs;
//     recording and looking up a recent tid touches the last block or two
//     of its client. It behaves exactly as a map keyed by the whole TID.
//   - the clock: the largest Entry.Now applied, the only time it knows.
//
// # Protocol steps (Sinfonia Fig. 4, one participant's view)
//
//  1. Exec (one-phase, one participant): lock check, then compare, then
//     read, then write, in one step. Votes: BAD-FORCED if its tid is in
//     forced-abort or older than clock-Horizon (a fenced attempt, below;
//     an Exec with the zero TID is never refused so); else BAD-LOCK if an
//     item conflicts with a held lock; else BAD-CMP with the first failing
//     compare's index and the reads; else OK with the reads, taken before
//     the writes are applied. An Exec may fence earlier one-phase attempts
//     (Entry.Fences): before its own step, each fenced tid that is neither
//     in doubt, decided nor expired is added to forced-abort, so the
//     attempt, if it arrives later, changes nothing. That is how a client
//     settles an attempt whose answer was lost: a read in the same entry
//     as the fence shows the attempt if and only if it ever applies.
//  2. Prepare (phase one of two-phase commit) answers by the first rule that
//     applies: (a) tid in doubt (a duplicate delivery): OK again, with the
//     reads; (b) tid decided: its outcome (committed: OK, aborted:
//     BAD-FORCED), with Result.Outcome set and no reads; (c) tid older than
//     clock-Horizon: BAD-FORCED; (d) a lock conflicts: BAD-LOCK; (e) tid in
//     forced-abort: BAD-FORCED; (f) a compare fails: BAD-CMP; (g) OK: the
//     locks are taken, the tid becomes in doubt (keeping its writes,
//     participants and PreparedAt = clock) and the reads are returned. A vote
//     other than OK leaves no trace.
//  3. Commit: an in-doubt tid's writes are applied, its locks released, and
//     it is decided committed. Otherwise nothing changes and Outcome is
//     OutcomeExpired for a tid older than clock-Horizon, else the decided
//     outcome, else OutcomeUnknown.
//  4. Abort: an in-doubt tid's locks are released and it is decided aborted.
//     A decided tid keeps its outcome (an Abort never undoes a Commit; the
//     answer is the real outcome). An expired tid changes nothing and
//     answers OutcomeExpired. An unknown tid is added to forced-abort, so a
//     late Prepare is refused; Outcome is OutcomeAborted.
//  5. AbortUnlessVoted (recovery's phase one): an in-doubt tid votes OK and
//     stays in doubt; an expired tid changes nothing and answers
//     OutcomeExpired with no vote; a decided tid answers as in 2(b); an
//     unknown tid is added to forced-abort and votes BAD-FORCED.
//  6. Query (read-only, after a Raft ReadIndex; not a log entry): BAD-LOCK if
//     a compare or read range overlaps an exclusive lock; else BAD-CMP with
//     the reads; else OK with the reads. It changes nothing.
//  7. Inspections (read-only like Query; query.go): InspectInDoubt lists the
//     in-doubt transactions (for recovery), InspectStats returns Stats.
//     Answer dispatches any encoded query.
//
// A Commit or Abort entry may carry more tids (Entry.More): they are decided
// the same way, in order, in the same step, and the Result is the first
// tid's. An entry of any kind may carry decisions of other tids
// (Entry.Commits, Entry.Aborts): they are applied first, commits then
// aborts, in the same step, and the Result is the entry's own step's.
// Coordinators let their decisions ride on requests they send anyway so; the
// state equals applying the carried decisions as entries of their own just
// before the entry. An invalid entry applies none of them.
//
// Exec ignores TID and Participants; only Prepare keeps Participants, the
// memnodes recovery will ask and send the decision to: a non-empty list
// without repeats, which must name the memnode itself (a Memnode does not
// know its id: memnode/service checks that before proposing).
// Commit, Abort and AbortUnlessVoted are idempotent. Lock conflicts: a
// shared request conflicts with an overlapping exclusive lock; an exclusive
// request with any overlapping lock; a transaction's own items never
// conflict with each other.
//
// # Append
//
// Why: gcs links a batch into a group's order log with a one-memnode
// minitransaction. As a compare of the log's tail word and a write at that
// tail, members linking at once race: measured by the lead, 54–62% of links
// lost at only 100 msgs/s per member, each loss costing a Raft entry and a
// round trip, and p50 latency was 9–14 ms instead of about 1 ms. The home
// memnode's Raft log already orders every link, so an Append item takes the
// position at apply time: no compare, no lost race.
//
// An Append (Exec only; Op.Appends) names a ring of Size bytes (a power of
// two) at Ring, where position p lives at Ring + p mod Size, and u64
// little-endian counters in the address space: t at Tail (bytes ever
// appended), h at Head (positions below h are free) and, unless Count is
// 0, c at Count. An Exec with appends applies in one step:
//
//  1. Validation (ValidateOp; ErrInvalid, nothing applied): only Exec
//     carries appends and relocs; Size a power of two, the ring within the
//     address space, Limit <= Size, 1..min(Size, MaxItemBytes) bytes of
//     Data, Add == 0 without a Count; the counter words within the address
//     space, any two of them (over all appends) the same word or disjoint,
//     an append's Tail, Head and Count three different words, none inside
//     any append's ring or overlapping any write item; appends count
//     towards MaxItems, relocs (at most MaxItems) must name existing items
//     and an 8-byte window inside the target's data.
//  2. Placement: each append in order reads t, h and c as the appends
//     before it in the Op left them (appends on the same counters chain).
//     It is refused unless t+len(Data) does not overflow 64 bits and
//     t+len(Data)-h <= Limit as a signed difference (a head written past
//     t+len(Data) passes).
//  3. Lock check as for any Exec, plus the Tail and Count words and the ring
//     range(s) each append would write (exclusive) and the Head word
//     (shared): a conflict with an in-doubt transaction votes BAD-LOCK.
//  4. Compares; then, if an append was refused, BAD-CMP with FailedCompare
//     = len(Compares) + the first refused append's index, and the reads.
//     Nothing is written.
//  5. Otherwise OK: the reads are taken before any write; relocs patch
//     copies of their targets' data (Reloc: [Off, Off+8) += the source
//     append's old t or old c, mod 2^64; the entry is never changed); the
//     write items are applied; then each append writes Data at position t
//     (two pieces when it wraps at the ring's end) and sets t = t+len(Data)
//     and c = c+Add (mod 2^64). Result.Appended[i] = {old t, old c}.
//
// Everything comes from the entry and the state, so replicas apply appends
// identically, and the counters are ordinary memory (snapshots carry them).
// A query never carries appends. An append is not idempotent: a caller
// whose answer was lost settles it with a fence (Entry.Fences) and a read
// of the counters.
//
// # Time and garbage collection
//
// The clock is max(Entry.Now) over applied entries, so it never runs
// backwards even when leaders' clocks disagree. A tid is expired once
// TID.Time < clock-Horizon: Prepare refuses it, and its forced-abort and
// decided entries are treated as absent and dropped by a sweep that runs
// whenever the clock has advanced Horizon/8 since the last one (so results
// never depend on when the sweep ran). Prepare, Abort and AbortUnlessVoted
// of a tid dated more than Horizon after the clock are invalid, so every
// recorded tid expires. In-doubt transactions are never collected; recovery
// resolves them (InDoubt lists them). Memory is thus bounded by the address
// space written, the in-doubt transactions, and the tids decided or
// force-aborted within about two horizons. A coordinator must finish a
// transaction within the horizon: after it, a duplicate Prepare of a
// committed tid is refused.
//
// Forgetting is why an expired tid that is not in doubt answers
// OutcomeExpired to Commit, Abort and AbortUnlessVoted rather than a vote
// or an outcome: this memnode may have voted OK and committed it, or been
// fenced, and no longer knows which. Answering BAD-FORCED ("I did not vote
// and never will") would let recovery abort, at a participant that still
// holds the tid in doubt, a tid committed here: a divergent outcome.
// Recovery (client.Recover) therefore refuses to decide a tid that some
// participant has forgotten unless another participant's answer settles
// it, and the tid stays in doubt, its locks held, until an operator
// decides it. Recovery of an in-doubt tid must happen within the horizon
// of its TID.Time; past it, the tid may stay in doubt for good.
//
// # Invariants
//
//   - An invalid entry (bad kind, items on Commit/Abort/AbortUnlessVoted, too
//     many items, an empty, oversized or out-of-range item, a tid from too
//     far in the future, a Prepare with no participants or one named twice:
//     CheckParticipants) changes nothing, not even the clock, and returns
//     Result{Err: wraps ErrInvalid, FailedCompare: -1}. Apply and the
//     decoders never panic on any input.
//   - Time comes only from entries; state depends only on the sequence of
//     entries applied (and the Config, which replicas must share).
//   - Snapshots are deterministic: equal states give equal bytes, so
//     replicas can be compared byte for byte; Restore(Snapshot()) gives an
//     equal state. A Restore that fails leaves the state unchanged.
//   - Results never alias the Memnode's memory; Apply and Restore keep no
//     reference to their arguments.
//
// # Formats
//
// Entries (the Raft log), queries and results are hand-rolled binary with a
// leading version byte (1; results: 2 with Result.Appended; entries: 2
// with Entry.More, 3 with carried decisions, 4 with fences, 5 with appends
// and relocs, each used only when needed, so older logs still decode; an
// entry of a version a binary does not know fails with ErrVersion, and
// memnode/service then stops the host rather than let its replica differ
// from upgraded ones: upgrade every host before clients send what needs a
// new version) and
// uvarints (inspection queries and answers lead
// with tag 2 instead); decoders accept only canonical
// bytes and bound every allocation by the input's length (encoding.go).
// Decoded values alias the input. Snapshots are "tMNs", version 1, the
// state with sorted keys, and a CRC-32C trailer (snapshot.go). Kind, Vote,
// Outcome values and these formats are append-only; a new layout gets a new
// version.
//
// # Cost of applying
//
// Every replica applies every entry, so apply cost is paid three times per
// request. BenchmarkApplyTwoPhase (decode a Prepare of two
// compare-and-swaps carrying an earlier tid's commit, apply it, encode the
// result) with 512 tids in doubt meanwhile, as under the cas2 benchmark's
// load, went from about 2,000 ns and 9 allocations to about 1,300 ns and
// 1 allocation (alternating runs of both test binaries in one session:
// 2066/1374, 2071/1418, 1844/1250 ns; with one tid in doubt 1,450–1,880
// → 860–1,010 ns), from three changes: word-sized locks live in 64-byte
// buckets (4 KiB buckets held tens of locks each under load, and every
// check, acquire and release scanned them), a compare inside the same
// transaction's write takes no lock of its own, and an in-doubt
// transaction is one allocation; DecodeEntryReuse decodes into a reused
// Entry. Then resolved transactions' objects were reused for the next
// Prepare (a free list of at most 1024): 1,234–1,252 → 814–962 ns with
// 512 in doubt, 857–875 → 608–680 ns with one, 1 → 0 allocations. In the
// cas2 benchmark the Prepare and Commit applies still cost about ten times
// the base workload's Exec per minitransaction (six applies of each on two
// memnodes' three replicas against three Execs), mostly the lock table:
// checking, acquiring and releasing a word's lock are three map lookups.
// BenchmarkApplyExec (six writes, one-phase) is about 70 ns.
// BenchmarkApplyAppend (one 64-byte append with a count and a reloc of its
// position into its data) was 460–630 ns and 3 allocations (the result's
// Appended, the relocated copies) against ApplyExec's 85–140 ns in the
// same runs on a shared 2-core machine (2026-12-02): far below the Raft
// entry and round trip a lost compare-and-write race costs.
//
// BenchmarkApplyInterleaved measures it per minitransaction with the six
// replicas' states interleaved as in the embedded cluster: base (three
// Execs) 1.9–2.2 µs, cas2 (six Prepares carrying commits) 7.5–9 µs with
// one outstanding and 10–12.5 µs with 256; cas2 needs to be under twice
// base for a cas2/base throughput of 0.5 from this layer. With everything
// warm the largest single cost is the compares' loads of the memory words
// (a write is a store and does not wait for its cache line, a compare
// does), then decoding, then the lock table and the tid maps. Tried and
// left, inside the ±10% between runs: a one-word index of in-doubt tids
// (fast-path map instead of a 24-byte struct key) and a one-byte varint
// fast path in the decoder.
//
// Under the cas2 load those lookups are all cold: thousands of tids are in
// doubt at each of the six replicas, and a tid's Commit comes thousands of
// entries after its Prepare. Two tables of the package's own replaced Go
// maps (2026-12-02): the fine lock index (locks.go, fineTable) and the
// in-doubt tids (txntable.go) are open-addressing tables whose slots hold
// key and value together (40 and 32 bytes), so a lookup reads one cache
// line where a Go map read a control word and a slot in two, and the
// insert or delete that follows finds the line in cache. A Prepare checks
// and takes its locks in one pass (tryAcquire) instead of a check and then
// an acquire, and a recycled transaction clears only its pointer fields.
// BenchmarkApplyInterleaved, three alternated runs of the test binaries
// before and after: cas2 with 256 outstanding 17.2, 14.4, 15.9 → 7.6,
// 11.9, 8.4 µs per minitransaction, with one 10.7, 10.9, 9.6 → 6.5, 8.8,
// 7.1 µs, base unchanged (2.3–3.2 µs); BenchmarkApplyTwoPhase with 512 in
// doubt 2.5, 2.0, 2.4 → 1.5, 1.6, 1.4 µs. In profiles of `tutti bench mtx
// --workload cas2 --memnodes 2 --outstanding 2048` Memnode.Apply went from
// 17.2 to 12.9 µs per minitransaction (Prepare 6.9 → 5.1, Commit 9.4 →
// 7.4), and with the client's allocations cut (client doc.go, "Transport")
// cas2's whole CPU per minitransaction from a median of 71.4 to 61.3 µs
// (five alternated pairs; base 34.5 → 33.0): cas2/base 0.51 → 0.58 in
// those pairs. `--workload base,cas2 --rounds 3 --outstanding 256,2048`,
// twice for each binary, alternated: medians 0.55, 0.53 (256) and 0.51,
// 0.50 (2048) before; 0.54, 0.61 (256) and 0.54, 0.53 (2048) after, CPU
// per op cas2 over base 2.0–2.1 → 1.8–1.9 at 2048 with outliers. The
// replicas' apply is still nearly all of what cas2 costs above twice base
// (12.9 µs against base's 1.7 per minitransaction).
//
// What would take most of the rest: evaluating a Prepare once, at the
// leader, and replicating its outcome, so followers only record the
// in-doubt writes and later apply them (no lock checks, compares or lock
// table). That needs the leader to evaluate against its applied state plus
// every entry it has proposed and not yet applied (as CockroachDB
// evaluates before replicating), a change of the replication contract; not
// started. Followers cannot simply skip the evaluation and learn the
// outcome from the decision: a new leader must know every undecided
// Prepare's vote, and re-evaluating an old Prepare against newer memory
// could turn a BAD-CMP into an OK that recovery would then commit.
//
// Before these tables (2026-11-30 to 12-02): profiles put the apply at 0.7
// µs per base minitransaction and 8–12 µs per cas2 one, all but about 1 µs
// of cas2's cost above twice base's; the ratio's medians were 0.48–0.52
// at 256 outstanding and 0.46–0.48 at 2048.
//
// # What it must not do
//
// No I/O, no goroutines, no clocks, no randomness, no locks (a Memnode is
// used from one goroutine at a time), and no knowledge of Raft or of the
// network: memnode/service turns requests into entries, replicates them and
// runs recovery.
package memnode
