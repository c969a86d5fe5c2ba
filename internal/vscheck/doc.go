// Package vscheck checks recorded group-communication histories against the
// virtual-synchrony properties that gcs promises (DESIGN.md §5, §7).
//
// # History format
//
// A History is a flat list of Events. Every event belongs to one member
// incarnation (Event.Member, e.g. "p1#3"); a process that restarts is a new
// member. The events of one member must appear in the order that member
// observed them (its local order); events of different members may be
// interleaved arbitrarily, since nothing about real time is checked.
// History.Add is safe for concurrent use, so each member may record from its
// own goroutine.
//
//   - Install{View, Members}: the member installed view View whose member
//     list is Members (incarnation names; sorted by the recorder, but Check
//     sorts a copy if not). View ids are positive; 0 means "unknown"
//     elsewhere.
//   - Send{Seq, View, Payload}: the member multicast its message number Seq
//     (1, 2, ... per incarnation; Sender may be left empty and is taken to be
//     Member). View is the view the member believed it was in when it handed
//     the message to the gcs, or 0 if unknown. Record one Send per message.
//     A message that the gcs may order in a later view than the one it was
//     submitted in (for example after a failed link is retried in a new view)
//     must be recorded with View 0, because delivered-in-sent-view holds
//     Send.View to the view of delivery.
//   - Deliver{Sender, Seq, View, Payload}: the member delivered message
//     (Sender, Seq) while in view View (0 if the recorder does not know; the
//     view is then taken from the member's last Install).
//   - Leave, Crash, Evict: the end of the incarnation: it left gracefully,
//     crashed, or learned it was removed from the group. Nothing may follow.
//
// Message identity is (Sender, Seq). Payloads are optional: an empty Payload
// means "not recorded", so a message whose real payload is empty cannot be
// checked for corruption.
//
// # Properties
//
// Check attributes every delivery to the view the member had installed last
// before it (its current view). Only the first delivery of a message by a
// member counts for the order and set properties (repeats are reported by
// no-duplicates), and events after a member's Leave/Crash/Evict are reported
// by no-delivery-after-leave and otherwise ignored, so that one fault is
// reported under one property. Each Violation names one property:
//
//   - "same-views": (a) all members that install view v install it with the
//     same member list; (b) each member installs views in strictly increasing
//     id order; (c) no member installs a view whose list does not include it;
//     (d) a member that installs v and then w does not skip a view u, v<u<w,
//     whose list (as installed by others) includes it; (e) with
//     Options.Complete, every member that did not crash, leave or get
//     evicted ended in the highest view anybody installed (a drained survivor
//     has read every view change).
//   - "view-synchrony": let D(v) be the set of messages delivered in view v
//     by any member (including members that later crashed). Every member that
//     installs a later view after v must have delivered exactly D(v) while in
//     v; with Options.Complete, so must every survivor in its final view.
//     This is the "uniform" (durable) form: it implies that two members that
//     both move from v to the next view delivered the same set in v, and in
//     addition that a message delivered by a member that crashed in v is
//     delivered by everyone who moved on, which gcs guarantees because the
//     order log is the single source of truth. Also reported here: a
//     delivery before the member installed any view, and a Deliver whose
//     non-zero View differs from the member's current view.
//   - "total-order": there is one order of all delivered messages with which
//     every member's delivery order agrees. This implies the pairwise form
//     (any two members deliver their common messages in the same relative
//     order) and also rejects cycles spread over three or more members that
//     no pairwise comparison sees (p delivers a<b, q b<c, r c<a). The whole
//     history is one order, across views.
//   - "fifo": for each member and sender, the member delivers the sender's
//     messages in increasing Seq; between the lowest and highest Seq it
//     delivered from that sender it misses none; and below the lowest it
//     misses none that was delivered (by anyone) in a view at or after the
//     member's first installed view, i.e. a joiner may start in the middle
//     of a sender's stream, but only at the point where it joined.
//   - "no-duplicates": no member delivers the same (Sender, Seq) twice.
//   - "no-creation": every delivered message has a Send; when the Send has a
//     payload, every delivery with a payload carries the same one; when it
//     has none, all deliveries with a payload agree with each other.
//   - "self-delivery" (only with Options.Complete): a member that sent m and
//     did not crash, leave or get evicted delivered m.
//   - "no-delivery-after-leave": a member records no event at all after its
//     Leave, Crash or Evict.
//   - "delivered-in-sent-view": a message whose Send has View != 0 is
//     delivered in that view by everyone who delivers it (gcs links a
//     message only if the group is still in its sender's view).
//   - "malformed": events Check cannot interpret: no Member, an unknown Kind,
//     Install of view 0, Send or Deliver with Seq 0 or without a sender, a
//     Send whose Sender is not its Member, the same Seq sent twice. These are
//     recorder bugs; they are reported rather than silently ignored.
//
// At most 100 violations are listed per property; one extra violation says
// how many more were found. Violations are grouped by property in the order
// above and are deterministic for a given History.
//
// # Algorithms and cost
//
// Check interns member names and message ids, splits the events by member
// (stable, so local order is kept) and makes one pass over each member's
// events, which yields per-member install lists and per-member lists of first
// deliveries tagged with their view. The properties are then checked over
// these lists:
//
//   - view-synchrony sorts the (view, message) pairs once to get D(v), counts
//     each member's deliveries per view, and only on a count mismatch compares
//     sets to name the missing messages;
//   - total-order builds the precedence graph whose nodes are messages and
//     whose edges are consecutive deliveries at some member (at most one edge
//     per delivery, deduplicated by sorting) and decides acyclicity with
//     Kahn's algorithm; only if a cycle exists, Tarjan's algorithm finds the
//     strongly connected components, and each non-trivial component is
//     reported once with a shortest cycle as witness;
//   - fifo sorts each member's deliveries by sender (stably);
//   - no-creation and delivered-in-sent-view are lookups per delivery.
//
// Everything is O(E log E) in the number of events E (the sorts), with
// memory linear in E; there is no per-pair-of-members work. A 100k-event
// history checks in tens of milliseconds (BenchmarkCheck).
//
// # Limitations
//
//   - Only safety is checked, plus the "eventually" properties that
//     Options.Complete makes decidable. Without Complete a history that
//     simply stops early passes; with Complete the recorder must really have
//     drained every survivor, or the final-view checks report it.
//   - Real time is not checked: nothing relates events of different members
//     except message identity and view ids (no causal order, no
//     latency bounds, no check that a Send precedes its deliveries in real
//     time).
//   - Views are checked for agreement and order, not for being the right
//     views: Check does not verify that a crashed member is eventually
//     removed, that Evict follows a view that excludes the member, or that a
//     joiner's state transfer matches what it missed.
//   - Delivery of view changes themselves is not part of total-order: views
//     are ordered among themselves by id, and messages by view via
//     view-synchrony and delivered-in-sent-view, but a message is not checked
//     against a view change in the order of a member that never delivered it.
//   - Messages that were sent but never delivered by anybody are not reported
//     unless their sender is a survivor of a Complete history (self-delivery):
//     a crashed, departed or evicted sender's unordered messages may be lost.
//   - The witness of a total-order violation is one cycle per strongly
//     connected component; a component may contain further cycles.
package vscheck
