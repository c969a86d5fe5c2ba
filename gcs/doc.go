// Package gcs is group communication on Sinfonia memnodes: processes join
// named groups, multicast messages that every member delivers in one total
// order, and see membership changes as views, with virtual synchrony
// (DESIGN.md §5; SinfoniaGCS in reference/sinfonia.md).
//
// # Usage
//
//	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: "host-a", Membership: mn})
//	g, err := n.Join(ctx, "orders", gcs.JoinOptions{Snapshot: snap, Restore: restore})
//	go func() {
//		for ev := range g.Events() { // *View, *Message, *Evicted, in order
//			...
//		}
//	}()
//	err = g.Multicast(ctx, payload) // returns once ordered
//	g.MulticastAsync(payload, done)  // returns at once; done(err) once ordered
//	err = g.Leave(ctx)
//	n.Close()
//
// # Guarantees
//
// For the members of one group (names "ID#incarnation"; a rejoin is a new
// member):
//
//   - Total order: all members deliver messages in one order (Message.Pos,
//     the same at every member), views included.
//   - Per-sender FIFO: a member's messages are delivered in the order its
//     Multicast (or MulticastAsync) calls were made (one link in flight per
//     member; Seq grows).
//   - View synchrony: members that install views v and v+1 delivered the
//     same messages in v, and each message is delivered in the view it was
//     ordered in (Message.View), at every member.
//   - Self-delivery: a member that does not crash, leave or get evicted
//     delivers its own messages.
//   - No duplicates, no creation: each message is delivered at most once
//     per member, with the bytes that were sent.
//   - No delivery after leave: after Leave the member delivers nothing of
//     the view without it; after *Evicted, nothing at all.
//   - Durability: a delivered message (and a message for which Multicast
//     returned nil) is in the order log or its sender's queue, written by a
//     committed minitransaction, i.e. on a majority of a memnode's Raft
//     replicas. A crash of any member loses nothing that was ordered.
//
// These hold without a flush round because the order log is the single
// source of truth; internal/vscheck checks recorded histories against them.
// TestRandomizedVirtualSynchrony (vs_test.go) records such histories from
// 3–7 members, each a process with its own client and membership node,
// under random multicasts, crashes, joins, rejoins, leaves and memnode
// faults (leader host crashes, Raft isolation), and requires no violation
// with vscheck's Complete option after draining the survivors
// (TUTTI_VS_SEED, TUTTI_VS_SEEDS, TUTTI_VS_DURATION; the seed is logged).
// BenchmarkCrashToView measures crash-to-new-view time with Membership.
//
// # Layout in memnodes
//
// Home memnode: hash(group) over Config.Memnodes. Index at IndexBase on the
// home memnode (layout.go): IndexSlots slots of IndexSlotSize bytes, (meta
// address, name); open addressing with linear probing; a deleted group's
// slot is a tombstone that probing passes; a new name takes the first
// tombstone or free slot of its chain by a minitransaction that compares
// the chain as read. Metadata region (allocated by client.Allocator in
// [AllocBase, AllocLimit) of the home memnode, or a deleted group's taken
// from the home memnode's free list at FreeMetaAddr): header (view, tail, msgs, head, nextTag, logSize, maxMembers),
// member slots (tag, incarnation, join view, queue region, delivered
// positions, state-transfer cell, retiredAt, name) and the order log, a
// byte ring of 8-aligned records: inline batches, references to a batch in
// a member's queue (memnode, ring, position, size), and view records (full
// member list, joined, left, reason, state provider). Each member owns a
// queue ring (allocated on a memnode chosen by hash, so members spread)
// whose first word is a fence: the member's tag mixed with the group's
// identity (queueFence), so that a removed member still retrying a queue
// write fails once the queue is reclaimed, even if another group's member
// with the same tag got the block. A batch blob in a queue starts with its
// queue position, sender tag and first sequence number and ends with a
// CRC-32C of the rest, which readers check: a reader that fell behind the
// trimmed log without knowing it yet could otherwise take a blob whose
// header survived while a newer blob, written out of order by a retried
// queue write, covered its tail (blobs written before the checksum, with
// no blobSealed bit in their size, are checked by their header alone). All
// byte layouts are documented in layout.go.
//
// # Protocol
//
//  1. Multicast: messages queued by the application are batched (MaxBatch,
//     MaxBatchBytes). A batch of at most InlineBytes travels inside the
//     order record; a larger one is first written to the sender's queue
//     ring (one one-memnode minitransaction comparing the fence; at most
//     2 MiB of batches per write, two writes in flight while the previous
//     batches are linked; reads and writes are split at the cluster's
//     item limit, so no request exceeds the memnodes' limits). Then one
//     minitransaction on the home memnode links it: compare the view with
//     the sender's, and append the records (client.Append): the memnode
//     places them at the tail it has when it applies the link, stamps each
//     record's position and message base (relocations), advances tail and
//     msgs, and answers where they went. It refuses the append (as a
//     failed compare) when the log lacks room (logRoom), and the sender
//     waits for head to move. Links of several members never conflict:
//     the home memnode's Raft log orders them (see "Why links append"
//     below). A failed view compare means a view change: the sender reads
//     the metadata and ends (removed) or links again in the new view. The
//     link carries every batch ready to link, so links grow instead of
//     queueing up; the payload of a queued batch is not resent. Once the
//     link commits, delivery takes the sender's own records from it if it
//     reaches their position before a notification brings them (the
//     handoff). An ErrUnknownOutcome is settled before anything is linked
//     again: a logged read of the header that fences the attempt
//     (client.Client.Settle: a link still on its way to the leader is
//     refused when it arrives, so the answer is final; a fence on another
//     memnode than the attempt's would settle nothing, and Settle refuses
//     it), then a scan of the log from a tail the sender knew before the
//     attempt up to that header's tail for its record (sender tag and
//     first sequence number; view records by their view id and bytes);
//     not found, it never committed. Once head passed that tail (not
//     necessarily the record, which went wherever the tail was when the
//     link applied), the scan starts at head (a delivered position);
//     not found there, the sender's own delivery tells below the
//     position it reached (it handed over the link's first message iff
//     it committed there), and the scan goes on from that position,
//     which head passes only after our delivery did; a sender that
//     cannot tell (no longer in the view, or a minute of failed reads)
//     stops (ErrClosed) rather than risk ordering the batch twice. View
//     changes settle the same way, from head once head passed the tail,
//     without a delivery to ask: not found from head on, a fenced header
//     that still shows the view the change compared says it did not
//     commit (it would have written view+1); otherwise a join asks its
//     slot, and a Leave or Remove decides again on fresh metadata: it
//     asks only that members be out of the view, the attempt is fenced,
//     and the compare of the view lets a second decision apply once (it
//     finds them gone, or removes them). A join that cannot be settled
//     leaves its slot if it was placed.
//     Multicast returns once the link committed.
//  2. Delivery: each member reads the order log from the position of the
//     view record that admitted it, follows references into the senders'
//     queues (its own batches it keeps in memory until delivered) and
//     delivers strictly in log order. After delivering up to
//     the tail it read, it waits for a signal before reading again: a
//     client.Watch notification (on the header's view, tail and msgs
//     words and the log ring) when the cluster serves watch streams, a
//     poke from a link or view change of this node, or a poll (PollMin
//     doubling to PollMax without watch; with one a backup poll every
//     100 ms, backing off to 1 s while polls find nothing).
//     A notification whose log ranges are all records of our own links
//     that delivery already has is skipped (only links within half a log
//     below the delivered position count, so the record at the delivered
//     position is never mistaken for one). The watch asks for the written
//     bytes (client.WatchOptions.Data): a notification carries the
//     committed content of its ranges as of its Raft index, and every
//     write since the previous one, so when its data holds the header
//     words and the log from the delivered position up to its tail
//     (both pieces if the ring wraps there) delivery takes the records
//     from it as from a handoff, without a read. It reads as before when
//     the data is missing or incomplete (a Reset, a server or client that
//     dropped it past its byte cap, a notification that skipped ahead) or
//     when the head it knows (not watched) is past its position.
//     Referenced batches are still read from the senders' queues. A
//     link's own poke after delivery already took its records from a
//     notification reads nothing either.
//  3. Views: join, leave and removal are each one minitransaction on the
//     home memnode that compares the view, writes view+1 and the member
//     slots, and appends the view record as links append theirs (the
//     joiner's delivered positions and the removed members' retiredAt,
//     which name the record's position, are relocated by the memnode). A member removed while alive
//     delivers *Evicted. Removals of processes the Membership table
//     confirms Died/Left (or replaced by a newer incarnation, or whose row
//     another process took: membership.Table.Ended) are proposed
//     by the oldest live member at once and by the member at live rank
//     position p after p×TakeoverTimeout; the compare makes concurrent
//     attempts safe. Without Membership, Group.Remove is the administrator's
//     removal.
//  4. State transfer: the view record admitting a joiner that has Restore
//     names the oldest member as provider. On delivering that view the
//     provider calls Snapshot, writes the bytes into an allocated region and
//     publishes it in the joiner's slot; the joiner (inside Join) reads it,
//     calls Restore, frees the region and then delivers from its view
//     record on. If the provider is removed first, or Membership confirms
//     its process dead, the joiner leaves and joins again (at most 8
//     times; the new join removes the dead provider and names a live one),
//     then fails with ErrStateTransfer. Each attempt has a queue of its
//     own (a left attempt's queue is reclaimed with its slot). Without
//     Membership a crashed provider stalls Join until its ctx ends or
//     Group.Remove removes it.
//  5. Garbage collection: every GCInterval members publish their delivered
//     positions (one minitransaction that also reads the metadata; while
//     a round finds nothing to do the rounds back off to IdleGCInterval,
//     see "Idle groups" below). A link also writes its sender's delivered
//     position (its view compare keeps the slot the sender's), and a
//     round less than a GCInterval after such a link only reads: a member
//     that sends costs no Raft entry of its own for publishing (at 100/s
//     per member, three members: 1.18–1.20 Raft entries per message
//     before, 1.04–1.05 after; fsyncs 3.5 → 3.1; TestLinksPublishTheDeliveredPosition). The
//     oldest member sets head = min over the view (and
//     over members still delivering up to and including their own Leave
//     record — a leaver's final position is past that record, published
//     at the end of Leave (retried like other steps) — unless confirmed
//     dead or without progress for max(5×TakeoverTimeout,
//     100×GCInterval)), and
//     reclaims the slots of removed members once head passed their removal
//     (in three steps: mark the slot and write a marker into the queue's
//     fence; free the queue on its own memnode, guarded by the marker;
//     zero the slot. A step that fails leaves the slot saying what is
//     left, so no queue is lost or freed twice, and the allocator's header
//     never waits on another memnode; gc.go, reclaim). Senders reuse their queue ring below the oldest batch the
//     log still references. A full log or queue blocks senders (flow
//     control), so memory is bounded by LogCapacity and QueueCapacity.
//     Multicasts and joins fill at most 7/8 of the log; the last eighth is
//     kept for view changes that only remove members (failures, Leave,
//     Group.Remove): a member that stops delivering pins head, and its
//     removal, the only way for head to move on, must find room in a log
//     the others have filled (node.go, logRoom). So that any removal
//     fits in that eighth, a join whose view would make a larger removal
//     record possible is refused with ErrGroupFull (view.go,
//     removalBound): about 12 bytes plus the member's name per member, so
//     the 1 MiB default takes any 64 members; a 4 KiB log, a few.
//     A member whose Leave empties the view does the oldest member's
//     trimming and reclaiming for the empty view, its own slot and queue
//     included (gc.go, "The last member out"). The group's metadata and
//     index slot stay (64 + MaxMembers×256 bytes and LogCapacity on its
//     home memnode) until Node.Delete. Node.Describe shows a group's
//     view, log bounds and the removed members not yet reclaimed.
//
// # Idle groups
//
// A member's background work is its housekeeping (every GCInterval, 50 ms:
// publish its delivered position, read the metadata) and, with a watch
// stream, delivery's backup poll of the order log (every 100 ms; the watch
// notifies). Both used to run at those periods whatever happened: 30
// reads a second per member, forever. Five idle groups of three members
// (`tutti up` and 15 `tutti tail` processes, nothing sent) cost the cluster
// 3.2–4.3 s of CPU per 10 s over its 1.4 s at rest, and the members 3.8–4.7
// s (four runs). Now a housekeeping round that finds nothing to do (nothing to
// publish, the metadata as the round before read it, nobody dead, leaving
// or left to reclaim, nothing to trim, and for the trimmer every member's
// published position at the tail) doubles the wait before the next up
// to IdleGCInterval (1 s), and a backup poll that finds nothing doubles
// the next up to 1 s; delivering anything, and with Membership any change
// of the process table, brings them back at once. The same five groups:
// 0.3–0.5 s of the cluster's CPU per 10 s and 0.6–0.7 s of the members'
// (four runs of each binary, alternated in pairs). What an idle group gives up: its
// Stability may be up to IdleGCInterval old, and a lost watch notification
// is caught by the poll within a second instead of 100 ms. A member that
// stops delivering (crashed without Membership, or an application not
// taking Events) keeps the oldest member's rounds at GCInterval, as
// before: a sender whose queue is full waits for the trim its catching
// up allows (TestTrimmerWatchesALaggard).
//
// # Performance
//
// MulticastAsync (2026-12-03): with Multicast, an application that keeps
// many messages in flight keeps as many goroutines, each with a channel,
// parked and woken once per message; in a member's profile at saturation
// Multicast's select and channel and the sender's wake-ups were ~15% of
// its CPU, and the scheduler as much again. `tutti bench mcast --rates max
// --warmup 25s --duration 10s`, one binary, five alternated pairs with and
// without --async: the three members together spent 9.3, 11.4, 11.2, 9.6,
// 10.3 µs of CPU per delivered message with MulticastAsync against 15.1,
// 13.9, 14.4, 13.1, 11.9 with Multicast (median -26%); delivered/s per
// member did not change (60.7k, 49.6k, 50.2k, 56.0k, 50.7k against 44.5k,
// 51.7k, 46.5k, 50.3k, 53.9k): the embedded cluster, on the same two
// cores, bounds it.
//
// With incompressible 1 KiB payloads (`tutti bench mcast`'s default since
// 2026-12-01) saturation is 64–86k delivered/s per member on the 2-core
// machine when nothing else runs on it (100/s p50 0.75–0.88 ms, 1000/s
// 3.3–3.9 ms), and 37–50k when it is shared with other test runs (100/s
// p50 1.28–1.47 ms), 0.69–0.81 of what zero-filled payloads give (the log
// engine compresses its flushed tables). At saturation the two cores are
// 85–90% busy and the cluster writes 520–590 MB/s to the disk. The same
// kind of machine is not always the same machine: on 2026-12-01 a later
// VM took 1.0–1.1 µs per system call (getppid) and 11 µs per first touch
// of a 4 KiB page (no change after touching 21 GiB once: freed guest
// memory goes back to the host), and saturation there was 24–34k with the
// bench's 1 s warm-up, 39k after a 20 s one: in the first seconds 70% of
// the embedded cluster's 20–27k page faults/s are first fills of the log
// engine's memtable arenas (perf record -e page-faults; Pebble recycles
// them, so a running cluster has paid this), and at steady state (866
// faults/s) 48% of all CPU samples are in the kernel, 17% copying write()
// data into the page cache. bench mtx's cas2/base there: 0.45–0.52 at 256
// outstanding, 0.40–0.45 at 2048. Every other
// figure in this section used zero-filled payloads on a shared machine. On a quiet 2-core machine (`tutti bench mcast`, 3 member
// processes, 1 KiB messages, embedded cluster with fsync, defaults; 3 runs
// each):
// at 100/s per member p50 1.00–1.16 ms and p99 2.4–2.8 ms from Multicast
// to delivery at every member; at 1000/s p50 10.7–15.8 ms (links raced for
// the tail; one member sending 1000/s alone: 1.6 ms); at saturation 48.8k–53.0k delivered/s per member (p50
// 130–144 ms, the bench's window of 2048); a member's crash to the new
// view at the survivors p50 1.22 s, p99 1.55 s (20 trials; failure
// detection). The paragraphs below explain each part.
//
// Per link at low load (one message per link, three members): the link
// (one Raft entry with fsync on the home memnode) and nothing else. The
// other members take the link's records from their watch notification,
// which carries the written header words and log bytes (sent by the
// leader right after it applies the entry, before the link's answer
// reaches the sender), instead of one ReadIndex read each. The sender
// reads nothing either: its delivery has the records from the link's
// answer (handoff) or from the notification if that came first, and
// delivery waits for a signal after delivering instead of reading once
// more to find nothing. Measured with `tutti bench mcast --rates 100
// --duration 5s` (3 processes, 1 KiB messages; 9 alternating runs of the
// binaries before and after notifications carried data, on the shared
// 2-core machine, load average 2–4): p50 from Multicast to delivery at
// every member 3.1, 8.4, 2.5, 5.6, 4.1, 3.2, 1.7, 2.0, 5.3 ms before and
// 1.9, 1.6, 4.9, 2.0, 3.0, 1.5, 1.3, 1.5, 1.7 ms after (median 3.2 → 1.7
// ms; median ratio of the pairs 0.60); p99 median 35 → 23 ms. Delivery
// at the last member now follows the link's commit (the Multicast p50)
// by 0.06–0.3 ms (median 0.17) instead of 0.8–2.6 ms (median 1.3), the
// members use about 15% less CPU (median 0.42 → 0.35 cores for the
// three) and the embedded cluster about 13% less (0.76 → 0.66). At
// saturation (`--rates max`, three pairs) the difference is within the
// noise: 22.6k, 29.7k, 36.6k messages/s per member before, 28.2k, 37.4k,
// 22.5k after.
//
// At saturation a member also delivers its own queued batches from memory
// instead of reading them back (a third of the blob reads with three
// members). Counted with `tutti bench mcast --rates 100` (3 processes,
// about 4.3 s) before notifications carried data: gcs minitransactions
// per member fell from about 1,880 to 1,090 (links 594 → 302, as fewer
// races were lost; delivery reads 943 → 447; header re-reads after lost
// races 85 → 0, the retry's read also feeds delivery; housekeeping 260 →
// 165, publishing and reading the metadata being one minitransaction).
// The remaining delivery reads are what notification data replaces (not
// recounted in the benchmark; in TestDeliveryFromWatchData a member that
// only receives delivers 30 links with no read of the log).
//
// What remained at low load was contention, not work: every link
// compared the tail, so links whose windows overlapped (Raft commit time
// plus the staleness of the sender's header) lost and retried, and on a
// shared machine, where commits take 3–10 ms, most did. Links now append
// (see "Why links append" below).
//
// At saturation messages travel in queued batches (up to MaxBatch
// messages per blob): queue writes of at most 2 MiB of blobs (payload
// into Raft on the queue's memnode; two in flight, the second only once
// a full batch is pending, so batches do not fragment), a link of
// references, and one blob read per other member. With the whole
// cluster in one process on 2 cores, the embedded cluster's CPU profile
// (`tutti bench mcast --rates max --cpuprofile`) is about 46% memmove
// (the payload copied into Pebble's memtable and WAL, Raft entries and
// transport frames to two followers, protobuf requests and responses, and
// memnode reads: some fifteen copies of every byte), 21% syscalls (fsync,
// loopback TCP) and 14% protobuf decoding.
//
// `tutti bench mcast --rates max --duration 5s` (3 member processes, 1 KiB
// messages, embedded cluster with fsync, defaults), alternating binaries
// in one session on a 2-core machine shared with other test runs: before
// (MaxBatch 128, MaxBatchBytes 256 KiB, QueueCapacity 4 MiB, one queue
// write in flight, bench window 512) 36.8k, 33.3k, 31.2k delivered/s per
// member, p50 46–54 ms, p99 187–229 ms; now (window 2048) 49.3k, 50.4k,
// 35.2k, p50 149–202 ms, p99 483–661 ms. With the same window 2048 the
// old code gave 35.6k, 32.1k, 40.9k (p50 139–197 ms), the new 43.2k,
// 47.5k, 53.4k (p50 156–174 ms). The p50 is mostly the window: Little's
// law, 2048 outstanding per member over about 16k/s per sender. At 100/s
// per member the path is the same (inline batches of one message; p50
// 1.7–2.2 ms before, 2.0–2.8 ms now). At saturation the cluster uses
// 0.7–1.1 cores and the members about 0.2 each, with other test runs
// beside them on the 2 cores: CPU, more than the gcs pipeline, is the
// limit on this machine. 100k/s per member
// (about 100 MB/s of payload into Raft, three replicas each, and 200 MB/s
// of blob reads) needs fewer copies in replication, memnode and the
// client (outside this package), not fewer gcs steps (gRPC's buffers no
// longer zeroed before use, internal/bufpool, gave about 6%: 49–51k to
// 51–56k in alternated runs; Raft messages encoded once between hosts
// about 7% more: 52–56k to 56–60k; Pebble keeping the log's flushed
// tables in L0 until truncation deletes them about 15% more: to
// 61–67k). Until links appended, a remaining gcs-side
// cost was that about 45–57% of links lost the race on the tail with three
// saturated senders (each loss a Raft entry; `tutti bench mcast` prints
// the share, Group.SendStats counts it). Taking the lost race's header and
// log from the failed link's own answer instead of a read: alternated
// 8 s saturation runs 39.5k, 40.4k, 42.4k delivered/s per member against
// 37.4k, 42.7k, 41.9k before (inside the noise), Multicast p50 130, 125,
// 120 ms against 141, 135, 129; at 100/s (2% of links lose) and 1000/s
// (60%) no change outside the noise. The winner's yielded turn (see
// Mechanism 1), alternated on a busier machine (load 3–4; 5 s runs): at
// 1000/s p50 19.7, 11.0, 14.2, 16.2 ms against 26.4, 28.0, 18.1, 15.3
// without (p99 57–75 against 74–102 ms); saturation 38.2k, 35.0k, 36.2k,
// 33.7k against 37.6k, 35.4k, 35.0k, 37.3k (8 s runs, inside the noise);
// yielding also with queued batches cost saturation about 8%, hence
// inline batches only. Lost races stay 55–60%: the members that lost
// still race each other. Tried and dropped: turns for every member (the
// next in slot order after the last linker, learnt from the records a
// lost race returns, links; the others wait for the tail to move): 1000/s
// p50 27.5, 16.3, 12.2 ms against 10.0, 10.3, 20.2 with the winner's yield
// alone, lost races unchanged. (The answer's reads and the yielded turns
// went with the tail compare.)
//
// # Why links append
//
// DESIGN §5 links a batch with compare(view), compare(tail == t),
// write(order[t]), write(tail = t+1): Sinfonia's minitransactions only
// compare and write, so the position is chosen by the sender and checked
// by the memnode. But every link of a group already goes through one Raft
// log, the home memnode's, which orders them; comparing the tail only
// turns that order into conflicts. So the memnode gained one item,
// client.Append (memnode/doc.go, "Append"): it reads the ring's tail and
// a counter at apply, writes the data at the tail (refusing, as a failed
// compare, when the ring lacks room above its head word), advances both,
// patches the old values into the data and into other write items of the
// same minitransaction (relocations), and answers where the data went.
// A link is now compare(view) plus one append; a view change compare
// (view), write(view+1), its slot writes, and one append. The layout and
// the records are as before (each still carries its position and message
// base, stamped by the memnode), so readers did not change. What it
// costs: a link's position is known only from its answer, so a link of
// unknown outcome is settled by a fenced read of the header and a scan of
// the log from a tail known before the attempt (Protocol, 1), where the
// compare of the tail pointed at one position.
//
// Measured with `tutti bench mcast --rates 100 --duration 5s` (3 member
// processes, 1 KiB messages, embedded cluster with fsync), the binaries
// before and after alternated in three pairs on the 2-core VM of
// 2026-12-02 (where one lone minitransaction takes about 1 ms): p50 from
// Multicast to delivery at every member 4.4, 17.2, 14.4 ms before and
// 3.1, 2.9, 3.1 ms after; p99 29–69 ms before and 14–19 ms after; links
// that lost a race 43–63% before, 0 after; Raft entries per message
// 1.33–1.67 before, 1.16–1.18 after; fsyncs per message 3.8–4.9 before,
// 3.45–3.47 after. At saturation (`--rates max`, two pairs) 23.0k and
// 18.3k delivered/s per member before, 23.7k and 25.9k after.
//
// Memory at saturation was not bounded until replication stopped keeping
// every group's Raft log in memory back to the last compaction (10,000
// entries; with 512 KiB queue writes, gigabytes per group): the embedded
// cluster's heap grew ~75 MB/s, resident 5.3 GB after 40 s, and on a VM
// where first touches of memory fault expensively most of its CPU went to
// page faults. With the log in Pebble behind an 8 MiB cache per group it
// stays at 1.9–2.3 GB, and saturation on that VM went from 22.9k, 23.9k to
// 31.5k, 30.5k delivered/s per member (alternated runs); see "Memory" in
// replication/doc.go. Snapshots, a whole memnode each, then moved out of
// Pebble into files of their own: a 40 s saturation run (which includes
// them) went from 26.9k to 34.8k. On that VM the embedded cluster then
// spends its CPU on syscalls (~29%: WAL writes, loopback TCP, fsync),
// copies (~25%) and Pebble flushes and compactions of the log (~17%).
//
// # Threading
//
// A Node and its Groups are safe for concurrent use. Each Group runs three
// goroutines: delivery (feeds Events, unbuffered, and calls Snapshot),
// sender (batches and links), and housekeeping (publication, trimming,
// failure removals). No lock is held across I/O.
//
// # Limits and choices
//
//   - Config.Memnodes (default: the memnodes when Open runs) must be the
//     same at every process and fixed while groups exist.
//   - Without Membership a crashed member stays in the view (blocking log
//     trimming and, once the log is full, senders) until Group.Remove.
//   - Multicast after its ctx ended may or may not have ordered the message.
//   - A memnode that is unavailable for a while (an election, a partition,
//     a host restarting) is waited out: senders' queue writes, header
//     reads and links, and delivery's reads, retry with backoff (up to
//     200 ms apart) until it answers or the group closes, with a warning
//     every 10 s for queue writes, header reads and batch reads (links
//     and reads of the order log log at debug level); Multicast's ctx
//     bounds how long its caller waits. Only a request the memnodes
//     reject as invalid, or a group found deleted, ends them: the sender
//     ends with ErrEvicted, and delivery with *Evicted ("the group was
//     deleted": a removed member that had not read its removal before
//     the group was emptied and deleted). A Config.Client closed under
//     the Node ends its groups as Close does: Events closes and
//     Multicast fails with ErrClosed.
//   - A sender that cannot settle a link's unknown outcome (about a minute
//     of failed reads, or removed from the view) stops multicasting for
//     good (ErrClosed) rather than risk ordering a batch twice; the member
//     still delivers and can Leave (then Multicast says ErrNotMember). A
//     Leave that cannot be settled returns its error, but if it committed
//     the member's delivery ends at its leave record as after any Leave
//     (no *Evicted). A join that cannot be settled leaves
//     the slot it may have placed (retrying in the background for up to
//     five minutes).
//   - A member that falls behind the trimmed log (possible only once it is
//     no longer in the view) is evicted.
//   - A group keeps its index slot and metadata (64 + MaxMembers×256 bytes
//     and the LogCapacity log) on its home memnode until Node.Delete, even
//     when nobody is in it (its members' queues are reclaimed). Each
//     memnode's index holds IndexSlots (1024) names (ErrIndexFull): a
//     program that makes up a group name per session deletes its groups.
//     Delete takes an empty group only (ErrNotEmpty otherwise): its index
//     slot becomes a tombstone, its metadata region goes to the home
//     memnode's free list and is only ever reused for another group's
//     metadata, whose view, tail, message and tag counters go on from the
//     deleted group's (never back), so a process still holding the old
//     group's address cannot commit a compare of old values against the
//     new group; readMeta also reads the index slot and answers ErrNoGroup
//     once it no longer names the region (a Join under way then looks the
//     name up again). Free-listed regions are never returned to the
//     allocator: the metadata space of a memnode is bounded by the most
//     groups that existed there at once.
//
// This package must not import memnode, memnode/service, replication or
// cmd: it speaks to memnodes only through client.
package gcs
