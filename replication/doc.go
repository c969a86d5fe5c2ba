// Package replication runs many Raft groups in one process: a multi-Raft
// Host over go.etcd.io/raft/v3 RawNodes, one Pebble log engine, and a
// pluggable Transport (gRPC in production, FaultNetwork in tests).
//
// # What it owns, what it must not know
//
// The package owns the Raft groups (one RawNode per group replica, host ids
// are replica ids), their durable log, hard state and snapshots in one Pebble
// database per Host, log compaction, the transport of Raft messages, client
// proposals with results returned through futures, linearizable reads
// (ReadIndex), and replica membership changes (ConfChangeV2). It replicates
// any StateMachine and knows nothing of Sinfonia, memnodes or minitransactions:
// commands and queries are opaque bytes.
//
// # Threading
//
// Groups are assigned round-robin to Config.Workers worker goroutines (not one
// goroutine per group). A group's RawNode, MemoryStorage and StateMachine are
// touched only by its worker, so the StateMachine is never called
// concurrently: Apply, Query, Snapshot and Restore all run on that worker.
// Other goroutines (callers, the transport) only append to a group's inbox
// under a small mutex and wake the worker. Leader, Groups, Status and Stats
// are safe from any goroutine.
//
// Callbacks (ProposeAsync's and ReadAsync's done) are called exactly once,
// from a host goroutine, never while a lock is held and never on the caller's
// goroutine before the Async call returns. They must not block: they run on
// the worker that drives the group and all its other groups. The same holds
// for StateMachine methods: a slow Apply slows every group of the worker.
// Neither may call Host.Close (it waits for the workers).
//
// # One worker cycle
//
//  1. Wait for work: incoming messages, proposals, reads, reports, or a tick
//     from the Host's single ticker (every Config.TickInterval).
//  2. Step: step messages and reports into the RawNodes; frame all proposals
//     queued for a group into ONE raft entry (bounded by MaxProposalBytes:
//     proposer host id and incarnation, then per command an id, a length and
//     the data); issue ONE ReadIndex for all reads queued for a group; Tick.
//  3. Ready: collect the Ready of every group of the worker that has one.
//     Apply (as in 6) at once the Readies whose committed entries this
//     replica already holds durably and that bring no snapshot: always a
//     leader's, since raft counts the leader's own vote for an entry only
//     after the cycle that persisted it. Committed means durable on a
//     majority, so, as etcd does, the answer need not wait for this
//     cycle's fsync of newer entries; it used to, whenever proposals had
//     arrived meanwhile. Measured with `tutti bench mcast --rates 100`
//     (alternated runs, 2026-12-02), the gain is within this machine's
//     noise: gcs's p50 2.08, 2.19, 1.97 → 1.88, 1.84, 1.80 ms in one set
//     of pairs, 1.97, 1.98, 2.01 → 1.97, 1.97, 1.85 ms in another, and
//     no difference while the machine was busy (2.3–3.6 ms either way).
//  4. Persist: write all their snapshots, entries and hard states into ONE
//     Pebble batch and commit it with ONE fsync (none if no Ready needs it,
//     or if Config.NoSync); the data of large entries goes first to the
//     worker's segment file in ONE record, and then the record's fdatasync
//     is the cycle's fsync (see "Entry bytes in segment files"). Messages that do not acknowledge anything (the
//     leader's MsgApp, heartbeats, vote requests, MsgSnap) are sent BEFORE
//     the fsync, so the leader replicates while it syncs; MsgAppResp,
//     MsgVoteResp and MsgPreVoteResp only AFTER it, because they promise
//     that entries or a vote are durable.
//  5. Update the in-memory log cache (raft.MemoryStorage), send the
//     acknowledgements.
//  6. Apply the other Readies: restore an incoming snapshot, then call StateMachine.Apply once
//     per Ready with the commands of all its committed entries; complete
//     this host's futures by proposal id; serve reads whose ReadIndex has
//     been applied (StateMachine.Query); trim the cache's applied entries
//     to Config.LogCacheBytes.
//  7. Advance each RawNode; take a snapshot and compact the log when
//     Config.SnapshotEntries entries or Config.SnapshotBytes bytes were
//     applied since the last one (see below).
//
// # Durability
//
// With NoSync false, a proposal is acknowledged only after its entry was
// committed by raft, which needs it fsynced on a majority of replicas, and
// applied here. A Host restarted on the same DataDir recovers every group it
// had (StoredGroups, then StartGroup): the latest snapshot is restored into
// the StateMachine and the committed entries after it are applied again, so
// state machines may be purely in memory. Raft's Ready contract is followed
// exactly, so an acknowledged proposal survives any minority of crashed or
// restarted replicas. A failure to write the log engine panics: after it the
// host can no longer keep raft's promises.
//
// # Outcomes
//
// Only the leader accepts proposals, reads and membership changes. A
// follower answers *NotLeaderError with its believed leader as a hint
// instead of forwarding: forwarding would add a hop and a second queue to
// every request, hide leader changes from clients, and make the outcome of a
// forwarded proposal ambiguous when the leader changes in between; clients
// (the memnode client) cache the leader and follow the hint.
//
// A proposal handed to raft whose leader then loses its term, or whose host
// closes before it applies, completes with ErrUnknownOutcome: it may or may
// not commit later. Requests refused before reaching raft complete with
// *NotLeaderError, ErrDropped or ErrStopped and were not proposed.
//
// # Snapshots and membership
//
// Snapshots are taken on the worker after SnapshotEntries applied entries,
// after SnapshotBytes of applied entries (or twice the last snapshot's size,
// whichever is larger, so a large state machine is not copied more often
// than its log grows by twice its size), and after every applied
// configuration change (so a replica being added receives a snapshot naming
// it). A snapshot that fails (the state machine's, or writing its file) is
// tried again a second later with its triggers kept: a replica being added
// cannot restore the older snapshot, whose configuration does not name it,
// and would wait for the next one otherwise. The log is compacted up to a
// margin of min(1000, SnapshotEntries/2) entries and SnapshotBytes/4 bytes
// behind the snapshot so slightly slow followers catch up from the log;
// others receive the snapshot (MsgSnap), which the transport reports back
// through Handler.ReportSnapshot.
// A snapshot's data is written to its file (synced) and not kept in
// memory: it is the whole state machine, which a replica would otherwise
// hold twice, and the state machine may reuse its buffer for the next one
// (StateMachine.Snapshot). raft asks for it (Storage.Snapshot) only to send
// it to a follower behind the log; the log store then reads the engine's
// latest snapshot back from its file, checksum verified, on a goroutine of
// its own, and tells raft to try later (it asks again at the follower's
// next heartbeat response) until the read is done or if it failed. The
// data is kept for further sends of the same snapshot (other followers,
// failed sends) until none asked for 10 s. Before (until 2026-12-03) the
// read ran inside raft's call, on the worker, whose every group waited
// for it, and was repeated for every follower and every failed send
// (TestSnapshotReadBackOffTheWorker: with the read held, the group used
// to stop committing; two followers behind now cost one read).
// A snapshot of 4 MiB or more is written to its file by a goroutine of its
// own: only the state machine's copy (Snapshot) is made on the worker, and
// the worker installs the snapshot (an engine batch of its own, synced)
// and compacts the log behind it once the file is written, the entries
// applied meanwhile counting towards the next one; none other starts
// meanwhile, and one older than a snapshot restored meanwhile is dropped.
// Written on the worker, a 256 MiB snapshot held every group of that
// worker for its write and fsync: a proposal to another group waited up to
// 3.3 s (24 ms with 1 MiB; TestLargeSnapshotWrittenOffTheWorker keeps a
// write held and both groups committing). The snapshot a configuration
// change forces is still written on the worker: a replica being added
// waits for it. RemoveGroup and Host.Close wait for a write in flight.
// ChangeReplicas proposes one ConfChangeV2 (joint consensus with automatic
// leave when more than one voter changes). A new replica is started with
// StartGroup(group, nil, sm) and waits, empty, for the leader's snapshot.
// A replica's Raft id is its host's, so a replica moved off a host and back
// is the same voter to the others: RemoveGroup keeps the removed replica's
// term and vote (a tombstone key) and a replica started again on that host
// begins from them, so it never votes twice in one term (with no hard
// state it would grant a delayed vote request of a term its predecessor
// voted in, and a term could get two leaders).
//
// A host that lost its log engine has no tombstone: its replicas must be
// removed from their groups and added back, which memnode/service does
// (its doc.go, "Lost state"); raft accepts a removed id again, with a
// fresh progress record. Two messages are dropped before raft sees them,
// since only a former incarnation of the replica could act on them: a
// heartbeat whose commit index is beyond the log the engine holds (the
// leader sends at most what the replica acknowledged, so it was queued for
// the replica that acknowledged it before its log was lost, and raft would
// panic on it), and a vote or pre-vote request to a replica whose log is
// empty (one waiting for its first snapshot, which no configuration can
// count as a voter unless it is one that forgot its log and votes).
//
// # Memory
//
// Raft's Storage is the log engine with an in-memory cache in front
// (logstore.go): a raft.MemoryStorage holding the hard state, the latest
// snapshot and the newest entries, of which the applied ones are trimmed to
// LogCacheBytes. Entries that left the cache are read back from Pebble
// (Stats.LogReads), which only a follower lagging by more than the cache
// needs. Before, the MemoryStorage held every entry back to the last
// compaction: with gcs's 512 KiB batches that was up to 10,000 entries
// (5 GiB) per group, and the embedded cluster's heap grew by ~75 MB/s under
// gcs saturation until it would run out of memory. Bounding the log by
// snapshots alone (every 64 MiB) held memory but cut gcs saturation
// throughput from ~20k to ~12k messages/s per member on this machine (each
// snapshot copies and writes the whole memnode); the cache bounds memory
// without more snapshots and raised it from ~23k to ~31k (alternated
// runs; fresh heap pages cost page faults, which are expensive on the VM
// measured). Local snapshots are kept by the logStore rather than through
// MemoryStorage.CreateSnapshot, which cloned the data. With memory no
// longer tied to the log, SnapshotEntries went from 10,000 to 100,000: each snapshot
// copies and writes the whole state machine, and a gcs memnode's (~18 MiB)
// was taken every 2–3 s per group at saturation.
//
// A snapshot's data goes to a file of its own in snap/ beside the engine
// (written through a buffer, synced, renamed, directory synced), and Pebble
// holds only its metadata, the file's name and a CRC-32C of the data,
// which recovery checks; the previous file is removed once the batch
// naming the new one is synced, and files no batch names are removed when
// the group is opened (those of a removed group when the host opens).
// Before, the data went through Pebble's WAL and
// memtable and was then flushed and compacted: with SnapshotBytes at
// 64 MiB gcs saturation fell from ~31k to ~16–19k messages/s per member,
// and with the files it stays at ~30k (alternated 8 s runs); a 40 s
// saturation run, which includes the default 256 MiB snapshots, gave
// 34.8k with the files against 26.9k before.
//
// Data directories from before the files load as they are (their snapshots
// stay inline until the next one); a directory written with the files
// cannot be read by an older binary, which would find no snapshot data.
//
// # Transport encoding
//
// Between hosts Raft messages travel in RaftBatch frames, each message as the
// bytes of its encoding. Hosts send and decode the wire-identical
// RaftBatchMessages, which embeds the messages, so a message's entries are
// copied once into the frame and once out of it (before: encoded into bytes,
// the bytes copied into the frame, copied out of it, then decoded). Hosts of
// either kind interoperate (TestRaftBatchMessagesIsRaftBatchOnTheWire). A
// frame holding an undecodable message is now refused by gRPC (Internal,
// "failed to unmarshal") rather than by the transport (InvalidArgument).
// Alternated 8 s runs of `tutti bench mcast --rates max`: 52.3k, 55.6k,
// 56.4k delivered/s per member before, 56.3k, 59.7k, 60.3k after (CPU per
// delivered message 34.5, 32.2, 32.4 against 32.7, 30.3, 29.8 µs).
//
// Streams between hosts, and those of clients to hosts (client.WindowSize,
// memnode/service's server), have fixed HTTP/2 windows (1 MiB per
// stream, 4 MiB per connection). With gRPC's default the windows adapt by
// bandwidth-delay estimation, which pings the peer (and is acked) for
// nearly every burst of small frames, and 64 KiB windows are updated
// often. Counted from /proc/PID/io of the embedded cluster during `tutti
// bench mcast --rates 100`: 18.1k read and 10.7k write system calls a
// second before, 7.4–8.7k and 5.1–5.5k after. Alternated 5 s runs: at
// 100/s per member the cluster's CPU 0.85–0.91 → 0.75–0.80 cores and
// the members' 0.49–0.54 → 0.42–0.46 (three pairs); at saturation 24.6k,
// 27.0k → 29.5k, 29.2k delivered/s per member; `bench mtx --workload
// base --outstanding 256` 33.5k, 37.4k, 47.9k → 39.3k, 42.2k, 48.9k.
//
// Decoding entries as slices of the received frame (measured, not kept):
// protobuf always copies a bytes field, and at saturation that copy of
// entries' data on followers was 6.6% of the embedded cluster's CPU
// profile. A hand-written decoder of RaftBatchMessages (falling back to
// protobuf for anything it did not know, checked against it on random and
// malformed input) gathered the frame into a buffer of its own and left
// large entries' data pointing into it. The copy's cost went, but the
// gather paid it instead: what is dear is writing into memory that was
// just allocated (fresh pages, cache misses), not the copy as such. The
// same bytes gathered into a reused pooled buffer cost about a sixth as
// much (0.24 s against 1.48 s of the profile). In the cluster's profile
// the decode's share fell and allocation's and clearing's rose
// (mallocgc 4.7% → 7.2%, memclr 2.3% → 7.4% with the frame's buffer
// taken from Pool; a buffer that is not cleared first, as bytes.Join
// makes, did no better); alternated
// saturation runs (`tutti bench mcast --rates max --warmup 25s
// --duration 10s`) gave 75.2k, 73.2k, 64.3k delivered/s per member
// against 72.2k, 66.8k, with the cluster at 10.5, 10.3, 12.7 against
// 10.4, 12.3 µs per message: no gain outside the noise. A decoder for the
// members' ResponseBatch likewise. What would gain is entries' data
// received into buffers that are reused once raft, the log cache and the
// apply are done with them, which needs each entry's lifetime tracked.
//
// A host takes Raft frames and snapshots only from its peers (the hosts
// given to SetPeer): a batch or snapshot whose sender is not one is refused
// (PermissionDenied) and nothing of it delivered, and GRPCConfig.
// UnknownPeer is told (memnode/service then reads the directory at once,
// so a host added at runtime is heard within a read rather than the next
// poll; until then its frames are refused). A host it cannot answer
// has no business in its groups, and a stale or misconfigured process
// claiming a host id it was never given is not heard. GRPCConfig.
// AuthorizePeer, asked once per stream and sender with the stream's
// context, can tie the stream's credentials to the host id it claims:
// tutti's daemon, with mutual TLS, requires a certificate usable by a
// server and valid for the name the claimed host is dialled by, so an
// application's certificate of the cluster's CA cannot speak Raft.
//
// # Engine settings
//
// Each entry is encoded straight into the engine batch (SetDeferred), so its
// data is copied once on its way to Pebble. L0 may hold more before it is
// compacted (L0CompactionThreshold 32 instead of 4, L0StopWritesThreshold
// 128 instead of 12, a 1 GiB base level instead of 64 MiB), so fewer of
// the log's flushed tables are compacted (read, rewritten, compressed)
// before a snapshot truncates the log. (This paragraph said the truncation
// then deleted them whole; it cannot: Pebble's delete-only compactions
// never drop tables of L0, where the tombstone is too. Since 2026-12-03
// truncated entries are excised instead: see "Truncated entries excised".)
// Alternated 8 s runs of `tutti bench mcast --rates max`: 51.4k, 51.8k,
// 56.2k delivered/s per member before, 65.5k, 61.3k, 61.3k after (the
// embedded cluster's CPU per message -10 to -20%); 40 s runs 55.1k before,
// 63.5k after; a 60 s run 65.6k with the data directories steady at
// 1.0-1.15 GB and 20-140 tables per engine. `tutti bench mtx` unchanged
// within its noise. The cost is read amplification for reads of old
// entries, which only a follower lagging beyond the log cache makes.
//
// Tried and dropped, with
// alternated 8 s runs of `tutti bench mcast --rates max`: tables without
// block compression (snappy was 7% of the cluster's CPU profile at
// saturation) lost throughput, 41.8k, 44.7k, 46.5k against 53.6k, 53.1k,
// 54.3k delivered/s per member, the larger tables costing more in writes
// than snappy did in CPU; a 256 MiB memtable with 64 MiB snapshots, so the
// log is truncated before it is flushed, saved the flushes but paid as much
// in snapshots (43.8k, 50.6k against 40.9k, 51.1k). With the L0 settings
// above, 20 s runs: no compression still lost (48.1k, 51.6k, 51.0k against
// 62.7k, 61.8k, 63.5k); a 128 MiB memtable (66.1k, 58.2k, 61.4k against
// 61.0k, 64.0k, 62.7k) and SnapshotBytes 512 MiB (62.6k, 68.7k, 70.8k
// against 60.5k, 71.1k, 69.6k) made no difference.
//
// Those runs multicast zero-filled payloads, which block compression
// shrinks to almost nothing in the flushed tables. With incompressible
// payloads (bench mcast's default since 2026-12-01; 0.69–0.81 of the
// zero-payload throughput) flushes are the largest item of the cluster's
// CPU profile at saturation: 29%, of which 17% the write syscalls of the
// new table files (the WAL's writes to recycled files, the same bytes,
// 7%) and snappy 4%. Again with such payloads, 30–40 s runs: tables
// without compression 49.5k, 52.1k, 54.2k, 51.9k against snappy's 42.3k,
// 49.7k, 49.4k, 50.3k (alternated pairs, +3 to +17%), but 48.2k against
// 58.3k with zeros; an adaptive profile (snappy only where a sampled block
// shrinks by a quarter) 48.7k and 52.7k, between the two; a 256 MiB
// memtable with 64 MiB snapshots 44.3k against 42.3k (one pair). Kept:
// snappy, which loses a little on incompressible data and gains a lot on
// compressible data. Avoiding the flushes (the log truncated before its
// memtable is flushed) needs snapshots as often as the memtable fills,
// and a gcs memnode's snapshot is about as large as the log written
// between two of them (its queues are rings rewritten every second or
// so at saturation): it moves the bytes rather than removing them.
//
// # Tables written past the page cache
//
// Tables are written with O_DIRECT (directfs.go): the bytes gather in a
// reused, aligned 1 MiB buffer handed to the device whole; Sync writes the
// last partial block padded, cuts the file to the bytes written and
// fsyncs. The WAL, the manifest and every read stay buffered, and a file
// system that refuses O_DIRECT (tmpfs) gets buffered tables as before.
// Why: the guest VMs measured here return idle and free memory to their
// host (free page reporting, and a DAMON pageout scheme for pages idle
// over ~1.2 s), so a page-cache page filled for a new table was first
// faulted in by the host: writing 1 GiB with dd cost 4.4 s of system
// time buffered (0.3 s while the memory was still warm) against 0.25 s
// with O_DIRECT, and at multicast saturation the flushes' write calls
// were 30% of the embedded cluster's CPU (`perf`: copy_folio_from_iter_atomic
// the largest symbol). With O_DIRECT they are ~4% (the table writer's
// copies, snappy and CRCs remain). Alternated 40 s runs (one binary,
// `tutti bench mcast --rates max --warmup 30s --duration 10s`, three
// pairs, 2026-12-03): the cluster's CPU per delivered message 34.9, 31.8,
// 30.2 µs buffered against 31.3, 28.5, 25.8 µs direct (cluster 1.10–1.19
// cores against 1.00–1.03); delivered/s per member 34.0k, 35.1k, 36.5k
// against 31.8k, 35.0k, 39.8k, within this machine's noise. Tried first
// and dropped: keeping deleted tables as files to write new ones over (as
// Pebble recycles WAL files), so their pages stay allocated: 42.1k, 42.7k
// against 38.6k, 41.4k recycled (60 s runs), since idle pages are taken
// back anyway; and no table is deleted in a short run (the log is
// truncated only every SnapshotBytes).
// With writes this cheap, tables without compression were tried again
// (snappy's attempts on incompressible blocks were 4% of the cluster's
// CPU): 30 s runs with random payloads 44.0k, 37.7k, 39.8k delivered/s
// per member against snappy's 37.3k, 33.3k, 41.0k, but with zeros 39.8k
// against 50.9k. Snappy kept, as before.
//
// Snapshot files are written the same way (their temporary name ends in
// snapTmpSuffix; the engine's file system is the directFS): written once,
// read back only by a restart or a follower's catch-up, through the page
// cache their write calls were 4.1% of the embedded cluster's CPU at
// saturation (a memnode's snapshot is its whole address space, taken
// every SnapshotBytes of log or twice its own size).
//
// # Truncated entries excised
//
// A truncation (a range deletion, committed with the snapshot that allows
// it) hides entries at once, but their bytes stayed in the tables until a
// compaction read and rewrote them: every table flushed from the shared
// memtable holds entries of every group on the host, so no one group's
// truncation covers a table whole, and L0 grew past its compaction
// threshold within a snapshot period. At multicast saturation those
// compactions were 8% of the embedded cluster's CPU, and a host's engine
// held ~1.4-1.5 GB in ~500 tables. Now, once a truncation's batch is
// committed, the engine excises the truncated span (reclaim.go,
// pebble.DB.Excise): tables inside it are dropped from the LSM and tables
// across its edges become virtual tables over the same files, which go
// once no table uses them; nothing is read or rewritten but a few index
// blocks. What remains compacted are the small virtual remainders (a
// group's registry and hard state between its neighbours' entries). A
// snapshot restored from the leader, which replaces the whole log, has the
// replaced entries up to its index excised the same way. Only batches
// committed with fsync hand their truncations over (all of them but with
// Config.NoSync): an excise that does not queue behind the memtable is a
// manifest edit, durable at once, and a crash that lost the batch would
// then leave the log with a gap behind the older snapshot.
//
// The excise runs on a goroutine of its own once the memtable holding the
// truncation's range deletion has been flushed (the first flush that began
// after the commit has ended), or after at most 5 s (with few writes
// memtables rarely fill). The first version excised right after the
// commit, while the range deletion was still in the memtable: the excise
// then overlapped the memtable, and Pebble (from format
// FormatFlushableIngestExcises on) cut the memtable short to queue the
// excise behind it. That cost a fresh memtable per truncation, whose
// arena (64 MiB, calloc'd) is paged in on first touch, and a small table:
// at saturation the arenas' page faults were over half of the embedded
// cluster's (perf record -e page-faults). Deferred, an excise overlaps
// nothing: a manifest edit. Measured (2026-12-03, alternated 40 s runs,
// `tutti bench mcast --rates max --warmup 25s --duration 10s`, three
// pairs): 52.5k, 50.9k, 46.5k against 57.5k, 54.7k, 58.2k delivered/s
// per member, the cluster 19.7, 19.7, 21.1 against 17.1, 17.9, 17.2 µs of
// CPU per message, its page faults 8.5k, 11.2k, 6.7k/s against 2.8k,
// 5.0k, 2.1k/s. Should the flush not have held the memtable after all, or
// the deadline pass first, Pebble queues the excise behind the memtable
// as before; MemTableStopWritesThreshold is 4 (default 2) so that a
// memtable being flushed does not make such an excise wait for a flush
// while commits wait (with 2, a debug-only log of slow commits showed
// commits held up to 320 ms behind an excise, 107 ms at most without
// excises; with 4, 66 ms).
//
// The span holds only deleted entries (a replica never writes below its
// truncation again); RemoveGroup drops a removed replica's pending excises and waits
// for one in progress, since the host may hold the group again and the
// new replica writes low indices (TestReclaimForgetsRemovedGroup). Stores
// are upgraded to that format when opened; binaries built before this one
// (same Pebble) open them too. A failed excise is logged and counted
// (Stats.LogExciseErrors): the range deletion still holds, and a
// compaction drops the bytes as before.
//
// Measured (2026-12-03, one binary each, `tutti bench mcast --rates max
// --warmup 60s --duration 100s`, run one after the other): before,
// 51.4k delivered/s per member, the cluster 21.5 µs of CPU per message,
// data directories 4.2–4.6 GB over the three hosts in 1,500–1,700
// tables; with excises 58.9k, 17.7 µs, 2.4–3.0 GB in 330–650 tables
// (steady over the run). Alternated 40 s runs (`--warmup 30s --duration
// 10s`), before against after: 53.0k, 53.7k, 51.0k against 60.1k, 53.1k,
// 61.6k (cluster 20.6, 19.8, 20.7 against 18.2, 20.3, 17.4 µs per
// message); an earlier prototype, 55.6k, 56.6k, 53.8k against 63.6k,
// 58.8k, 59.6k. Low load unchanged (`--rates 100`: p50 1.14, 1.16 ms
// against 1.18, 1.17). Tried first and dropped: delete-only compactions
// that excise (Options.Experimental.EnableDeleteOnlyCompactionExcises,
// 56.9k, 56.2k, 58.2k against 60.2k, 58.0k, 57.6k): their hints never
// apply to L0, so they change nothing here.
//
// # Cycles and fsyncs (measured, not changed)
//
// At low concurrency fsyncs bound two-phase minitransactions, not CPU. With
// each memnode's leader on another host (bench mtx's default), every host
// holds a replica of both memnodes a cas2 minitransaction touches and syncs
// once for each of its two Prepares, which reach it at different times (as
// a leader of one, a follower of the other), and again for decisions that
// could not ride on a Prepare. bench mtx's fsyncs_per_op: cas2 at 4
// outstanding 3.9 fsyncs per minitransaction over the three hosts, ~1,750
// fsyncs/s per host (each about 0.45 ms of wall time, so each host's log
// was syncing ~80% of the time), p50 2.8 ms against base's 0.7 ms; with
// the leaders on one host (--leaders colocated) both Prepares share a
// cycle and p50 is 1.8 ms. Tried and dropped: applying the committed
// entries already in the log while the cycle's batch is synced (the commit
// on its own goroutine, the apply on the worker): cas2 and base unchanged
// at 4 to 2048 outstanding in two alternated runs, and bench mcast at
// 1,000/s per member worse (p50 15.6 and 17.9 ms against 13.0 and 12.3),
// the goroutine hand-off costing more than the overlap gained. One worker
// per host instead of GOMAXPROCS (so one host's groups share every cycle
// and fsync): cas2 with colocated leaders at 4 outstanding 1.0 ms against
// 1.8 ms, at 16 +60% throughput, but no change with spread leaders, none
// at saturation, and bench mcast inconclusive (1,000/s p50 9.5 and 9.7 ms
// against 17.3 and 12.1; saturation 56k and 58k against 67k and 56k); it
// would also serialize every group's apply on one core of a many-core host.
//
// # Entry bytes in segment files
//
// After the excise and buffer changes of 2026-12-03, Pebble's WAL,
// memtable and flushes were still about 35% of the embedded cluster's CPU
// at multicast saturation (WAL writes 13%, the memtable's copy 9%,
// flushes 12.5%): every byte of every entry went through all three on
// every host. A throwaway build that stored only the first 16 bytes of
// each entry's data (not durable) bounded what keeping entry bytes out of
// the LSM could save: 83.7k, 71.5k against 44.9k, 48.9k delivered/s per
// member, the cluster 10.0, 11.1 against 21.5, 19.3 µs of CPU per message.
//
// Since then (segment.go) an entry with more than 256 bytes of data keeps
// its data in a segment file (seg/ beside the engine); the engine keeps its
// term, type and a reference (segment, offset, length, CRC-32C). Each
// worker appends to a segment of its own (64 MiB, then the next). A worker
// cycle with such entries writes one record holding every entry of the
// cycle (small ones too) and every hard state, and fdatasyncs it; then it commits the engine batch, which also records how
// far the segment is applied, without an fsync of its own. A crash can
// lose engine batches whose records are durable, never the reverse: on
// open, each segment's records after its applied position are replayed
// into the engine as far as they are intact (checksums over the record,
// which include the segment id, and over each entry's data), and the
// engine is synced. A batch holding what a record cannot replay (a
// snapshot, a truncation, a group registered or removed) is still
// committed with its own fsync, after the record's. Still one fsync per
// cycle where it was one before.
//
// A segment goes once no writer appends to it and every group's entries in
// it are truncated (or the group removed): the engine is synced first (so
// no crash can bring back a reference into it), the file is renamed for
// reuse (up to 4 kept; rewriting allocated pages costs less than growing a
// new file) or removed, the directory synced, and only then its applied
// position deleted, so a file that comes back after a crash is never
// replayed from its start. A reused file's old records fail the checksum
// under the new segment id. Because the groups of a worker share its
// segments, one entry of a group that rarely snapshots would keep a whole
// segment alive: once the live segments hold more than 4 GiB, the groups
// keeping the oldest of them alive are asked for a snapshot that truncates
// their log through it (Stats.LogSegments, LogSegmentsRemoved).
//
// Tests: TestSegmentRecordReplayedAfterLostBatch (a record durable, its
// batch lost: entries, an overwritten suffix and the hard state come back
// from the replay, once), TestSegmentUnsyncedRecordLostWhole,
// TestSegmentsCollectedAndReused (fails without the segment id in the
// checksum: an old record lined up behind a new one in a reused file is
// replayed), TestSegmentForgetRemovedGroup, TestSlowGroupReleasesSegments
// (fails without the snapshot request), and TestCrashAllHostsKeepsAcknowledged
// runs a second time with every entry in 4 KiB segments (it fails when the
// replay is switched off).
//
// Figures (`tutti bench mcast --rates max --warmup 25s --duration 10s`,
// 1 KiB random payloads, main before against after, alternated on one
// VM): 53.2k, 50.9k against 67.1k, 66.9k delivered/s per member, the
// cluster 19.9, 19.8 against 12.8, 13.6 µs of CPU per message; an hour
// later, noisier (the members too took 1–2 µs more per message), 50.2k,
// 47.1k, 51.6k against 55.2k, 60.8k, 56.1k, the cluster 18.6–21.1
// against 14.8–16.4 µs. A 120 s run (`--warmup 60s --duration 60s`):
// 74.7k and 73.4k, the cluster 10.8–10.9 µs per message; each host's data
// directory 1.1–1.5 GB with 10–16 segments throughout (before: log
// engines of 2.4–3.2 GB). At 100/s p50 1.31 ms before, 1.20 ms after.
// Where the two measurements differ most, fresh segment files (no reused
// one free) fault their page-cache pages in from the host on this VM, as
// tables did before "Tables written past the page cache".
//
// Earlier builds cannot read a store in which large entries were written:
// a reference's engine value starts with a varint that overflows 64 bits,
// on which they stop with "corrupt entry" rather than apply the reference
// as data.
//
// On the OS's file system a segment is written with O_DIRECT (as tables
// are, "Tables written past the page cache"): a record is copied into the
// writer's aligned 1 MiB buffer, which starts with the bytes of the
// segment's last partial block, and written in whole blocks, the last
// padded with zeros and kept for the next record; reads stay buffered.
// Where O_DIRECT is refused (tmpfs) records are written with one pwritev.
// In the cluster's CPU profile at saturation the segment writes took 6.4 s
// of 25.8 s for about 4.8 GB with pwritev into the page cache (1.3 ns per
// byte) and 2.7 s of 22.4 s for about 6.3 GB with O_DIRECT (0.43 ns per
// byte: the copy 0.16, the write 0.16, fdatasync the rest). Four
// alternated pairs (same command as above), pwritev against O_DIRECT:
// 70.6k, 64.9k, 54.0k, 62.5k against 64.1k, 59.7k, 64.5k, 63.3k delivered/s
// per member, the cluster 12.1, 13.2, 16.2, 14.0 against 12.4, 13.3, 12.2,
// 12.1 µs of CPU per message: throughput unchanged within the noise, the
// cluster's CPU per message about a tenth lower, and no gigabytes of
// segment pages in the page cache. Not built: writing the record and
// committing the batch in parallel (the batch's commit, without fsync, is
// short).
package replication
