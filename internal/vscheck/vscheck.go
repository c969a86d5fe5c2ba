package vscheck

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Kind is the kind of a recorded event.
type Kind uint8

const (
	Install Kind = iota + 1 // member installed view View with Members
	Send                    // member multicast message (Sender=member, Seq) in view View (the view it believed it was in; 0 if unknown)
	Deliver                 // member delivered message (Sender, Seq) in view View
	Leave                   // member left gracefully (no deliveries after)
	Crash                   // member crashed (no events after, for this incarnation)
	Evict                   // member learned it was removed while alive
)

var kindNames = [...]string{Install: "Install", Send: "Send", Deliver: "Deliver", Leave: "Leave", Crash: "Crash", Evict: "Evict"}

func (k Kind) String() string {
	if k >= Install && k <= Evict {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Event is one observation of one member. Member names one incarnation of a
// process, e.g. "p1#3".
type Event struct {
	Member  string
	Kind    Kind
	View    uint64   // view id (Install: the new view; Send/Deliver: current view)
	Members []string // Install only: the view's members, sorted
	Sender  string   // Send/Deliver: the multicasting member
	Seq     uint64   // Send/Deliver: the sender's per-member sequence number (1, 2, ...)
	Payload string   // optional, compared when present to catch corruption
}

func (e Event) String() string {
	switch e.Kind {
	case Install:
		return fmt.Sprintf("%s Install view %d %v", e.Member, e.View, e.Members)
	case Send, Deliver:
		return fmt.Sprintf("%s %s %s in view %d", e.Member, e.Kind, msgName(e.Sender, e.Seq), e.View)
	default:
		return fmt.Sprintf("%s %s", e.Member, e.Kind)
	}
}

// History is the events of all members; each member's events are in its
// local order (the order it observed them); events of different members are
// not ordered.
//
// The zero value is an empty history. A History must not be copied after
// first use.
type History struct {
	mu     sync.Mutex
	Events []Event
}

// Add appends e. It is safe for concurrent use. Add keeps its own copy of
// e.Members, so recorders may reuse the slice.
func (h *History) Add(e Event) {
	if e.Members != nil {
		e.Members = slices.Clone(e.Members)
	}
	h.mu.Lock()
	h.Events = append(h.Events, e)
	h.mu.Unlock()
}

// Property names reported in Violation.Property.
const (
	SameViews            = "same-views"
	ViewSynchrony        = "view-synchrony"
	TotalOrder           = "total-order"
	FIFO                 = "fifo"
	NoDuplicates         = "no-duplicates"
	NoCreation           = "no-creation"
	SelfDelivery         = "self-delivery"
	NoDeliveryAfterLeave = "no-delivery-after-leave"
	DeliveredInSentView  = "delivered-in-sent-view"
	// Malformed reports events that cannot be interpreted (unknown Kind,
	// empty Member, Seq 0, a Seq sent twice, ...): a recorder bug, not a
	// protocol bug, but never silently ignored.
	Malformed = "malformed"
)

// properties is the order in which Check reports.
var properties = []string{
	Malformed, SameViews, ViewSynchrony, TotalOrder, FIFO, NoDuplicates,
	NoCreation, SelfDelivery, NoDeliveryAfterLeave, DeliveredInSentView,
}

// Violation is one breach of one property.
type Violation struct {
	Property string // one of the property names above
	Detail   string // human-readable, names members/views/messages
}

func (v Violation) String() string { return v.Property + ": " + v.Detail }

// Options tunes Check.
type Options struct {
	// Complete says the history ended quiescent: every member that did not
	// crash, leave or get evicted has delivered everything ordered in the
	// group. It enables the checks that need the end of the history:
	// self-delivery, survivors delivering everything delivered in their
	// final view (view-synchrony), and survivors ending in the last view
	// (same-views).
	Complete bool
}

// maxPerProperty bounds the violations reported per property; the excess is
// summarized in one extra violation.
const maxPerProperty = 100

// Check returns the violations of the virtual-synchrony properties in h, or
// nil. Reports are grouped by property in a fixed order; for a given h the
// result is deterministic.
func Check(h *History, opts Options) []Violation {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	events := h.Events[:len(h.Events):len(h.Events)]
	h.mu.Unlock()
	c := &checker{ev: events, opts: opts, nameID: map[string]int32{}, msgID: map[msgKey]int32{}, out: map[string][]Violation{}, over: map[string]int{}}
	c.run()
	var res []Violation
	for _, p := range properties {
		res = append(res, c.out[p]...)
		if n := c.over[p]; n > 0 {
			res = append(res, Violation{p, fmt.Sprintf("... and %d more violations of %s not shown", n, p)})
		}
	}
	return res
}

type msgKey struct {
	sender string
	seq    uint64
}

type msgInfo struct {
	sender int32  // name id
	seq    uint64 //
	send   int32  // event index of the Send, -1 if none
	// first delivery, in checking order
	firstBy   int32  // member index, -1 if never delivered
	firstView uint64 // view of the first delivery attributed to a view (0: none)
	payload   string // first non-empty delivered payload
}

type member struct {
	name      string
	id        int32   // name id
	events    []int32 // indices into ev, local order
	installs  []uint64
	sends     []int32 // message ids sent
	terminal  int32   // event index of Leave/Crash/Evict, -1 if none
	dlo, dhi  int     // range in checker.delivs
	installed bool
}

type delivery struct {
	msg  int32
	view uint64 // view the member was in (0: unknown)
	ev   int32
}

type viewInfo struct {
	members []string // sorted
	by      int      // member index of first installer
}

type checker struct {
	ev   []Event
	opts Options

	names  []string
	nameID map[string]int32

	msgs  []msgInfo
	msgID map[msgKey]int32

	members []member
	delivs  []delivery // grouped by member, in local order; first deliveries only
	views   map[uint64]*viewInfo

	out  map[string][]Violation
	over map[string]int
}

func (c *checker) report(prop, format string, args ...any) {
	if len(c.out[prop]) >= maxPerProperty {
		c.over[prop]++
		return
	}
	c.out[prop] = append(c.out[prop], Violation{prop, fmt.Sprintf(format, args...)})
}

func (c *checker) name(s string) int32 {
	if id, ok := c.nameID[s]; ok {
		return id
	}
	id := int32(len(c.names))
	c.names = append(c.names, s)
	c.nameID[s] = id
	return id
}

func (c *checker) msg(sender string, seq uint64) int32 {
	k := msgKey{sender, seq}
	if id, ok := c.msgID[k]; ok {
		return id
	}
	id := int32(len(c.msgs))
	c.msgs = append(c.msgs, msgInfo{sender: c.name(sender), seq: seq, send: -1, firstBy: -1})
	c.msgID[k] = id
	return id
}

func msgName(sender string, seq uint64) string { return fmt.Sprintf("(%s,%d)", sender, seq) }

func (c *checker) m(id int32) string {
	mi := &c.msgs[id]
	return msgName(c.names[mi.sender], mi.seq)
}

func (c *checker) run() {
	c.group()
	c.scanMembers()
	c.checkViews()
	c.checkViewSynchrony()
	c.checkTotalOrder()
	c.checkFIFO()
	c.checkCreation()
	c.checkSentView()
}

// group splits the events by member, keeping each member's local order, and
// orders members by name.
func (c *checker) group() {
	idx := map[string]int{}
	for i := range c.ev {
		e := &c.ev[i]
		if e.Member == "" {
			c.report(Malformed, "event #%d (%v) has no Member", i, e)
			continue
		}
		k, ok := idx[e.Member]
		if !ok {
			k = len(c.members)
			idx[e.Member] = k
			c.members = append(c.members, member{name: e.Member, terminal: -1})
		}
		c.members[k].events = append(c.members[k].events, int32(i))
	}
	slices.SortFunc(c.members, func(a, b member) int { return strings.Compare(a.name, b.name) })
	for i := range c.members {
		c.members[i].id = c.name(c.members[i].name)
	}
}

// scanMembers walks every member's events in local order: view installation
// order and membership, duplicates, events after the end of the incarnation,
// the view each delivery happened in, and self-delivery.
func (c *checker) scanMembers() {
	c.views = map[uint64]*viewInfo{}
	var stamp []int32 // msg -> member index+1 that delivered it last
	var stampEv []int32
	for mi := range c.members {
		m := &c.members[mi]
		m.dlo = len(c.delivs)
		var cur uint64
		var after, firstAfter int32 = 0, -1
		for _, ei := range m.events {
			e := &c.ev[ei]
			if m.terminal >= 0 {
				if firstAfter < 0 {
					firstAfter = ei
				}
				after++
				continue
			}
			switch e.Kind {
			case Install:
				c.install(mi, ei, &cur)
			case Send:
				if e.Sender != "" && e.Sender != m.name {
					c.report(Malformed, "event #%d: %s recorded a Send with Sender %q", ei, m.name, e.Sender)
					continue
				}
				if e.Seq == 0 {
					c.report(Malformed, "event #%d: %s recorded a Send with Seq 0", ei, m.name)
					continue
				}
				id := c.msg(m.name, e.Seq)
				if s := c.msgs[id].send; s >= 0 {
					c.report(Malformed, "%s sent %s twice (events #%d and #%d)", m.name, c.m(id), s, ei)
					continue
				}
				c.msgs[id].send = ei
				m.sends = append(m.sends, id)
			case Deliver:
				if e.Sender == "" || e.Seq == 0 {
					c.report(Malformed, "event #%d: %s recorded a Deliver without Sender or Seq", ei, m.name)
					continue
				}
				id := c.msg(e.Sender, e.Seq)
				for int(id) >= len(stamp) {
					stamp = append(stamp, 0)
					stampEv = append(stampEv, 0)
				}
				if stamp[id] == int32(mi+1) {
					c.report(NoDuplicates, "%s delivered %s twice (events #%d and #%d)", m.name, c.m(id), stampEv[id], ei)
					continue
				}
				stamp[id], stampEv[id] = int32(mi+1), ei
				v := cur
				if !m.installed {
					v = e.View
					c.report(ViewSynchrony, "%s delivered %s (event #%d) before installing any view", m.name, c.m(id), ei)
				} else if e.View != 0 && e.View != cur {
					c.report(ViewSynchrony, "%s delivered %s recorded in view %d while it was in view %d (event #%d)", m.name, c.m(id), e.View, cur, ei)
				}
				mg := &c.msgs[id]
				if mg.firstBy < 0 {
					mg.firstBy = int32(mi)
				}
				if mg.firstView == 0 {
					mg.firstView = v
				}
				if mg.payload == "" {
					mg.payload = e.Payload
				}
				c.delivs = append(c.delivs, delivery{msg: id, view: v, ev: ei})
			case Leave, Crash, Evict:
				m.terminal = ei
			default:
				c.report(Malformed, "event #%d of %s has unknown kind %v", ei, m.name, e.Kind)
			}
		}
		m.dhi = len(c.delivs)
		if after > 0 {
			c.report(NoDeliveryAfterLeave, "%s recorded %d event(s) after %v (event #%d), first: %v (event #%d)",
				m.name, after, c.ev[m.terminal].Kind, m.terminal, c.ev[firstAfter], firstAfter)
		}
		if c.opts.Complete && m.terminal < 0 {
			for _, id := range m.sends {
				if int(id) >= len(stamp) || stamp[id] != int32(mi+1) {
					sv := c.ev[c.msgs[id].send].View
					c.report(SelfDelivery, "%s sent %s in view %d, did not crash, leave or get evicted, and never delivered it", m.name, c.m(id), sv)
				}
			}
		}
	}
}

func (c *checker) install(mi int, ei int32, cur *uint64) {
	m := &c.members[mi]
	e := &c.ev[ei]
	if e.View == 0 {
		c.report(Malformed, "event #%d: %s installed view 0", ei, m.name)
		return
	}
	mem := e.Members
	if !slices.IsSorted(mem) {
		mem = slices.Clone(mem)
		slices.Sort(mem)
	}
	if _, ok := slices.BinarySearch(mem, m.name); !ok {
		c.report(SameViews, "%s installed view %d whose members %v do not include it (event #%d)", m.name, e.View, mem, ei)
	}
	if m.installed && e.View <= *cur {
		c.report(SameViews, "%s installed view %d after view %d (event #%d): views must be installed in increasing order", m.name, e.View, *cur, ei)
	}
	if vi, ok := c.views[e.View]; !ok {
		c.views[e.View] = &viewInfo{members: mem, by: mi}
	} else if !slices.Equal(vi.members, mem) {
		c.report(SameViews, "view %d: %s installed members %v but %s installed %v", e.View, c.members[vi.by].name, vi.members, m.name, mem)
	}
	m.installed = true
	m.installs = append(m.installs, e.View)
	*cur = e.View
}

// checkViews: no member skips a view it is a member of; with Complete, every
// survivor ends in the last view.
func (c *checker) checkViews() {
	ids := make([]uint64, 0, len(c.views))
	var last uint64
	for v := range c.views {
		ids = append(ids, v)
		last = max(last, v)
	}
	slices.Sort(ids)
	for i := range c.members {
		m := &c.members[i]
		for k := 1; k < len(m.installs); k++ {
			a, b := m.installs[k-1], m.installs[k]
			if b <= a+1 {
				continue
			}
			j, _ := slices.BinarySearch(ids, a+1)
			for ; j < len(ids) && ids[j] < b; j++ {
				if _, in := slices.BinarySearch(c.views[ids[j]].members, m.name); in {
					c.report(SameViews, "%s went from view %d to view %d, skipping view %d whose members (installed by %s) include it",
						m.name, a, b, ids[j], c.members[c.views[ids[j]].by].name)
				}
			}
		}
		if c.opts.Complete && m.terminal < 0 && len(m.installs) > 0 && m.installs[len(m.installs)-1] != last {
			c.report(SameViews, "history is complete but %s, which did not crash, leave or get evicted, ended in view %d, not in the last view %d",
				m.name, m.installs[len(m.installs)-1], last)
		}
	}
}

// checkViewSynchrony: D(v) is the set of messages delivered in view v by any
// member. A member that installs a later view after v (and, with Complete, a
// survivor in its final view) must have delivered all of D(v) while in v.
func (c *checker) checkViewSynchrony() {
	// Sort (view, message) pairs packed as dense view index<<32 | message.
	vidx := map[uint64]uint64{}
	var vids []uint64
	pairs := make([]uint64, 0, len(c.delivs))
	for _, d := range c.delivs {
		if d.view == 0 {
			continue
		}
		x, ok := vidx[d.view]
		if !ok {
			x = uint64(len(vids))
			vidx[d.view] = x
			vids = append(vids, d.view)
		}
		pairs = append(pairs, x<<32|uint64(uint32(d.msg)))
	}
	slices.Sort(pairs)
	pairs = slices.Compact(pairs)
	inView := map[uint64][]int32{}
	for i := 0; i < len(pairs); {
		j := i
		for j < len(pairs) && pairs[j]>>32 == pairs[i]>>32 {
			j++
		}
		ms := make([]int32, j-i)
		for k := i; k < j; k++ {
			ms[k-i] = int32(uint32(pairs[k]))
		}
		inView[vids[pairs[i]>>32]] = ms
		i = j
	}
	mark := make([]int32, len(c.msgs))
	for mi := range c.members {
		m := &c.members[mi]
		need := len(m.installs) - 1
		final := c.opts.Complete && m.terminal < 0
		if final {
			need++
		}
		if need <= 0 {
			continue
		}
		counts := map[uint64]int{}
		for _, d := range c.delivs[m.dlo:m.dhi] {
			counts[d.view]++
		}
		for k := 0; k < need; k++ {
			v := m.installs[k]
			if counts[v] >= len(inView[v]) {
				continue
			}
			for _, d := range c.delivs[m.dlo:m.dhi] {
				if d.view == v {
					mark[d.msg] = int32(mi + 1)
				}
			}
			var missing []string
			for _, id := range inView[v] {
				if mark[id] != int32(mi+1) {
					if len(missing) < 5 {
						missing = append(missing, fmt.Sprintf("%s (delivered by %s)", c.m(id), c.deliverer(id, v)))
					} else {
						missing = append(missing, "")
					}
				}
			}
			for _, d := range c.delivs[m.dlo:m.dhi] {
				mark[d.msg] = 0
			}
			how := fmt.Sprintf("ended the complete history in view %d", v)
			if k+1 < len(m.installs) {
				how = fmt.Sprintf("moved from view %d to view %d", v, m.installs[k+1])
			}
			c.report(ViewSynchrony, "%s %s without delivering %d of the %d messages delivered in view %d: %s",
				m.name, how, len(missing), len(inView[v]), v, list(missing, 5))
		}
	}
}

// deliverer names a member that delivered msg in view v.
func (c *checker) deliverer(id int32, v uint64) string {
	if mg := &c.msgs[id]; mg.firstView == v && mg.firstBy >= 0 {
		return c.members[mg.firstBy].name
	}
	for mi := range c.members {
		m := &c.members[mi]
		for _, d := range c.delivs[m.dlo:m.dhi] {
			if d.msg == id && d.view == v {
				return m.name
			}
		}
	}
	return "?"
}

func list(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return strings.Join(items[:n], ", ") + fmt.Sprintf(", ... (%d more)", len(items)-n)
}

// checkFIFO: per member and sender, delivered Seqs increase, without gaps
// between the first and last delivered, and without missing earlier Seqs that
// were ordered while the member was in the group.
func (c *checker) checkFIFO() {
	type ds struct {
		sender int32
		seq    uint64
	}
	var keys []uint64 // sender<<32 | position in the member's deliveries
	var buf []ds
	for mi := range c.members {
		m := &c.members[mi]
		keys = keys[:0]
		for i, d := range c.delivs[m.dlo:m.dhi] {
			keys = append(keys, uint64(c.msgs[d.msg].sender)<<32|uint64(i))
		}
		slices.Sort(keys)
		buf = buf[:0]
		for _, k := range keys {
			mg := &c.msgs[c.delivs[m.dlo+int(uint32(k))].msg]
			buf = append(buf, ds{mg.sender, mg.seq})
		}
		var firstView uint64
		if len(m.installs) > 0 {
			firstView = m.installs[0]
		}
		var seqs []uint64
		for i := 0; i < len(buf); {
			j := i
			for j < len(buf) && buf[j].sender == buf[i].sender {
				j++
			}
			s := c.names[buf[i].sender]
			var top uint64
			seqs = seqs[:0]
			for _, x := range buf[i:j] {
				if x.seq < top {
					c.report(FIFO, "%s delivered %s after %s", m.name, msgName(s, x.seq), msgName(s, top))
				}
				top = max(top, x.seq)
				seqs = append(seqs, x.seq)
			}
			slices.Sort(seqs)
			var missing []string
			for k := 1; k < len(seqs); k++ {
				if a, b := seqs[k-1], seqs[k]; b > a+1 {
					if b == a+2 {
						missing = append(missing, fmt.Sprint(a+1))
					} else {
						missing = append(missing, fmt.Sprintf("%d-%d", a+1, b-1))
					}
				}
			}
			if len(missing) > 0 {
				c.report(FIFO, "%s delivered messages %d..%d of %s but not Seq %s", m.name, seqs[0], seqs[len(seqs)-1], s, list(missing, 5))
			}
			// Earlier messages ordered while the member was already in the group.
			if firstView != 0 {
				var below []string
				for q := seqs[0] - 1; q >= 1; q-- {
					id, ok := c.msgID[msgKey{s, q}]
					if !ok {
						break
					}
					fv := c.msgs[id].firstView
					if fv == 0 || fv < firstView {
						break
					}
					below = append(below, fmt.Sprintf("%d (delivered in view %d by %s)", q, fv, c.members[c.msgs[id].firstBy].name))
				}
				if len(below) > 0 {
					slices.Reverse(below)
					c.report(FIFO, "%s (in the group since view %d) delivered %s but never Seq %s", m.name, firstView, msgName(s, seqs[0]), list(below, 5))
				}
			}
			i = j
		}
	}
}

// checkCreation: every delivered message was sent, and delivered with the
// payload it was sent with (or, if the Send has none, the same payload
// everywhere).
func (c *checker) checkCreation() {
	for id := range c.msgs {
		mg := &c.msgs[id]
		if mg.firstBy >= 0 && mg.send < 0 {
			c.report(NoCreation, "%s was delivered (first by %s) but never sent", c.m(int32(id)), c.members[mg.firstBy].name)
		}
	}
	type bad struct {
		member int
		got    string
		n      int
	}
	var order []int32
	bads := map[int32]*bad{}
	for mi := range c.members {
		m := &c.members[mi]
		for _, d := range c.delivs[m.dlo:m.dhi] {
			p := c.ev[d.ev].Payload
			if p == "" {
				continue
			}
			mg := &c.msgs[d.msg]
			ref := mg.payload
			if mg.send >= 0 && c.ev[mg.send].Payload != "" {
				ref = c.ev[mg.send].Payload
			}
			if p == ref {
				continue
			}
			if b := bads[d.msg]; b != nil {
				b.n++
				continue
			}
			bads[d.msg] = &bad{mi, p, 1}
			order = append(order, d.msg)
		}
	}
	for _, id := range order {
		b := bads[id]
		mg := &c.msgs[id]
		src := "first delivered"
		ref := mg.payload
		if mg.send >= 0 && c.ev[mg.send].Payload != "" {
			src, ref = "sent", c.ev[mg.send].Payload
		}
		c.report(NoCreation, "%s delivered %s with payload %q, %s with %q (%d mismatching deliveries)",
			c.members[b.member].name, c.m(id), trunc(b.got), src, trunc(ref), b.n)
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// checkSentView: a message sent with a known view is delivered in that view.
func (c *checker) checkSentView() {
	type wrong struct {
		who  []string
		view uint64
	}
	var order []int32
	ws := map[int32]*wrong{}
	for mi := range c.members {
		m := &c.members[mi]
		for _, d := range c.delivs[m.dlo:m.dhi] {
			s := c.msgs[d.msg].send
			if s < 0 || d.view == 0 {
				continue
			}
			if sv := c.ev[s].View; sv != 0 && sv != d.view {
				w := ws[d.msg]
				if w == nil {
					w = &wrong{view: d.view}
					ws[d.msg] = w
					order = append(order, d.msg)
				}
				w.who = append(w.who, fmt.Sprintf("%s in view %d", m.name, d.view))
			}
		}
	}
	for _, id := range order {
		w := ws[id]
		c.report(DeliveredInSentView, "%s was sent in view %d but delivered by %s", c.m(id), c.ev[c.msgs[id].send].View, list(w.who, 5))
	}
}
