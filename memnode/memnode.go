package memnode

import (
	"cmp"
	"fmt"
	"math"
	"slices"
)

// Memnode is one participant's state. It is not safe for concurrent use:
// its owner (a Raft group's apply loop) calls it from one goroutine at a
// time.
type Memnode struct {
	cfg Config

	mem memory
	// locks holds exactly the locks of the transactions in inDoubt.
	locks lockTable
	// inDoubt: prepared tids that voted OK and await Commit or Abort. Never
	// garbage-collected; recovery resolves them.
	inDoubt txnTable
	// recorded holds, disjoint from inDoubt, the forced-abort tids (value
	// recForced: aborted before they were prepared here, so that a late
	// Prepare is refused) and the decided ones (value OutcomeCommitted or
	// OutcomeAborted: outcomes of tids that were in doubt here).
	recorded tidSet
	// clock is the largest Entry.Now applied so far (Unix ns), or 0.
	clock int64
	// lastSweep is the clock at the last garbage-collection sweep of
	// forced and decided; lastSweep <= clock.
	lastSweep int64
	// free holds resolved transactions for newTxn to reuse (at most
	// maxFreeTxns): a Prepare then allocates nothing, and the memory of
	// in-doubt state stays in the same, cache-warm objects.
	free []*txnSmall
}

// maxFreeTxns bounds Memnode.free (about 400 bytes each).
const maxFreeTxns = 1024

// span is the byte range [addr, addr+n).
type span struct{ addr, n uint64 }

// txn is an in-doubt transaction: what it locks and what it will write.
// Its byte slices are owned by the Memnode (copied from the entry).
type txn struct {
	tid          TID
	participants []uint64
	preparedAt   int64
	compares     []span
	reads        []Read // re-read for a duplicate Prepare
	writes       []Write
	locks        []lockSpan // what it holds in the lock table (txnLocks)
	small        *txnSmall  // the object that holds this txn, if newTxn made it
}

func (t *txn) itemCount() int { return len(t.compares) + len(t.reads) + len(t.writes) }

// InDoubtTx describes a prepared, undecided transaction.
type InDoubtTx struct {
	TID          TID
	Participants []uint64
	// PreparedAt is the memnode clock (Unix ns) when Prepare was applied.
	PreparedAt int64
}

// Stats counts what a Memnode holds; every count is bounded (see doc.go).
type Stats struct {
	Pages       int   // allocated 4 KiB pages
	Locks       int   // locked ranges held by in-doubt transactions
	InDoubt     int   // prepared, undecided transactions
	ForcedAbort int   // tids recorded as forced-abort (incl. expired, not yet swept)
	Decided     int   // decided tids remembered (incl. expired, not yet swept)
	Now         int64 // the memnode's clock, Unix ns
}

// New returns an empty Memnode. Zero fields of cfg take DefaultConfig's
// values; an invalid cfg is an error.
func New(cfg Config) (*Memnode, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Memnode{
		cfg: cfg,
	}, nil
}

// Config returns the configuration in effect (defaults filled in).
func (m *Memnode) Config() Config { return m.cfg }

func invalid(err error) Result { return Result{FailedCompare: -1, Err: err} }

// Apply applies one log entry and returns its result. An invalid entry
// changes nothing, not even the clock, and returns Result.Err wrapping
// ErrInvalid. Apply keeps no reference to e or its slices.
func (m *Memnode) Apply(e *Entry) Result {
	if e == nil {
		return invalid(fmt.Errorf("%w: nil entry", ErrInvalid))
	}
	if err := m.cfg.ValidateOp(e.Kind, &e.Op); err != nil {
		return invalid(err)
	}
	if e.Kind == KindPrepare {
		if err := CheckParticipants(e.Participants); err != nil {
			return invalid(err)
		}
	}
	if len(e.More) > 0 {
		if e.Kind != KindCommit && e.Kind != KindAbort {
			return invalid(fmt.Errorf("%w: only Commit and Abort carry more tids, not %v", ErrInvalid, e.Kind))
		}
		if len(e.More) > m.cfg.MaxItems {
			return invalid(fmt.Errorf("%w: %d more tids exceed the limit of %d", ErrInvalid, len(e.More), m.cfg.MaxItems))
		}
	}
	if n := len(e.Commits) + len(e.Aborts); n > m.cfg.MaxItems {
		return invalid(fmt.Errorf("%w: %d carried decisions exceed the limit of %d", ErrInvalid, n, m.cfg.MaxItems))
	}
	if len(e.Fences) > 0 {
		if e.Kind != KindExec {
			return invalid(fmt.Errorf("%w: only Exec carries fences, not %v", ErrInvalid, e.Kind))
		}
		if len(e.Fences) > m.cfg.MaxItems {
			return invalid(fmt.Errorf("%w: %d fences exceed the limit of %d", ErrInvalid, len(e.Fences), m.cfg.MaxItems))
		}
	}
	now := max(m.clock, e.Now)
	// Prepare, Abort and AbortUnlessVoted may record their tid; one dated
	// beyond the horizon would never expire.
	limit := addSat(now, m.cfg.Horizon)
	if e.Kind != KindExec && e.Kind != KindCommit {
		if err := m.checkDated(limit, now, e.TID); err != nil {
			return invalid(err)
		}
		if err := m.checkDated(limit, now, e.More...); err != nil {
			return invalid(err)
		}
	}
	if err := m.checkDated(limit, now, e.Aborts...); err != nil {
		return invalid(err)
	}
	if err := m.checkDated(limit, now, e.Fences...); err != nil {
		return invalid(err)
	}
	m.advance(now)
	// Carried decisions first, so that the entry's own step sees the locks
	// they release.
	for _, tid := range e.Commits {
		m.commit(tid)
	}
	for _, tid := range e.Aborts {
		m.abort(tid)
	}
	for _, tid := range e.Fences {
		m.fence(tid)
	}
	switch e.Kind {
	case KindExec:
		if m.fenced(e.TID) {
			return Result{Vote: VoteBadForced, FailedCompare: -1}
		}
		return m.exec(&e.Op, e.NoReads)
	case KindPrepare:
		return m.prepare(e)
	case KindCommit:
		r := m.commit(e.TID)
		for _, tid := range e.More {
			m.commit(tid)
		}
		return r
	case KindAbort:
		r := m.abort(e.TID)
		for _, tid := range e.More {
			m.abort(tid)
		}
		return r
	default: // KindAbortUnlessVoted; ValidateOp rejected the rest
		return m.abortUnlessVoted(e.TID)
	}
}

// CheckParticipants checks a Prepare's participant list: recovery asks
// exactly these memnodes and sends them the decision, so an empty list, or
// one naming a memnode twice, would leave the tid in doubt for good. The
// error wraps ErrInvalid. Whether the list names the memnode that applies
// the Prepare is for the caller to check: a Memnode does not know its id.
// It allocates nothing for a list of up to 16.
func CheckParticipants(ps []uint64) error {
	if len(ps) == 0 {
		return fmt.Errorf("%w: Prepare without participants", ErrInvalid)
	}
	if len(ps) <= 16 {
		for i, p := range ps {
			if slices.Contains(ps[:i], p) {
				return fmt.Errorf("%w: Prepare names participant %d twice", ErrInvalid, p)
			}
		}
		return nil
	}
	sorted := slices.Sorted(slices.Values(ps))
	for i := 1; i < len(sorted); i++ {
		if sorted[i] == sorted[i-1] {
			return fmt.Errorf("%w: Prepare names participant %d twice", ErrInvalid, sorted[i])
		}
	}
	return nil
}

// checkDated returns an error if a tid is dated after limit.
func (m *Memnode) checkDated(limit, now int64, tids ...TID) error {
	for _, tid := range tids {
		if tid.Time > limit {
			return fmt.Errorf("%w: tid %v is dated more than the horizon (%d ns) after the memnode clock %d",
				ErrInvalid, tid, m.cfg.Horizon, now)
		}
	}
	return nil
}

// exec is the one-phase minitransaction: lock check, compare, read, write.
func (m *Memnode) exec(op *Op, noReads bool) Result {
	if len(op.Appends) > 0 {
		return m.execAppends(op, noReads)
	}
	if m.locks.opConflicts(op) {
		return Result{Vote: VoteBadLock, FailedCompare: -1}
	}
	if i := m.failedCompare(op.Compares); i >= 0 {
		// The reads as of the failure: the caller of a compare-and-swap
		// learns the current value without another round trip.
		return Result{Vote: VoteBadCmp, FailedCompare: i, Reads: m.readUnless(noReads, op.Reads)}
	}
	r := Result{Vote: VoteOK, FailedCompare: -1, Reads: m.readUnless(noReads, op.Reads)}
	for _, w := range op.Writes {
		m.mem.write(w.Addr, w.Data)
	}
	return r
}

// prepare is phase one of two-phase commit. Votes, in order: an in-doubt
// tid votes OK again; a decided tid answers its outcome; a tid older than
// the horizon is refused; then BAD-LOCK, BAD-FORCED, BAD-CMP, OK.
func (m *Memnode) prepare(e *Entry) Result {
	if t := m.inDoubt.get(e.TID); t != nil {
		// Duplicate delivery. The shared locks kept the read items
		// unchanged since the first delivery.
		return Result{Vote: VoteOK, FailedCompare: -1, Reads: m.readUnless(e.NoReads, t.reads)}
	}
	if m.expired(e.TID) {
		// An expired tid's records count as absent.
		return Result{Vote: VoteBadForced, FailedCompare: -1}
	}
	rec := m.recorded.get(e.TID)
	if rec == recCommitted || rec == recAborted {
		return decidedVote(Outcome(rec))
	}
	// The locks are taken as they are checked (tryAcquire), and given
	// back if a later check refuses: the votes' order is unchanged.
	t := m.newTxn(e.TID, e.Participants, m.clock, &e.Op)
	if !m.locks.tryAcquire(t) {
		m.recycle(t)
		return Result{Vote: VoteBadLock, FailedCompare: -1}
	}
	if rec == recForced {
		m.locks.release(t)
		m.recycle(t)
		return Result{Vote: VoteBadForced, FailedCompare: -1}
	}
	if i := m.failedCompare(e.Op.Compares); i >= 0 {
		m.locks.release(t)
		m.recycle(t)
		return Result{Vote: VoteBadCmp, FailedCompare: i}
	}
	m.inDoubt.put(t)
	return Result{Vote: VoteOK, FailedCompare: -1, Reads: m.readUnless(e.NoReads, e.Op.Reads)}
}

// decidedVote is Prepare's and AbortUnlessVoted's answer for a decided tid.
func decidedVote(o Outcome) Result {
	v := VoteBadForced
	if o == OutcomeCommitted {
		v = VoteOK
	}
	return Result{Vote: v, FailedCompare: -1, Outcome: o}
}

// newTxn copies what an in-doubt transaction keeps from a Prepare. A small
// transaction (a few participants and items, a few dozen bytes of writes:
// the usual compare-and-swaps) takes one allocation.
func (m *Memnode) newTxn(tid TID, participants []uint64, preparedAt int64, op *Op) *txn {
	var x *txnSmall
	if n := len(m.free); n > 0 {
		x, m.free = m.free[n-1], m.free[:n-1]
	} else {
		x = new(txnSmall)
	}
	t := &x.txn
	t.small = x
	t.tid, t.preparedAt = tid, preparedAt
	if len(participants) > 0 {
		t.participants = carve(x.parts[:], len(participants))
		copy(t.participants, participants)
	}
	if len(op.Reads) > 0 {
		t.reads = slices.Clone(op.Reads)
	}
	if len(op.Compares) > 0 {
		t.compares = carve(x.compares[:], len(op.Compares))
		for i, c := range op.Compares {
			t.compares[i] = span{c.Addr, uint64(len(c.Data))}
		}
	}
	if len(op.Writes) > 0 {
		n := 0
		for _, w := range op.Writes {
			n += len(w.Data)
		}
		t.writes = carve(x.writes[:], len(op.Writes))
		buf := carve(x.data[:], n)[:0]
		for i, w := range op.Writes {
			buf = append(buf, w.Data...)
			t.writes[i] = Write{Addr: w.Addr, Data: buf[len(buf)-len(w.Data) : len(buf) : len(buf)]}
		}
	}
	if n := len(op.Compares) + len(op.Reads) + len(op.Writes); n > 0 {
		t.locks = txnLocks(carve(x.locks[:], n)[:0], t.compares, t.reads, t.writes)
	}
	return t
}

// txnSmall is a txn with room for a small transaction's slices.
type txnSmall struct {
	txn
	parts    [3]uint64
	compares [3]span
	writes   [3]Write
	locks    [4]lockSpan
	data     [24]byte
}

// carve returns inline[:n] if it fits, else a new slice of n elements.
func carve[T any](inline []T, n int) []T {
	if n <= len(inline) {
		return inline[:n:n]
	}
	return make([]T, n)
}

// cloneWrites deep-copies ws, carving the data from one buffer.
func cloneWrites(ws []Write) []Write {
	if len(ws) == 0 {
		return nil
	}
	n := 0
	for _, w := range ws {
		n += len(w.Data)
	}
	buf := make([]byte, 0, n)
	out := make([]Write, len(ws))
	for i, w := range ws {
		buf = append(buf, w.Data...)
		out[i] = Write{Addr: w.Addr, Data: buf[len(buf)-len(w.Data) : len(buf) : len(buf)]}
	}
	return out
}

// commit applies an in-doubt tid's writes and releases its locks. For any
// other tid it changes nothing and answers what it knows (outcome).
func (m *Memnode) commit(tid TID) Result {
	t := m.inDoubt.get(tid)
	if t == nil {
		return Result{FailedCompare: -1, Outcome: m.outcome(tid)}
	}
	for _, w := range t.writes {
		m.mem.write(w.Addr, w.Data)
	}
	m.resolve(t, OutcomeCommitted)
	return Result{FailedCompare: -1, Outcome: OutcomeCommitted}
}

// abort releases an in-doubt tid's locks, or forces a future Prepare of an
// unknown tid to be refused.
func (m *Memnode) abort(tid TID) Result {
	if t := m.inDoubt.get(tid); t != nil {
		m.resolve(t, OutcomeAborted)
		return Result{FailedCompare: -1, Outcome: OutcomeAborted}
	}
	if o := m.outcome(tid); o != OutcomeUnknown {
		// Already decided: an Abort of a committed tid does not undo it.
		// Or expired: it may have committed here, so the answer must not
		// claim it aborted (and a late Prepare is refused anyway).
		return Result{FailedCompare: -1, Outcome: o}
	}
	m.force(tid)
	return Result{FailedCompare: -1, Outcome: OutcomeAborted}
}

// abortUnlessVoted is recovery's phase one: a participant that voted keeps
// its vote; one that did not votes BAD-FORCED and will refuse the Prepare.
// One that no longer knows (an expired tid not in doubt) casts no vote and
// answers OutcomeExpired: it may have voted OK and committed, and its
// records were dropped; a BAD-FORCED would let recovery abort a committed
// tid at the other participants.
func (m *Memnode) abortUnlessVoted(tid TID) Result {
	if m.inDoubt.get(tid) != nil {
		return Result{Vote: VoteOK, FailedCompare: -1}
	}
	switch o := m.outcome(tid); o {
	case OutcomeExpired:
		return Result{FailedCompare: -1, Outcome: o}
	case OutcomeCommitted, OutcomeAborted:
		return decidedVote(o)
	}
	m.force(tid)
	return Result{Vote: VoteBadForced, FailedCompare: -1}
}

// resolve ends an in-doubt transaction with outcome o.
func (m *Memnode) resolve(t *txn, o Outcome) {
	m.locks.release(t)
	m.inDoubt.del(t.tid)
	if !m.expired(t.tid) {
		m.recorded.set(t.tid, uint8(o))
	}
	// Nothing refers to a resolved txn any more (InDoubtWrites' slices
	// are valid only until the next Apply, the one that resolves it).
	m.recycle(t)
}

// recycle keeps t's object for a later newTxn; nothing may refer to t.
func (m *Memnode) recycle(t *txn) {
	if x := t.small; x != nil && len(m.free) < maxFreeTxns {
		// Only what holds pointers is cleared: newTxn writes every
		// element of an inline array it hands out, and clearing all of
		// txnSmall, cold by the time its tid resolves, cost a store to
		// each of its cache lines.
		x.txn = txn{}
		x.writes = [len(x.writes)]Write{}
		m.free = append(m.free, x)
	}
}

// force records tid, neither in doubt, recorded nor expired, as
// forced-abort. (An expired tid need not be: Prepare refuses it anyway.)
func (m *Memnode) force(tid TID) {
	m.recorded.set(tid, recForced)
}

// fence records a one-phase attempt's tid as forced-abort unless it is in
// doubt, decided or expired here (Entry.Fences).
func (m *Memnode) fence(tid TID) {
	if m.inDoubt.get(tid) == nil && !m.expired(tid) && m.recorded.get(tid) == 0 {
		m.force(tid)
	}
}

// fenced reports whether a one-phase attempt must not apply: its tid was
// fenced, or it is older than the horizon (its fence, if any, may have been
// swept; Prepare refuses such tids too). An Exec without a tid (the zero
// TID, from callers that never fence) is never fenced.
func (m *Memnode) fenced(tid TID) bool {
	if tid == (TID{}) {
		return false
	}
	return m.expired(tid) || m.recorded.get(tid) == recForced
}

// Values of Memnode.recorded.
const (
	recCommitted = uint8(OutcomeCommitted)
	recAborted   = uint8(OutcomeAborted)
	recForced    = 3
)

// outcome returns what the memnode knows of a tid that is not in doubt:
// OutcomeExpired if it is older than the horizon (its records, if any,
// count as absent, which makes results independent of when the sweep
// runs), else its decided outcome, else OutcomeUnknown.
func (m *Memnode) outcome(tid TID) Outcome {
	if m.expired(tid) {
		return OutcomeExpired
	}
	if v := m.recorded.get(tid); v == recCommitted || v == recAborted {
		return Outcome(v)
	}
	return OutcomeUnknown
}

// expired reports whether tid is older than the horizon.
func (m *Memnode) expired(tid TID) bool {
	return tid.Time < subSat(m.clock, m.cfg.Horizon)
}

// advance sets the clock to now (>= clock) and sweeps expired forced and
// decided entries once the clock has moved Horizon/8 since the last sweep,
// so each entry is visited O(1) times between its insertion and removal.
func (m *Memnode) advance(now int64) {
	m.clock = now
	interval := uint64(max(1, m.cfg.Horizon/8))
	if uint64(now)-uint64(m.lastSweep) < interval { // now >= lastSweep
		return
	}
	m.lastSweep = now
	m.recorded.sweep(subSat(m.clock, m.cfg.Horizon))
}

// failedCompare returns the index of the first compare that does not match,
// or -1.
func (m *Memnode) failedCompare(cs []Compare) int {
	for i := range cs {
		if !m.mem.equal(cs[i].Addr, cs[i].Data) {
			return i
		}
	}
	return -1
}

// readUnless returns read(rs), or nil if the caller discards the reads.
func (m *Memnode) readUnless(discard bool, rs []Read) [][]byte {
	if discard {
		return nil
	}
	return m.read(rs)
}

// read returns fresh copies of the read items, carved from one buffer.
func (m *Memnode) read(rs []Read) [][]byte {
	if len(rs) == 0 {
		return nil
	}
	n := 0
	for _, r := range rs {
		n += int(r.Len)
	}
	buf := make([]byte, n)
	out := make([][]byte, len(rs))
	for i, r := range rs {
		out[i] = buf[:r.Len:r.Len]
		m.mem.readInto(out[i], r.Addr)
		buf = buf[r.Len:]
	}
	return out
}

// Query answers a read-only minitransaction (compare and read items only)
// against the current state, after the caller made sure the state is
// linearizable (a Raft ReadIndex). A compare or read range that overlaps an
// exclusive lock of an in-doubt tid votes BAD-LOCK (its value may be about
// to change); a failed compare votes BAD-CMP. Query changes nothing; now is
// the reader's clock and does not advance the memnode's.
func (m *Memnode) Query(now int64, op *Op) Result {
	r := m.queryVote(now, op)
	if queryReads(&r) {
		r.Reads = m.read(op.Reads)
	}
	return r
}

// queryVote is Query without the reads.
func (m *Memnode) queryVote(now int64, op *Op) Result {
	_ = now
	if op == nil {
		return invalid(fmt.Errorf("%w: nil query", ErrInvalid))
	}
	if len(op.Writes) > 0 {
		return invalid(fmt.Errorf("%w: query carries %d write items", ErrInvalid, len(op.Writes)))
	}
	if len(op.Appends) > 0 || len(op.Relocs) > 0 {
		return invalid(fmt.Errorf("%w: query carries %d appends and %d relocs", ErrInvalid, len(op.Appends), len(op.Relocs)))
	}
	if err := m.cfg.ValidateOp(KindExec, op); err != nil {
		return invalid(err)
	}
	if m.locks.queryConflicts(op) {
		return Result{Vote: VoteBadLock, FailedCompare: -1}
	}
	if i := m.failedCompare(op.Compares); i >= 0 {
		return Result{Vote: VoteBadCmp, FailedCompare: i}
	}
	return Result{Vote: VoteOK, FailedCompare: -1}
}

// queryReads reports whether a query with result r answers its reads: when
// it committed, and with a failed compare (the values as of the failure).
func queryReads(r *Result) bool {
	return r.Err == nil && (r.Vote == VoteOK || r.Vote == VoteBadCmp)
}

// InDoubt lists the in-doubt transactions sorted by TID. The caller owns
// the returned slices.
func (m *Memnode) InDoubt() []InDoubtTx {
	out := make([]InDoubtTx, 0, m.inDoubt.len())
	for _, tid := range sortedTIDs(m.inDoubt.tids) {
		t := m.inDoubt.get(tid)
		out = append(out, InDoubtTx{TID: tid, Participants: slices.Clone(t.participants), PreparedAt: t.preparedAt})
	}
	return out
}

// InDoubtWrites returns the write items an in-doubt tid will apply if it
// commits, and whether tid is in doubt. The slices belong to the Memnode:
// the caller must not modify them nor keep them past the next Apply. It
// lets an observer learn which bytes a Commit is about to write.
func (m *Memnode) InDoubtWrites(tid TID) ([]Write, bool) {
	t := m.inDoubt.get(tid)
	if t == nil {
		return nil, false
	}
	return t.writes, true
}

// Stats returns the current counts.
func (m *Memnode) Stats() Stats {
	return Stats{
		Pages:       m.mem.npages,
		Locks:       m.locks.ranges,
		InDoubt:     m.inDoubt.len(),
		ForcedAbort: m.recorded.len(recForced),
		Decided:     m.recorded.len(recCommitted) + m.recorded.len(recAborted),
		Now:         m.clock,
	}
}

// String formats t as client.seq@time.
func (t TID) String() string { return fmt.Sprintf("%d.%d@%d", t.Client, t.Seq, t.Time) }

// Compare orders TIDs by Client, then Seq, then Time.
func (t TID) Compare(u TID) int {
	if c := cmp.Compare(t.Client, u.Client); c != 0 {
		return c
	}
	if c := cmp.Compare(t.Seq, u.Seq); c != 0 {
		return c
	}
	return cmp.Compare(t.Time, u.Time)
}

func sortedTIDs(seq func(func(TID) bool)) []TID {
	return slices.SortedFunc(seq, TID.Compare)
}

func addSat(a, b int64) int64 { // b >= 0
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func subSat(a, b int64) int64 { // b >= 0
	if a < math.MinInt64+b {
		return math.MinInt64
	}
	return a - b
}
