// Package membership detects process failures with gossip (memberlist) and
// keeps the authoritative process table in memnodes.
//
// memberlist only suspects; the table decides. Every change of the table is
// one minitransaction that compares the table's version, so two observers
// can never install different decisions, and every observer sees the same
// sequence of versions.
//
// # What it owns
//
//   - One memberlist node per process life, named by the process id, "/"
//     and a nonce drawn at Start, whose metadata carries the id, the
//     incarnation (marked tentative until registered) and the gRPC and
//     gossip addresses (see Meta; version byte 1).
//   - The process table: a region of one memnode (TableConfig; DefaultTable
//     is memnode 0 at 0x7000_0000, to be aligned with the directory layout).
//   - Incarnations: a process that starts, restarts or rejoins takes the
//     table's largest incarnation + 1. Incarnations are unique across the
//     table and only grow, so (id, incarnation) names one life of a process
//     and an old incarnation can never come back: its row is replaced, and
//     every change compares the row it replaces.
//
// # Usage
//
//	n, err := membership.Start(ctx, membership.Config{
//		ID: "host-a", Client: cl, Bind: "0.0.0.0:7946", GRPCAddr: "10.0.0.1:7400",
//		Seeds: []string{"10.0.0.2:7946"}, Key: key,
//	})
//	changes, cancel := n.Subscribe() // confirmed changes, in version order
//	t, err := n.Table(ctx)          // linearizable read of the table
//	k, err := n.Join(seeds)         // more seeds after Start: a process that had to
//	                                // start gossip alone joins its peers once up
//	err = n.Leave(ctx)              // graceful: Left in the table, then gossip leave
//	n.Close()                       // abrupt: the others declare this process dead
//
// # Table layout (format 1, little-endian)
//
//	Base+0     header, 32 bytes (64 reserved):
//	             magic "tuttiPT\0" | format u16 (1) | flags u16 (0) |
//	             maxRows u16 | logSize u16 | version u64 | maxIncarnation u64
//	Base+64    rows[maxRows], 256 bytes each:
//	             state u8 (0 empty, 1 alive, 2 suspect, 3 dead, 4 left) |
//	             idLen u8 | grpcLen u8 | gossipLen u8 | reserved u32 |
//	             incarnation u64 | since i64 (Unix ns) | by u64 (writer's incarnation) |
//	             id [64] | grpc addr [80] | gossip addr [80]
//	then       log[logSize], 272 bytes each: version u64 | slot u32 | reserved u32 | row [256]
//
// Unwritten memory reads as zeros, so a fresh region is the empty table at
// version 0 (its header compares as 32 zero bytes). The format number is
// checked on every read; a different maxRows or logSize is refused
// (ErrLayoutMismatch). Only append new states; new fields go in reserved
// bytes or a new format.
//
// Every change replaces exactly one row and is one minitransaction on the
// table's memnode:
//
//	compare header == the header the decision was made from (version v)
//	compare row[slot] == the row it replaces
//	write   header (version v+1, maxIncarnation)
//	write   row[slot]
//	write   log[(v+1) mod logSize] = (v+1, slot, row)
//
// Observers watch the header (client.Watch: the table memnode notifies
// every write at once) and read it on every notification, on every
// memberlist event and, as a backup, every 4 × Timing.PollInterval (every
// PollInterval when the cluster serves no watch stream: one read a
// second per process instead of four; measured in the Timing paragraph
// below); when the version moved they read the log entries in
// between in one minitransaction and apply them in order, so Subscribe
// delivers every version exactly once and in order. An observer more than
// logSize versions behind re-reads all rows and reports differences as
// Resync changes. An ErrUnknownOutcome is resolved by reading back the log
// entry the change would have written, with a logged read that fences the
// attempt (client.Client.Settle: a plain read can precede an attempt the
// leader appended and not yet committed, an unfenced logged one an attempt
// still on its way to the leader; a fence on another memnode than the
// attempt's settles nothing, and Settle refuses it). A rejoin that cannot be settled is adopted once the table
// shows it, so the process does not take its own new row for a newer copy.
//
// # The protocol (Decide)
//
// The core is Decide: a deterministic function from (table, local memberlist
// view, first-seen times, now) to one action and the plan (minitransaction)
// that performs it. The Node is a thin driver: read, decide, execute,
// repeat; it never decides under a lock or holds one across I/O.
//
//  1. Start: join gossip through the seeds (ErrJoin if none accepts, with a
//     hint about keys), then register: row = (id, max+1, alive). The row of
//     the same id is reused, else an empty slot, else the longest-dead row
//     (the life whose row is taken over is over: Table.Ended, which gcs
//     uses to remove group members, says so from the maximum incarnation).
//  2. Failure: memberlist's NotifyLeave for a process whose incarnation
//     (from its metadata) is >= the row's marks it gone — equal only if it
//     was registered: a life that died in Start had advertised the
//     incarnation it meant to take (tentative), which the next life of its
//     id then registers, and that death is no evidence against it. The lowest-ranked
//     live process (rank = incarnation order: the oldest first) writes Dead
//     at once; the process at rank position p takes over after
//     p × TakeoverTimeout if the table still shows the victim alive.
//  3. Absence: a live row whose process memberlist does not show alive —
//     never seen, or seen dead only under an older incarnation — is declared
//     dead after AbsentTimeout (this catches processes that died while no
//     observer was running, and rejoins made from the wrong side of a
//     partition). memberlist knows each life of a process under its own
//     node name (id + "/" + a nonce drawn at Start), and the view takes,
//     per id, the life with the highest incarnation: a process restarted
//     before its crash was noticed, on the same gossip address or another,
//     is taken in at once, and the old life's death, however late it is
//     gossiped, is not taken for the new life's. (With the id as the name,
//     memberlist refused the new life while the old held the name, and a
//     death declared for the old life reached members that had taken in
//     the new one as the new one's: a false removal. Builds from before
//     this change name nodes by id alone and never see a newer process's
//     id alive: do not mix the two in one cluster.)
//  4. Isolation: an observer that sees more than half of the other live
//     processes gone waits IsolationDelay more: it is probably the one cut
//     off, and the majority evicts it first. Evidence older than the
//     observer's own registration (its epoch) counts from the epoch, so a
//     process that was evicted does not act on what it saw while cut off. A
//     lone survivor still removes the dead, only later.
//  5. Graceful leave: the process writes its own row Left, then leaves gossip.
//     (memberlist v0.7.0 does not say dead or left in NotifyLeave — the Node
//     it passes always has State alive — so the leaver's own write is what
//     tells the table.)
//  6. False suspicion: a process that finds its row dead (it polls the
//     header; its own row changes only through versions it reads) while
//     alive emits an Evicted change and rejoins with a new incarnation;
//     gossip metadata follows. memberlist alone would let it back under the
//     same name within ~35 ms (refutation), which is why the table fences.
//  7. Superseded: a process that finds a newer incarnation of its own id
//     (a restarted copy) stops (Superseded change, ErrSuperseded) instead of
//     fighting it.
//  8. Client closed: a node whose client the application closed under it
//     can no longer read or change the table; it logs that once at error
//     level and leaves gossip, so the others declare the process dead (a
//     process that only gossiped would look alive for ever, and its gcs
//     memberships would never be removed). Leave then answers
//     client.ErrClosed.
//
// Concurrent deciders are safe: a lost race fails the version compare and
// the loser re-reads and decides again.
//
// # Timings and measured defaults
//
// Gossip (GossipTiming, on top of memberlist.DefaultLocalConfig):
// ProbeInterval 200 ms, ProbeTimeout 100 ms, SuspicionMult 4,
// SuspicionMaxTimeoutMult 6, IndirectChecks 3, GossipInterval 100 ms,
// RetransmitMult 4. SuspicionMult 4 / max 6 replaced 3 / 4 after tutti
// bench members (7 agent processes, 20 crashes; 10-minute soak with one
// busy goroutine per process on a loaded machine) gave p99 1.37 s instead
// of 1.67 s to dead in the table and 2 false removals instead of 4. Earlier
// measurements with 3 / 4: on a 2-core machine with 7 separate processes
// (SIGKILL one): every survivor's memberlist declares it dead in 1.0 s at
// p50 and 1.7 s at p99, with no false removals under CPU load in other
// processes or with up to three busy goroutines inside each process (100 ms
// probes gave 15 false removals in that case). memberlist's own
// DefaultLocalConfig took 4.5 s p50 / 9.8 s p99, and its RetransmitMult 2
// lost join gossip. Suspicion time grows with log10 N (50 processes: p50
// ≈1.5 s, one straggler at 4.6 s). In this package's in-process tests
// (3 processes, -race) a crash reached the table as Dead in ≈1 s.
//
// Table (Timing): PollInterval 250 ms, TakeoverTimeout 1 s, AbsentTimeout
// 5 s, IsolationDelay 10 s. Crash-to-table time is memberlist's detection
// plus at most one minitransaction when the lowest-ranked process survives,
// plus TakeoverTimeout per rank position skipped otherwise. A long pause is
// noticed by the paused process within PollInterval of resuming (the
// backup poll's 4 × PollInterval with a watch stream, unless a change
// comes first). Watching instead of polling: `tutti up` at rest (three
// hosts, each with an agent) used 1.35–1.39 s of CPU per 10 s polling and
// 1.09–1.17 s watching (two runs each, alternated).
//
// A restarted process is a new memberlist node (its name is per life), so
// memberlist admits it at once on any port: the table, not memberlist,
// fences old incarnations.
//
// # Security
//
// With Config.Key (16, 24 or 32 bytes: AES-128/192/256) or Config.Keyring,
// gossip is encrypted and authenticated, and GossipVerifyIncoming/Outgoing
// are on: a process with another key, or none, cannot join (Start returns
// ErrJoin; the seeds log the decryption failures). Key rotation without
// downtime, on every process, through the Keyring passed in Config:
//
//  1. kr.AddKey(new) everywhere (each process now accepts old and new);
//  2. kr.UseKey(new) everywhere (each encrypts with new, still accepts old);
//  3. kr.RemoveKey(old) everywhere.
//
// Do not start step 2 before step 1 finished on every process, nor step 3
// before step 2. (Certificates for gossip, as for gRPC, are the lead's
// follow-up: memberlist has no TLS; the key is the gossip authentication.)
//
// # Threading
//
// A Node is safe for concurrent use. One driver goroutine per Node reads and
// writes the table; memberlist's delegates only record observations and wake
// the driver (they never block the gossip loops). Subscribe channels are
// fed through unbounded queues, so a slow subscriber never stalls the node;
// they are closed by their cancel function or by Close.
//
// # What it must not do
//
//   - Import memnode, memnode/service, replication, gcs or cmd: it speaks to
//     memnodes only through client.
//   - Change the table except by the version-comparing minitransaction, or
//     let memberlist's view stand in for the table's decision.
//   - Reuse an incarnation, or resurrect a row's old incarnation.
//   - Block memberlist's delegates or do I/O under its locks.
//   - Decide groups' views: gcs does, from the confirmed changes here.
package membership
