package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// part is the projection of a Tx onto one memnode, with the maps from the
// memnode's item indexes back to the Tx's.
type part struct {
	memnode  uint64
	compares []*tuttipb.Compare
	reads    []*tuttipb.Read
	writes   []*tuttipb.Write
	appends  []*tuttipb.Append // only when the Tx touches this memnode alone
	relocs   []*tuttipb.Reloc
	cmpIdx   []int // compares[i] is Tx compare cmpIdx[i]
	readIdx  []int // reads[i] is Tx read readIdx[i]
}

// split groups t's items by memnode, in order of first appearance
// (compares, then reads, then writes), appending the parts to buf (a
// caller's array on its stack, usually). It allocates per kind of item,
// not per item: the wire items of all parts, their pointers and index maps
// share one array per kind (pack3).
func (t *Tx) split(buf []part) []part {
	type count struct {
		mn                uint64
		cmps, reads, wrts int
	}
	var inline [4]count
	counts := inline[:0] // few memnodes: a linear search beats a map
	at := func(mn uint64) int {
		for i := range counts {
			if counts[i].mn == mn {
				return i
			}
		}
		counts = append(counts, count{mn: mn})
		return len(counts) - 1
	}
	for _, c := range t.compares {
		counts[at(c.memnode)].cmps++
	}
	for _, r := range t.reads {
		counts[at(r.memnode)].reads++
	}
	for _, w := range t.writes {
		counts[at(w.memnode)].wrts++
	}
	for _, a := range t.appends {
		at(a.memnode)
	}
	all := append(buf, make([]part, len(counts))...)
	parts := all[len(buf):]
	cmps, cmpPtrs, cmpIdx := pack3[tuttipb.Compare, *tuttipb.Compare, int](len(t.compares))
	rds, rdPtrs, rdIdx := pack3[tuttipb.Read, *tuttipb.Read, int](len(t.reads))
	wrs, wrPtrs := pack2[tuttipb.Write, *tuttipb.Write](len(t.writes))
	// Each part's slices are consecutive windows of the shared ones, filled
	// below in item order.
	var nc, nr, nw int
	for i, c := range counts {
		p := &parts[i]
		p.memnode = c.mn
		if c.cmps > 0 {
			p.compares, p.cmpIdx = cmpPtrs[nc:nc:nc+c.cmps], cmpIdx[nc:nc:nc+c.cmps]
			nc += c.cmps
		}
		if c.reads > 0 {
			p.reads, p.readIdx = rdPtrs[nr:nr:nr+c.reads], rdIdx[nr:nr:nr+c.reads]
			nr += c.reads
		}
		if c.wrts > 0 {
			p.writes = wrPtrs[nw : nw : nw+c.wrts]
			nw += c.wrts
		}
	}
	for i, c := range t.compares {
		p := &parts[at(c.memnode)]
		w := &cmps[i]
		w.Addr, w.Data = c.addr, c.data
		p.compares = append(p.compares, w)
		p.cmpIdx = append(p.cmpIdx, i)
	}
	for i, r := range t.reads {
		p := &parts[at(r.memnode)]
		w := &rds[i]
		w.Addr, w.Len = r.addr, r.n
		p.reads = append(p.reads, w)
		p.readIdx = append(p.readIdx, i)
	}
	for i, wr := range t.writes {
		p := &parts[at(wr.memnode)]
		w := &wrs[i]
		w.Addr, w.Data = wr.addr, wr.data
		p.writes = append(p.writes, w)
	}
	if len(t.appends) > 0 && len(parts) == 1 {
		// Exec refuses appends on several memnodes: with one, the
		// part's write and append indexes are the Tx's.
		t.wireAppends(&parts[0])
	}
	return all
}

// wireAppends puts t's appends and relocs, all on p's memnode, into p.
func (t *Tx) wireAppends(p *part) {
	as := make([]tuttipb.Append, len(t.appends))
	p.appends = make([]*tuttipb.Append, len(t.appends))
	var rls []*tuttipb.Reloc
	reloc := func(r Reloc, write bool, item int) {
		rls = append(rls, &tuttipb.Reloc{Append: uint32(r.Append), Count: r.Count, Write: write, Item: uint32(item), Off: r.Off})
	}
	for i, ta := range t.appends {
		a := &ta.a
		as[i] = tuttipb.Append{Tail: a.Tail, Head: a.Head, Limit: a.Limit, Ring: a.Ring, Size: a.Size,
			Count: a.Count, Add: a.Add, Data: a.Data}
		p.appends[i] = &as[i]
		for _, r := range a.Relocs {
			reloc(r, false, i)
		}
	}
	for i, w := range t.writes {
		for _, r := range w.relocs {
			reloc(r, true, i)
		}
	}
	p.relocs = rls
}

// checkAppends checks what the client can of t's appends and relocs
// before anything is sent; the memnode checks the rest.
func (t *Tx) checkAppends(parts []part) error {
	if len(t.appends) > 0 && len(parts) != 1 {
		return fmt.Errorf("%w: appends need a minitransaction on one memnode, not %d", ErrInvalid, len(parts))
	}
	check := func(what string, rs []Reloc) error {
		for _, r := range rs {
			if r.Append < 0 || r.Append >= len(t.appends) {
				return fmt.Errorf("%w: %s reloc names append %d of %d", ErrInvalid, what, r.Append, len(t.appends))
			}
		}
		return nil
	}
	for _, a := range t.appends {
		if err := check("an append's", a.a.Relocs); err != nil {
			return err
		}
	}
	for _, w := range t.writes {
		if err := check("a write's", w.relocs); err != nil {
			return err
		}
	}
	return nil
}

func (p *part) request(kind tuttipb.Kind, tid *tuttipb.Tid, participants []uint64) *tuttipb.Request {
	return p.fill(new(tuttipb.Request), kind, tid, participants)
}

// fill makes req, a zero Request, p's request and returns it.
func (p *part) fill(req *tuttipb.Request, kind tuttipb.Kind, tid *tuttipb.Tid, participants []uint64) *tuttipb.Request {
	req.Memnode, req.Kind, req.Tid, req.Participants = p.memnode, kind, tid, participants
	req.Compares, req.Reads, req.Writes, req.Appends, req.Relocs = p.compares, p.reads, p.writes, p.appends, p.relocs
	return req
}

// Exec runs the minitransaction: atomically, if every compare matches, the
// reads are returned and the writes applied. One memnode: one phase (one Raft
// entry, or a ReadIndex read when there are no writes). Several memnodes:
// two-phase commit. BAD-LOCK votes are retried with a new tid after
// randomized exponential backoff; BAD-FORCED ones once (ErrFenced after
// that).
//
// A failed compare is a Result with Committed false, not an error. Errors
// say why nothing could be decided; only ErrUnknownOutcome means the
// minitransaction may have been applied, and ErrReadsLost (which matches
// ErrUnknownOutcome too) that it was, without some of its reads. With a
// ctx that has already ended nothing is sent: the error wraps ctx's.
func (c *Client) Exec(ctx context.Context, tx *Tx) (*Result, error) {
	if tx == nil || tx.Empty() {
		return nil, fmt.Errorf("%w: no items", ErrInvalid)
	}
	var inline [2]part
	parts := tx.split(inline[:0])
	if err := tx.checkAppends(parts); err != nil {
		return nil, err
	}
	if len(tx.fences) > 0 {
		if len(parts) != 1 {
			return nil, fmt.Errorf("%w: fences need a minitransaction on one memnode, not %d", ErrInvalid, len(parts))
		}
		if maxItems, _ := c.limits(); len(tx.fences) > maxItems {
			return nil, fmt.Errorf("%w: %d fences exceed the limit of %d", ErrInvalid, len(tx.fences), maxItems)
		}
	}
	if err := ctx.Err(); err != nil {
		// Nothing is sent for a caller that has already given up: sent,
		// it could apply while Exec reports an error (an unknown
		// outcome, or a two-phase attempt settled on a context of its
		// own).
		return nil, &Error{Memnode: parts[0].memnode, Err: err, Detail: "not sent"}
	}
	if len(parts) == 1 {
		return c.exec1(ctx, tx, &parts[0])
	}
	return c.exec2(ctx, tx, parts)
}

// settleTimeout bounds a settling step once the caller's ctx has ended.
const settleTimeout = 5 * time.Second

// Settle runs tx, on the memnode of the attempts, as the step that settles
// one-phase attempts whose outcome is unknown (attempts are their errors;
// those that name none are skipped): logged and fencing them (Tx.Fence),
// so its reads and writes come after every attempt that will ever apply.
// tx must touch exactly the one memnode the attempts ran on
// (Error.Memnode): an attempt named by an error of another memnode makes
// Settle fail with ErrInvalid before anything is sent or added to tx,
// since a fence on the wrong memnode settles nothing and the attempt could
// still land after the read said it had not.
// When ctx has ended, which is often why an outcome is unknown, it runs on
// a context of its own (at most 5 s): with ctx it could only fail, and the
// caller could not tell what happened.
func (c *Client) Settle(ctx context.Context, tx *Tx, attempts ...error) (*Result, error) {
	if tx == nil {
		return c.Exec(ctx, tx) // ErrInvalid
	}
	var tids []TID
	if mns := tx.Memnodes(); len(mns) == 1 {
		var err error
		if tids, err = attemptsOn(mns[0], attempts); err != nil {
			return nil, fmt.Errorf("settle: %w", err)
		}
	} else {
		// Exec refuses fences on other than one memnode, and tx without
		// items; an attempt without a tid adds no fence.
		for _, a := range attempts {
			tids = append(tids, UnknownAttempt(a))
		}
	}
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		defer cancel()
	}
	return c.Exec(ctx, tx.Fence(tids...))
}

func (c *Client) exec1(ctx context.Context, tx *Tx, p *part) (*Result, error) {
	kind := tuttipb.Kind_KIND_EXEC
	switch {
	case len(p.appends) > 0:
		// A kind servers that do not know appends refuse, rather than
		// apply the other items without them.
		kind = tuttipb.Kind_KIND_EXEC_APPEND
	case len(p.writes) == 0 && !tx.logged:
		kind = tuttipb.Kind_KIND_READ
	}
	for attempt := 0; attempt < c.cfg.Retry.MaxAttempts; attempt++ {
		if attempt > 0 {
			if err := c.backoff(ctx, attempt-1); err != nil {
				return nil, &Error{Memnode: p.memnode, Err: err, Detail: "retrying after BAD-LOCK"}
			}
		}
		w := new(struct { // one allocation
			tid tuttipb.Tid
			req tuttipb.Request
		})
		tid := c.stampTid(&w.tid)
		req := p.fill(&w.req, kind, tid, nil)
		for _, f := range tx.fences {
			req.FenceTids = append(req.FenceTids, f.wire())
		}
		r, err := c.call(ctx, req)
		if err != nil {
			if e := (*Error)(nil); errors.As(err, &e) && errors.Is(e.Err, ErrUnknownOutcome) {
				e.TID = tidFromWire(tid)
			}
			return nil, err
		}
		if r.GetStatus() == tuttipb.Status_STATUS_UNKNOWN_OUTCOME {
			return nil, &Error{Memnode: p.memnode, Err: ErrUnknownOutcome, Detail: r.GetError(), TID: tidFromWire(tid)}
		}
		switch r.GetVote() {
		case tuttipb.Vote_VOTE_OK:
			res := &Result{Committed: true, FailedCompare: -1, Reads: make([][]byte, len(tx.reads))}
			fillReads(res, p, r)
			if len(p.appends) > 0 {
				ap := r.GetAppended()
				if len(ap) != len(p.appends) {
					// A server older than appends ignores them and
					// applies the rest.
					return nil, &Error{Memnode: p.memnode, Err: ErrUnknownOutcome, TID: tidFromWire(tid),
						Detail: fmt.Sprintf("the memnode answered %d appends of %d: a server that does not know appends applied the other items without them", len(ap), len(p.appends))}
				}
				res.Appended = make([]Appended, len(ap))
				for i, a := range ap {
					res.Appended[i] = Appended{Tail: a.GetTail(), Count: a.GetCount()}
				}
			}
			return res, nil
		case tuttipb.Vote_VOTE_BAD_CMP:
			res := &Result{FailedCompare: mapCompare(p, r.GetFailedCompare())}
			if len(tx.reads) > 0 && len(r.GetReads()) == len(p.reads) {
				// Servers before this answer carry no reads here.
				res.Reads = make([][]byte, len(tx.reads))
				fillReads(res, p, r)
			}
			return res, nil
		case tuttipb.Vote_VOTE_BAD_LOCK:
			continue
		case tuttipb.Vote_VOTE_BAD_FORCED:
			// Only a fenced or too old tid: retrying with a new tid of
			// the same clock would not help.
			return nil, &Error{Memnode: p.memnode, Err: ErrFenced, Detail: fmt.Sprintf("tid %v", tidFromWire(tid))}
		default:
			return nil, &Error{Memnode: p.memnode, Err: ErrUnavailable, Detail: fmt.Sprintf("unexpected vote %v", r.GetVote())}
		}
	}
	return nil, &Error{Memnode: p.memnode, Err: ErrContention, Detail: fmt.Sprintf("items still locked after %d attempts", c.cfg.Retry.MaxAttempts)}
}

func fillReads(res *Result, p *part, r *tuttipb.Response) {
	for i, d := range r.GetReads() {
		if i < len(p.readIdx) {
			res.Reads[p.readIdx[i]] = d
		}
	}
}

// mapCompare maps a memnode's failed compare index to the Tx's. An index
// past the compares is an append refused by its Limit (only on a Tx of one
// memnode, where the part's compares are the Tx's).
func mapCompare(p *part, i int32) int {
	if i >= 0 && int(i) < len(p.cmpIdx) {
		return p.cmpIdx[i]
	}
	if n := int(i) - len(p.cmpIdx); n >= 0 && n < len(p.appends) {
		return int(i)
	}
	return -1
}

type vote struct {
	r   *tuttipb.Response
	err error
}

// exec2 is Sinfonia's two-phase commit with the client as coordinator. The
// coordinator logs nothing: a minitransaction is committed exactly when every
// participant has voted OK in its Raft log, and memnode recovery resolves
// tids whose coordinator vanished (Recover).
func (c *Client) exec2(ctx context.Context, tx *Tx, parts []part) (*Result, error) {
	for i := range parts {
		// Before any Prepare leaves: one naming a memnode that does not
		// exist would leave the tid in doubt at the others if this
		// coordinator died, since recovery could not reach that one.
		if err := c.knownMemnode(ctx, parts[i].memnode); err != nil {
			return nil, err
		}
	}
	var (
		votesInline [manyInline]vote
		reqsInline  [manyInline]*tuttipb.Request
	)
	votes := carve(votesInline[:], len(parts))
	refused := 0 // attempts refused with BAD-FORCED
	for attempt := 0; attempt < c.cfg.Retry.MaxAttempts; attempt++ {
		if attempt > 0 {
			if err := c.backoff(ctx, attempt-1); err != nil {
				return nil, &Error{Memnode: parts[0].memnode, Err: err, Detail: "retrying after BAD-LOCK"}
			}
		}
		tid, wire, participants := newPrepares(len(parts))
		c.stampTid(tid)
		for i := range parts {
			participants[i] = parts[i].memnode
		}
		clear(votes)
		sendTo := parts
		dies := c.crashAt(CrashAfterPrepareSent, tid)
		if dies {
			sendTo = parts[:1]
		}
		reqs := carve(reqsInline[:], len(sendTo))
		for i := range sendTo {
			reqs[i] = sendTo[i].fill(wire[i], tuttipb.Kind_KIND_PREPARE, tid, participants)
		}
		c.callMany(ctx, reqs, votes)
		if dies {
			return nil, crashed(parts[0].memnode, CrashAfterPrepareSent, tid)
		}

		allOK, retry := true, false
		failed, forced := -1, -1
		var hard, invalid error
		unknown := false
		for i, v := range votes {
			switch {
			case v.err != nil:
				allOK = false
				if errors.Is(v.err, ErrUnknownOutcome) || ctx.Err() != nil {
					unknown = true
				}
				if hard == nil {
					hard = v.err
				}
				if invalid == nil && errors.Is(v.err, ErrInvalid) {
					invalid = v.err
				}
			case v.r.GetStatus() == tuttipb.Status_STATUS_UNKNOWN_OUTCOME:
				allOK, unknown = false, true
			case v.r.GetVote() == tuttipb.Vote_VOTE_OK:
			case v.r.GetVote() == tuttipb.Vote_VOTE_BAD_CMP:
				allOK = false
				if f := mapCompare(&parts[i], v.r.GetFailedCompare()); failed < 0 || (f >= 0 && f < failed) {
					failed = f
				}
			case v.r.GetVote() == tuttipb.Vote_VOTE_BAD_FORCED:
				allOK, retry = false, true
				if forced < 0 {
					forced = i
				}
			default: // BAD-LOCK
				allOK, retry = false, true
			}
		}
		if unknown {
			// Some participant may hold an OK vote we never saw: the
			// minitransaction may already be committed (every vote OK), so
			// it must not simply be aborted. settle learns the missing
			// votes with AbortUnlessVoted and decides as recovery would.
			res, err := c.settle(tx, tid, participants, parts, votes)
			if res != nil || err != nil {
				return res, err
			}
			if ctx.Err() != nil {
				return nil, &Error{Memnode: parts[0].memnode, Err: ctx.Err(), Detail: "aborted"}
			}
			continue
		}
		if c.crashAt(CrashAfterVotes, tid) {
			return nil, crashed(parts[0].memnode, CrashAfterVotes, tid)
		}
		if allOK {
			if err := c.decide(tid, parts, tuttipb.Kind_KIND_COMMIT); err != nil {
				return nil, err
			}
			res := &Result{Committed: true, FailedCompare: -1, Reads: make([][]byte, len(tx.reads))}
			for i := range parts {
				fillReads(res, &parts[i], votes[i].r)
			}
			return res, nil
		}
		if err := c.decide(tid, parts, tuttipb.Kind_KIND_ABORT); err != nil {
			return nil, err
		}
		if invalid != nil {
			// Malformed at some participant, whatever the compares
			// found elsewhere: as on one memnode, where the items are
			// checked before the compares, and every attempt would fail.
			return nil, invalid
		}
		if forced >= 0 {
			// A fresh tid is refused when it is older than the
			// memnode's horizon (this client's clock is behind), which
			// a new tid of the same clock does not cure, or when
			// recovery fenced it because a Prepare took longer than
			// its timeout to arrive, which a new tid does. So one
			// retry, then ErrFenced as on one memnode.
			if refused++; refused >= maxRefused {
				return nil, &Error{Memnode: parts[forced].memnode, Err: ErrFenced, Detail: fmt.Sprintf("tid %v refused (BAD-FORCED), as was an attempt before it: is this client's clock behind the cluster's by more than the horizon?", tidFromWire(tid))}
			}
		}
		if failed >= 0 && !retry {
			return &Result{FailedCompare: failed}, nil
		}
		if hard != nil {
			return nil, hard
		}
	}
	return nil, &Error{Memnode: parts[0].memnode, Err: ErrContention, Detail: fmt.Sprintf("no decision after %d attempts", c.cfg.Retry.MaxAttempts)}
}

// newPrepares returns a two-phase attempt's tid, Prepares and participants
// for n participants, zeroed. The tid is an allocation of its own: queued
// decisions keep it after the attempt, and the Prepares (with what they
// point to) must not live on with it. Each Prepare is one too: together,
// two of them make an object over 512 bytes, which Go's collector scans
// one by one rather than with its span (in `tutti bench mtx --workload
// cas2` the collector's marking took twice the CPU with them together).
func newPrepares(n int) (*tuttipb.Tid, []*tuttipb.Request, []uint64) {
	reqs, mns := pack2[*tuttipb.Request, uint64](n)
	for i := range reqs {
		reqs[i] = new(tuttipb.Request)
	}
	return new(tuttipb.Tid), reqs, mns
}

// maxRefused is how many attempts of a two-phase minitransaction may be
// refused with BAD-FORCED before Exec returns ErrFenced.
const maxRefused = 2

// knownMemnode returns an error wrapping ErrUnknownMemnode if the layout,
// refreshed once if need be, has no memnode mn.
func (c *Client) knownMemnode(ctx context.Context, mn uint64) error {
	if m := c.routes.Load(); m != nil {
		if _, ok := (*m)[mn]; ok {
			return nil
		}
	}
	for refreshed := false; ; refreshed = true {
		c.mu.Lock()
		_, ok := c.mu.memnodes[mn]
		c.mu.Unlock()
		switch {
		case ok:
			return nil
		case refreshed || !c.refreshLayout(ctx):
			return &Error{Memnode: mn, Err: ErrUnknownMemnode, Detail: fmt.Sprintf("the cluster has no memnode %d", mn)}
		}
	}
}

// settle decides an attempt some of whose votes are unknown (the Prepare's
// outcome was lost, or the caller's context ended while it was out). The
// missing votes are learnt with AbortUnlessVoted, which fences a Prepare not
// yet applied; then the attempt is decided by recovery's rule (Recover).
// It returns the Result when the attempt committed, an error wrapping
// ErrReadsLost when it committed but a participant's reads cannot be had
// again, an error wrapping ErrUnknownOutcome when it cannot tell (the tid
// is then left to memnode recovery), and nil, nil when the attempt is
// known to be aborted everywhere, so a new attempt may start.
func (c *Client) settle(tx *Tx, tid *tuttipb.Tid, participants []uint64, parts []part, votes []vote) (*Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unknownErr := func(detail string) error {
		return &Error{Memnode: parts[0].memnode, Err: ErrUnknownOutcome, Detail: fmt.Sprintf("tid %v: %s; memnode recovery will decide it", tidFromWire(tid), detail)}
	}
	rs := make([]*tuttipb.Response, len(parts))
	var missing []int
	for i, v := range votes {
		if v.err != nil || v.r.GetStatus() != tuttipb.Status_STATUS_OK {
			missing = append(missing, i)
			continue
		}
		rs[i] = v.r
	}
	mns := make([]uint64, len(missing))
	for j, i := range missing {
		mns[j] = parts[i].memnode
	}
	auv, err := c.askAll(ctx, tid, mns, tuttipb.Kind_KIND_ABORT_UNLESS_VOTED)
	if err != nil {
		return nil, unknownErr(err.Error())
	}
	for j, i := range missing {
		rs[i] = auv[j]
	}
	committed, err := outcomeOf(participants, rs)
	if errors.Is(err, ErrExpired) {
		// Only with a clock far behind the memnodes': recovery will not
		// decide it either.
		return nil, &Error{Memnode: parts[0].memnode, Err: ErrUnknownOutcome, Detail: fmt.Sprintf("tid %v: %v", tidFromWire(tid), err)}
	}
	if err != nil {
		return nil, unknownErr(err.Error())
	}
	if !committed {
		// Some participant voted no or is fenced: the attempt can never
		// commit, and aborting it everywhere is safe.
		if err := c.abortSync(tid, parts); err != nil {
			return nil, unknownErr(err.Error())
		}
		return nil, nil
	}
	// Committed (every participant voted OK). Fetch the reads of the
	// participants whose vote was lost: a duplicate Prepare of an in-doubt
	// tid answers OK with the reads again and takes nothing new.
	res := &Result{Committed: true, FailedCompare: -1, Reads: make([][]byte, len(tx.reads))}
	var lost error
	for _, i := range missing {
		if len(parts[i].reads) == 0 {
			continue
		}
		r, err := c.callDefinite(ctx, parts[i].request(tuttipb.Kind_KIND_PREPARE, tid, participants))
		if err != nil || r.GetVote() != tuttipb.Vote_VOTE_OK || r.GetOutcome() != tuttipb.Outcome_OUTCOME_UNKNOWN {
			// Decided there already (recovery commits and keeps no
			// reads), or unreachable: the outcome is still committed,
			// and the caller must learn that, not an unknown outcome
			// it could not settle (a two-phase tid cannot be fenced).
			detail := "decided there, which keeps no reads"
			if err != nil {
				detail = err.Error()
			}
			if lost == nil {
				lost = &Error{Memnode: parts[i].memnode, Err: ErrReadsLost, Detail: fmt.Sprintf("tid %v: %s", tidFromWire(tid), detail)}
			}
			continue
		}
		rs[i] = r
	}
	if err := c.decide(tid, parts, tuttipb.Kind_KIND_COMMIT); err != nil {
		return nil, err
	}
	if lost != nil {
		return nil, lost
	}
	for i := range parts {
		fillReads(res, &parts[i], rs[i])
	}
	return res, nil
}

// decide sends the outcome to every participant without making the caller
// wait. Lost messages are harmless: Commit/Abort are idempotent and memnode
// recovery resolves tids left in doubt. With Config.Crash it may stop after
// the first participant (CrashAfterFirstDecision) and return the crash.
func (c *Client) decide(tid *tuttipb.Tid, parts []part, kind tuttipb.Kind) error {
	if c.crashAt(CrashAfterFirstDecision, tid) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.callDefinite(ctx, &tuttipb.Request{Memnode: parts[0].memnode, Kind: kind, Tid: tid})
		return crashed(parts[0].memnode, CrashAfterFirstDecision, tid)
	}
	maxItems, _ := c.limits()
	commit := kind == tuttipb.Kind_KIND_COMMIT
	// Fast path: the decisions wait on the leaders' sessions for their
	// next batches (conn.queueDecisions, one call per connection) and
	// the receiving goroutine notes the answers. Only an answer other
	// than OK costs a goroutine. The arrays stay on the stack.
	var (
		cnsInline [manyInline]*conn
		mnsInline [manyInline]uint64
	)
	cns := carve(cnsInline[:], len(parts)) // nil: no route
	for i := range parts {
		c.bg.Add(1)
		c.stats.decisions.Add(1)
		cn, _, err := c.route(parts[i].memnode)
		if err != nil {
			go c.deliverDecision(&tuttipb.Request{Memnode: parts[i].memnode, Kind: kind, Tid: tid})
			continue
		}
		cns[i] = cn
	}
	for i, cn := range cns {
		if cn == nil || slices.Contains(cns[:i], cn) {
			continue // no route, or queued with an earlier part's
		}
		mns := mnsInline[:0]
		for j := i; j < len(cns); j++ {
			if cns[j] == cn {
				mns = append(mns, parts[j].memnode)
			}
		}
		if err := cn.queueDecisions(mns, commit, tid, maxItems); err != nil {
			for _, mn := range mns {
				go c.deliverDecision(&tuttipb.Request{Memnode: mn, Kind: kind, Tid: tid})
			}
		}
	}
	return nil
}

// decisionAnswered handles the answer to a request that carried decisions
// for memnode mn (conn.go): each was counted in c.bg. Unless the request
// was applied (STATUS_OK), each is sent again on its own.
func (c *Client) decisionAnswered(r *tuttipb.Response, mn uint64, commits, aborts []*tuttipb.Tid) {
	if r.GetStatus() == tuttipb.Status_STATUS_OK {
		c.bg.Add(-(len(commits) + len(aborts)))
		return
	}
	for _, tid := range commits {
		go c.deliverDecision(&tuttipb.Request{Memnode: mn, Kind: tuttipb.Kind_KIND_COMMIT, Tid: tid})
	}
	for _, tid := range aborts {
		go c.deliverDecision(&tuttipb.Request{Memnode: mn, Kind: tuttipb.Kind_KIND_ABORT, Tid: tid})
	}
}

// deliverDecision retries a Commit or Abort until a participant has applied
// it (they are idempotent, so an unknown outcome is simply sent again) or
// ten seconds pass; then memnode recovery resolves the tid. It calls
// c.bg.Done.
func (c *Client) deliverDecision(req *tuttipb.Request) {
	defer c.bg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if attempt > 0 && c.backoff(ctx, attempt-1) != nil {
			return
		}
		r, err := c.call(ctx, req)
		if err == nil && r.GetStatus() == tuttipb.Status_STATUS_OK {
			return
		}
		if ctx.Err() != nil || (err != nil && !errors.Is(err, ErrUnknownOutcome)) {
			c.log.Debug().Err(err).Uint64("memnode", req.GetMemnode()).Msg("outcome not delivered; recovery will resolve it")
			return
		}
	}
}

// abortSync aborts tid at every participant and waits until each abort is
// known to be applied.
func (c *Client) abortSync(tid *tuttipb.Tid, parts []part) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i := range parts {
		mn := parts[i].memnode
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				r, err := c.call(ctx, &tuttipb.Request{Memnode: mn, Kind: tuttipb.Kind_KIND_ABORT, Tid: tid})
				if err == nil {
					if r.GetStatus() == tuttipb.Status_STATUS_OK {
						errs[i] = nil
						return
					}
					errs[i] = fmt.Errorf("memnode %d: abort outcome unknown: %s", mn, r.GetError())
					continue
				}
				errs[i] = err
				if !errors.Is(err, ErrUnknownOutcome) {
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
