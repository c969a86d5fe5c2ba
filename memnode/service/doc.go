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
//     memnode.Config.ValidateOp; a Prepare's participants: at least one,
//     none twice, this memnode among them, every one a memnode that
//     exists, since recovery asks exactly those memnodes); a bad one gets
//     STATUS_INVALID or STATUS_UNKNOWN_MEMNODE and changes nothing. A
//     Prepare naming a memnode this host's layout lacks gets
//     STATUS_UNAVAILABLE (retry-safe: the memnode may have been added
//     since the host last read the directory, which it then re-reads).
//  2. Writes and two-phase steps become memnode entries stamped with this
//     host's clock (the leader's clock: the only time a memnode ever sees)
//     and are proposed to the memnode's Raft group; the group batches all
//     proposals queued at one moment into one entry. Decisions a request
//     carries for other tids (commit_tids, abort_tids; any kind but
//     KIND_READ, at most max_items) go into the same memnode entry
//     (memnode.Entry.Commits, Aborts) and apply before the request.
//  3. Read-only requests (KIND_READ) are served with a ReadIndex read and
//     memnode.Query: no log entry.
//  4. Results come back from the Raft worker through a non-blocking outbox;
//     one sender goroutine per stream sends whatever has accumulated as one
//     batch.
//
// The bytes of a request's memnode entry and of a read's answer (its read
// data, up to megabytes) are encoded into buffers of bufpool.Pool: the
// entry's goes back once replication calls the proposal's done (it copies
// the command into its batched entry before that, and does not keep it),
// the answer's once the response that aliases it was sent (gRPC marshals a
// message as it sends it). Fresh buffers were zeroed first and then
// written over, and their garbage paced the collector: measured
// (2026-12-03, alternated 40 s runs, `tutti bench mcast --rates max
// --warmup 25s --duration 10s`, three pairs) 45.2k, 52.3k, 51.3k against
// 54.4k, 57.4k, 55.1k delivered/s per member, the embedded cluster 21.7,
// 18.9, 19.2 against 18.0, 16.4, 17.2 µs of CPU per message.
//
// A host that is not the leader answers STATUS_NOT_LEADER with the leader's
// id and address; it does not forward (one hop fewer, and clients cache
// leaders). A proposal whose fate is unknown (leadership lost after
// proposing) is answered STATUS_UNKNOWN_OUTCOME and never retried here.
//
// # Watch streams
//
// The Watch RPC pushes notifications of applied writes to subscribed
// ranges of a memnode (watch.go). Every replica's machine reports, per
// applied batch, the byte ranges that Exec entries (voting OK) and commits
// (Commit entries and commits carried by any entry: the writes of each tid
// that was in doubt) wrote, to a per-host
// hub; the hub intersects them with each subscriber's ranges and merges
// them into the subscriber's bounded pending state (overflow collapses into
// a reset), so the replication worker never waits for a stream. Only the
// memnode's leader serves a stream: others refuse with a WatchError status
// detail (STATUS_NOT_LEADER and the leader hint), and the leader ends its
// streams the same way when it loses leadership (polled every 50 ms) or
// closes. A stream's first event has reset set and the index from which
// every write is reported; a restored snapshot also sends a reset. A
// subscriber that asked for data (WatchRequest.with_data) also gets the
// bytes of its pending ranges, copied from the memnode after each applied
// batch (latest bytes win), so its events track the watched memory
// exactly; past 256 KiB pending the data is dropped and the next event is
// a hint only.
//
// # Recovery
//
// Each host runs a recovery coordinator (recovery.go, HostConfig.Recovery):
// every Interval (default 1s), for each memnode whose Raft group it leads,
// it lists the in-doubt tids with a ReadIndex read (memnode.InspectInDoubt)
// and, for each prepared longer than Timeout ago (default 2s; host clock
// against the memnode's PreparedAt, itself a leader clock), runs
// client.Recover through a client.Client of its own: abort-unless-voted at
// every participant, commit iff all voted OK, decision to all. Each tid is
// resolved on a goroutine of its own (at most 32 at once, never one tid
// twice), so a tid whose participant has no quorum, which takes up to
// 10 × Timeout, holds up no other. Resolutions
// are logged at info level and counted (Host.RecoveryStats). Host.InDoubt
// and Host.MemnodeStats expose the in-doubt list and memnode.Stats of a
// memnode this host leads. Timeout is capped at a quarter of the memnode
// horizon: recovery must finish while participants remember decided tids.
//
// A tid recovered later than that (its memnode partitioned or without a
// leader for longer than the horizon, or stamped by a client whose clock
// lags the memnodes' by almost the horizon) may be forgotten by a
// participant, which then cannot say whether it voted or committed
// (memnode.OutcomeExpired). client.Recover refuses to decide such a tid
// unless another participant's answer settles it (client.ErrExpired): the
// tid stays in doubt, its locks held, instead of risking a commit at one
// participant and an abort at another. The recovery coordinator logs it
// once at error level, counts it (RecoveryStats.Expired, Stuck; metrics
// tutti_recovery_expired_total, tutti_recovery_stuck) and does not retry
// it while it stays in doubt. An operator must decide it: learn the
// outcome out of band (the application's own records; the committed
// participants' memory) and apply it with `tutti decide TID
// --participants LIST --commit|--abort` (client.Decide), which refuses a
// decision that contradicts what a participant still knows. The log line
// names the tid and its participants.
//
// Place computes the initial placement of memnode replicas on hosts from the
// host list; every host computes the same one.
//
// # The directory (memnode 0)
//
// After the first bootstrap, the placement lives in memnode 0, not in the
// configuration: memnode 0 reserves [client.DirectoryAddr,
// +client.DirectoryRegion) (the last MiB below 4 GiB, away from the low
// addresses applications use) for the directory: the host list (id,
// address, drained flag), the memnode list (id, replica hosts) and the
// cluster configuration (memnode limits, default replica count). Its encoding
// (client/directory.go, shared by hosts, clients and the CLI) is a 32-byte
// header — magic, format, version, body length, CRC-32C of the body, CRC-32C
// of the header — then the body. Every change is one minitransaction that
// compares the whole header it read and writes the new version, so two
// administrators racing cannot lose an update; the loser re-reads and
// re-applies its change. An update whose answer was lost is settled by
// reading the header back; if the directory changed again meanwhile, the
// update reports an unknown outcome rather than re-apply a change that may
// already be there. At first bootstrap each host tries to write its
// configured placement with a compare against an all-zero header; exactly
// one write wins and the others are no-ops, so bootstrap is idempotent.
// Memnodes smaller than 4 GiB cannot hold the directory; such clusters keep
// the static placement. With the static placement every boot starts the
// configured replicas the host's log engine neither holds nor has removed
// (a first boot that crashed between two replicas' starts is finished by
// the next one); with a directory, only the first boot (an empty log
// engine, once the other hosts confirm it: see Lost state) uses the
// configuration and later ones start what the engine holds, the
// reconciler the rest.
//
// The Cluster RPC answers from the directory, read linearizably (a ReadIndex
// read at memnode 0's leader, through this host's own Session path or a
// Session stream to the leader; never through another host's Cluster RPC, so
// hosts cannot ask each other in circles). If memnode 0 has no quorum it
// answers from the layout this host last installed and says which version
// that was (directory_version). Clients need one seed: on UNKNOWN_MEMNODE,
// on NOT_LEADER without a usable hint, and when hosts do not answer, they
// refresh the layout (rate-limited) and retry.
//
// Addresses: a host registers its configured address in the directory when
// it differs (restart on new ports), unless another running process answers
// with its id at the address the directory has (a mistyped --id): then it
// logs an error and neither registers nor starts replicas. For hosts it names in HostConfig.Hosts
// a host keeps using its configured address; the directory supplies the
// addresses of hosts it was not configured with.
//
// # Online change by reconciliation
//
// Every host polls the directory (HostConfig.DirectoryPoll, default 500 ms,
// and on demand when a Cluster read sees a newer version) and reconciles:
//
//   - a replica the directory assigns to this host and that does not run
//     here is started: as a new group with the memnode's Bootstrap voters
//     if this host is one of them (a memnode just created; such a host
//     starts it even if a change since took it out of the replicas),
//     otherwise by joining with no peers and waiting for the leader's
//     snapshot; a host that may have lost its state first checks that it
//     is not still counted as what it was (Lost state);
//   - the leader of a group removes a replica whose host reports it lost
//     (Lost state), so that the host joins again as a new member;
//   - the leader of a memnode created online first clears its Bootstrap
//     voters in the directory (the group exists), before any change;
//   - the leader of each group drives replication.ChangeReplicas, one
//     ConfChangeV2 per pass (a change applied starts the next pass at
//     once rather than at the next poll: a replica move, about six
//     changes, took 21 s of TestChangeRightAfterAddMemnode's 3 s polls and
//     takes 12 s), until the voters equal the directory's
//     replicas: wanted hosts join as learners and are promoted once caught up
//     (replicating, within client.LagEntries of the commit index); unwanted
//     voters leave only after every wanted host votes (so a move is add, then
//     remove), and never if the remaining voters would lack a healthy
//     majority; a leader that must leave transfers leadership first, to a
//     voter that stays if one is healthy (not to another one leaving,
//     which would have to transfer it again);
//   - a replica the directory no longer assigns here is stopped and its
//     data deleted (replication.RemoveGroup) only once its removal is
//     committed: its own applied configuration excludes it, or the group's
//     leader reports a configuration without it.
//
// A host absent from the directory it reads registers itself (id,
// address) — that is how a new host joins — unless a directory this
// process read before listed it: then an operator removed it (below), and
// it logs an error once a minute instead, starts nothing, and still runs
// the rest of each pass (replicas left here leave their groups). So a
// removed host never fights the removal; started afresh, it registers
// again as a new host in service.
//
// Restarted hosts recover the groups their log engine holds; only a host
// with an empty engine bootstraps from HostConfig.Memnodes (a host whose
// replicas were all removed is not empty: it keeps their tombstones,
// replication.Host.RemovedGroups), and only at the cluster's first boot.
//
// # Lost state
//
// Replica ids are host ids, so a host that comes back with an empty data
// directory under its id (its disk was replaced, or an operator started a
// new machine with the id of a host that is down; idTaken only catches a
// host that still runs) is, to its groups, the voter it was, but it has
// forgotten every entry it acknowledged and every vote it cast. Had it
// taken part as that voter, it could have voted for a candidate lacking
// committed entries: replicas 1, 2, 3, a write committed by 1 and 2 while
// 3 lagged, 2 down, 1 back empty votes for 3, and 3 leads without the
// write, which it then overwrites on 2 (TestWipedHostDoesNotVoteAcknowledgedWritesAway).
// The rule: a host never starts, as a voter or as a learner its leader has
// acknowledgements from, a replica of which its log engine holds neither
// state nor tombstone. It takes part again only as a new member, added by
// a configuration change and caught up by snapshot, as for `tutti replica
// add`:
//
//  1. First boot or lost disk. An empty engine with a configured placement
//     bootstraps nothing at once. It draws a random boot nonce, kept in
//     its data directory (TUTTI-BOOT-NONCE, synced with the directory
//     before the host answers anyone; removed once the engine holds state,
//     so a wiped directory draws a new one), and answers the Replicas RPC
//     with first_boot and that nonce. The reconciler asks every configured
//     host (every 100 ms) and, once every host it shares a configured
//     memnode with (every host, for a host with none) has answered:
//     - if each answers first_boot, or runs with Raft state and lists this
//     host with its current nonce in first_boot_peers, it is the
//     cluster's first boot: it adds the hosts that answered first_boot,
//     with their nonces, to its own record (TUTTI-FIRST-BOOT-PEERS, synced
//     before anything else; lines are only ever added, each a true
//     observation) and only then bootstraps the configured replicas and
//     stops answering first_boot;
//     - if a host runs with state and does not list this host's nonce, the
//     cluster runs: the host bootstraps nothing, logs a warning ("not
//     bootstrapping"), and marks its data directory (the file
//     TUTTI-STARTED-EMPTY, never removed, so that a restart still knows).
//     The nonce is what makes the first boot race-free: a host whose probe
//     of a peer failed (a port not yet open, then gRPC's reconnect backoff)
//     while the peers, having seen it booting, bootstrapped and elected,
//     used to find their groups past term 1 and take itself for a lost
//     disk. A host listed with its current nonce answered as booting with
//     an empty engine when that peer bootstrapped, and its engine is still
//     empty with the same nonce: it has voted and acknowledged nothing
//     since, so bootstrapping now is the bootstrap it would have done then
//     (every initial replica bootstraps identically). This holds across
//     restarts: of the deciding host (its record is on its disk), and of a
//     booting host that crashed before bootstrapping (same nonce). A wiped
//     host has a new nonce no one recorded. So the cluster's first boot
//     needs every initial host up. A host started with no placement
//     (--join) is marked at once.
//  2. A marked host starts a replica the directory assigns it, and of which
//     its engine holds neither state nor tombstone, only after asking the
//     group's leader (Replicas RPC): if the leader's applied configuration
//     lists it as a voter (either half of a joint one), or as a learner it
//     has seen acknowledge entries, the host does not start it, logs an
//     error ("lost replica") and reports the memnode in the Replicas RPC's
//     lost. If the configuration does not list it, or lists it as a
//     learner with no acknowledgement (just added), it joins as a new,
//     empty replica. A bootstrap voter of a memnode created online asks the
//     other bootstrap voters instead: if none is past the group's first
//     term it creates the group, else it proceeds as above. With no leader
//     to ask (no quorum) it waits.
//  3. The leader of a group removes a member that does not answer Raft
//     and whose host reports the memnode lost (one ConfChangeV2; no loss of
//     availability: as it is, the member is in no quorum). The host then
//     sees itself out of the configuration and joins; the leader adds it as
//     a learner, sends it a snapshot and promotes it once caught up.
//
// A host whose engine was not empty never had the replicas it lacks (a
// group's state is written before its replica sends anything), so it
// starts them as before. Raft would accept the old id again: it keeps no
// record of removed ids, and a member re-added gets a fresh progress
// record. Messages from the time before cannot confuse the new replica:
// the old process is gone with its queues, and replication drops what the
// leader queued for the old member while it was down (a heartbeat whose
// commit index is beyond the log, on which raft would panic) as well as
// vote requests to a replica that has received nothing yet.
//
// What it costs: a host that did not take part in the cluster's first boot
// (it was not up while the hosts it shares memnodes with decided; they
// wait for it, so only a host sharing no memnode with a decided host, or
// whose first boot crashed between two replicas' starts) cannot be told
// from one that lost its disk, and its replicas are removed and added back
// (a few seconds, during which the group has one voter fewer: a second
// fault then may stop it until the re-added replica is promoted).
// What it does not cover: a majority of a group's replicas lost at once
// (the data is gone; hosts that answer first_boot together may bootstrap
// the group afresh), and the static placement (no directory, so no
// configuration change: a host of a static cluster must not lose its data
// directory; it bootstraps as before).
//
// Operators replacing a host's disk restart it with the same flags (id,
// address, --peers) and an empty --data-dir: steps 1-3 run by themselves
// and `tutti memnodes` shows the host's replicas back once they are. While
// the group has no leader (a majority down) nothing happens; the lost host
// waits. The same happens by hand with `tutti replica remove MN HOST
// --wait` then `tutti replica add MN HOST --wait`.
//
// # Taking a host out of service
//
// A host is drained with a flag in the directory (client.Directory.
// DrainHost; format 2 of the encoding, written only while some host is
// drained, so older builds read every other directory): no new replica
// goes on it — default placement of a new memnode skips it, and adding or
// moving a replica to it by name is refused — while the replicas it holds
// stay until moved. The operator procedure:
//
//  1. `tutti host drain ID --move`: drain, then move each of its replicas
//     to the least-loaded answering host in service without a replica of
//     that memnode (client.Directory.MoveTarget), one directory change
//     at a time, each waited for until the memnode's Raft voters match
//     the directory; then wait until no Raft configuration includes the
//     host. The first failure stops it, saying what moved and what is
//     left; run again, it goes on (draining a drained host is a no-op).
//  2. Stop the host's process.
//  3. `tutti host remove ID` (client.Client.RemoveHost): refused unless the
//     host is drained, holds no replica, is no initial voter of a memnode
//     being created, and does not answer at its address with its id.
//
// The last check is there because of how hosts join (above): a removed
// host that runs is harmless (it does not register again) but is a
// process outside the cluster's directory that still answers; refusing
// says so before the change instead of after. `tutti host undrain ID`
// puts a drained host back in service; replicas moved away stay where
// they went.
//
// # Why administration goes through the client, not an Admin RPC
//
// Add memnode / add, remove, move replica / drain, undrain, remove host are
// methods of client.Client (and
// pure functions on client.Directory) that write the directory with one
// compare-the-header minitransaction. No admin service is needed because the
// directory is ordinary memnode data and minitransactions already give the
// atomicity and the lost-update protection an admin server would have to
// reimplement; any Go program (and the CLI) can administer with the seed it
// already has, validation is one pure, unit-tested function, and the hosts'
// reconcilers are the only code that turns intent into Raft changes, so a
// crashed administrator leaves nothing half-done. Raft progress for health
// displays comes from the Replicas RPC, which each host answers for its own
// replicas (the leader's answer carries every replica's progress).
//
// This package must not hold Sinfonia logic of its own (that is memnode's)
// nor Raft logic (replication's); it translates and routes.
package service
