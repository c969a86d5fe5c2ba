package vscheck

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

// ---- helpers for hand-written histories ----

const (
	a = "p1#1"
	b = "p2#1"
	c = "p3#1"
	d = "p4#1"
)

func inst(v uint64, members ...string) Event {
	return Event{Kind: Install, View: v, Members: members}
}
func snd(seq, v uint64) Event { return Event{Kind: Send, Seq: seq, View: v} }
func dlv(sender string, seq, v uint64) Event {
	return Event{Kind: Deliver, Sender: sender, Seq: seq, View: v}
}
func ev(k Kind) Event { return Event{Kind: k} }

// script is the events of each member in local order.
type script map[string][]Event

// history interleaves the members' events round-robin (any interleaving that
// keeps each member's order is valid) and fills in Member, Sender of sends
// and default payloads.
func (s script) history() *History {
	var names []string
	for n := range s {
		names = append(names, n)
	}
	sort.Strings(names)
	h := &History{}
	for i := 0; ; i++ {
		any := false
		for _, n := range names {
			if i >= len(s[n]) {
				continue
			}
			any = true
			e := s[n][i]
			e.Member = n
			if e.Kind == Send {
				e.Sender = n
			}
			if (e.Kind == Send || e.Kind == Deliver) && e.Payload == "" {
				e.Payload = fmt.Sprintf("%s/%d", e.Sender, e.Seq)
			}
			h.Add(e)
		}
		if !any {
			return h
		}
	}
}

func (s script) clone() script {
	t := script{}
	for n, evs := range s {
		t[n] = slices.Clone(evs)
	}
	return t
}

// base is a correct history: p1..p3 start in view 1, p4 joins in view 2, p3
// leaves in view 3, p2 crashes in view 3 (with an unordered message) and is
// removed in view 4. Order log:
//
//	V1{a,b,c} a1 b1 V2{a,b,c,d} c1 a2 V3{a,b,d} d1 V4{a,d} a3 d2
func base() script {
	v1 := []string{a, b, c}
	v2 := []string{a, b, c, d}
	v3 := []string{a, b, d}
	v4 := []string{a, d}
	return script{
		a: {inst(1, v1...), snd(1, 1), dlv(a, 1, 1), dlv(b, 1, 1), inst(2, v2...), snd(2, 2), dlv(c, 1, 2), dlv(a, 2, 2),
			inst(3, v3...), dlv(d, 1, 3), inst(4, v4...), snd(3, 4), dlv(a, 3, 4), dlv(d, 2, 4)},
		b: {inst(1, v1...), snd(1, 1), dlv(a, 1, 1), dlv(b, 1, 1), inst(2, v2...), dlv(c, 1, 2), dlv(a, 2, 2),
			inst(3, v3...), dlv(d, 1, 3), snd(2, 3), ev(Crash)},
		c: {inst(1, v1...), dlv(a, 1, 1), dlv(b, 1, 1), inst(2, v2...), snd(1, 2), dlv(c, 1, 2), dlv(a, 2, 2), ev(Leave)},
		d: {inst(2, v2...), dlv(c, 1, 2), dlv(a, 2, 2), inst(3, v3...), snd(1, 3), dlv(d, 1, 3),
			inst(4, v4...), dlv(a, 3, 4), snd(2, 4), dlv(d, 2, 4)},
	}
}

func props(vs []Violation) []string {
	var ps []string
	for _, v := range vs {
		if !slices.Contains(ps, v.Property) {
			ps = append(ps, v.Property)
		}
	}
	sort.Strings(ps)
	return ps
}

func dump(vs []Violation) string {
	var sb strings.Builder
	for _, v := range vs {
		sb.WriteString("\n  " + v.String())
	}
	return sb.String()
}

func TestCorrectHistory(t *testing.T) {
	for _, complete := range []bool{false, true} {
		if vs := Check(base().history(), Options{Complete: complete}); len(vs) != 0 {
			t.Fatalf("Complete=%v: correct history reported:%s", complete, dump(vs))
		}
	}
	if vs := Check(&History{}, Options{Complete: true}); len(vs) != 0 {
		t.Fatalf("empty history:%s", dump(vs))
	}
	if vs := Check(nil, Options{}); len(vs) != 0 {
		t.Fatalf("nil history:%s", dump(vs))
	}
}

// TestEachProperty: each history breaks exactly one property, and Check
// reports exactly that one.
func TestEachProperty(t *testing.T) {
	cases := []struct {
		name     string
		prop     string
		complete bool
		edit     func(s script)
	}{
		{"members disagree", SameViews, true, func(s script) {
			s[b][4] = inst(2, a, b, d) // b believes c is gone already
		}},
		{"views not increasing", SameViews, false, func(s script) {
			// d installs view 3, then view 2 again, and crashes
			s[d] = []Event{inst(2, a, b, c, d), dlv(c, 1, 2), dlv(a, 2, 2), inst(3, a, b, d), snd(1, 3), dlv(d, 1, 3), inst(2, a, b, c, d), ev(Crash)}
			s[a] = s[a][:len(s[a])-1] // d2 is no longer sent
		}},
		{"not a member", SameViews, false, func(s script) {
			s[c] = append(s[c][:7], inst(3, a, b, d), ev(Crash)) // c installs the view that excludes it
		}},
		{"skipped view", SameViews, false, func(s script) {
			// a goes from view 2 to view 4, skipping view 3 of which it is a member, and
			// delivers d1 in view 4 (d1 sent with unknown view; d delivered it in view 3;
			// without Complete, d is not held to view 4's set).
			s[a] = []Event{inst(1, a, b, c), snd(1, 1), dlv(a, 1, 1), dlv(b, 1, 1), inst(2, a, b, c, d), snd(2, 2), dlv(c, 1, 2), dlv(a, 2, 2),
				inst(4, a, d), dlv(d, 1, 4), snd(3, 4), dlv(a, 3, 4), dlv(d, 2, 4)}
			s[d][4] = snd(1, 0)
		}},
		{"survivor not in last view", SameViews, true, func(s script) {
			// a (no Crash/Leave/Evict) stops in view 3; d installs view 4, where nothing is sent.
			s[a] = s[a][:10]
			s[d] = []Event{inst(2, a, b, c, d), dlv(c, 1, 2), dlv(a, 2, 2), inst(3, a, b, d), snd(1, 3), dlv(d, 1, 3), inst(4, a, d)}
		}},
		{"missed message in view", ViewSynchrony, true, func(s script) {
			s[c] = slices.Delete(s[c], 2, 3) // c does not deliver b1 but moves to view 2
		}},
		{"survivor missed message in final view", ViewSynchrony, true, func(s script) {
			s[d] = slices.Delete(s[d], 7, 8) // d does not deliver a3 in view 4; a (survivor) did
		}},
		{"crashed member's delivery not delivered by survivors", ViewSynchrony, false, func(s script) {
			// b delivered a message x of d's in view 3 before crashing; a and d, which move to view 4, did not.
			s[b] = slices.Insert(s[b], 9, dlv(d, 2, 3))
			s[d][8] = snd(2, 3) // d sent it in view 3 (never delivered at d: no Complete)
			s[d] = slices.Delete(s[d], 9, 10)
			s[a] = slices.Delete(s[a], 13, 14)
		}},
		{"deliver view differs from installed view", ViewSynchrony, false, func(s script) {
			s[c][5] = dlv(c, 1, 1) // recorded as view 1 while in view 2
		}},
		{"swap at one member", TotalOrder, true, func(s script) {
			s[b][2], s[b][3] = s[b][3], s[b][2] // b delivers b1 before a1
		}},
		{"fifo reversed everywhere", FIFO, true, func(s script) {
			// a sends a3 and a4 in view 4; a and d both deliver a4 before a3.
			s[a] = append(s[a][:11], snd(3, 4), snd(4, 4), dlv(a, 4, 4), dlv(a, 3, 4), dlv(d, 2, 4))
			s[d] = append(s[d][:7], dlv(a, 4, 4), dlv(a, 3, 4), snd(2, 4), dlv(d, 2, 4))
		}},
		{"fifo gap at crashed member", FIFO, false, func(s script) {
			// d sends d1..d3 in view 3; b delivers d1 and d3 then crashes.
			s[a] = append(s[a][:9], dlv(d, 1, 3), dlv(d, 2, 3), dlv(d, 3, 3), inst(4, a, d))
			s[b] = append(s[b][:8], dlv(d, 1, 3), dlv(d, 3, 3), ev(Crash))
			s[d] = append(s[d][:4], snd(1, 3), snd(2, 3), snd(3, 3), dlv(d, 1, 3), dlv(d, 2, 3), dlv(d, 3, 3), inst(4, a, d))
		}},
		{"fifo missed first message after joining", FIFO, true, func(s script) {
			// V1{a,b} a1 V2{a,b,d} a2 a3: d joined in view 2, so it may skip a1
			// but not a2; it delivers a3 and crashes (so view 2's set is not required).
			clear(s)
			s[a] = []Event{inst(1, a, b), snd(1, 1), dlv(a, 1, 1), inst(2, a, b, d), snd(2, 2), snd(3, 2), dlv(a, 2, 2), dlv(a, 3, 2)}
			s[b] = []Event{inst(1, a, b), dlv(a, 1, 1), inst(2, a, b, d), dlv(a, 2, 2), dlv(a, 3, 2)}
			s[d] = []Event{inst(2, a, b, d), dlv(a, 3, 2), ev(Crash)}
		}},
		{"duplicate", NoDuplicates, true, func(s script) {
			s[a] = slices.Insert(s[a], 4, dlv(b, 1, 1))
		}},
		{"never sent", NoCreation, true, func(s script) {
			s[a] = append(s[a], dlv("p9#1", 1, 4))
			s[d] = append(s[d], dlv("p9#1", 1, 4))
		}},
		{"corrupt payload", NoCreation, true, func(s script) {
			e := dlv(a, 3, 4)
			e.Payload = "garbage"
			s[d][7] = e
		}},
		{"never self-delivered", SelfDelivery, true, func(s script) {
			s[a] = append(s[a], snd(4, 4))
		}},
		{"deliver after leave", NoDeliveryAfterLeave, true, func(s script) {
			s[c] = append(s[c], dlv(d, 1, 3))
		}},
		{"install after crash", NoDeliveryAfterLeave, true, func(s script) {
			s[b] = append(s[b], inst(4, a, d))
		}},
		{"delivered in later view", DeliveredInSentView, true, func(s script) {
			s[a][5] = snd(2, 1) // a2 submitted in view 1, ordered in view 2
		}},
		{"unknown kind", Malformed, true, func(s script) {
			s[a] = slices.Insert(s[a], 2, Event{Kind: 42})
		}},
		{"seq sent twice", Malformed, true, func(s script) {
			s[d] = slices.Insert(s[d], 5, snd(1, 3))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := base().clone()
			tc.edit(s)
			vs := Check(s.history(), Options{Complete: tc.complete})
			if got := props(vs); !slices.Equal(got, []string{tc.prop}) {
				t.Fatalf("want exactly %s, got %v:%s", tc.prop, got, dump(vs))
			}
			t.Logf("%s", dump(vs))
		})
	}
}

// TestCycleWithoutPairwiseInversion: three members, each pair agrees on its
// common messages, yet no total order exists.
func TestCycleWithoutPairwiseInversion(t *testing.T) {
	x, y, z := "p5#1", "p6#1", "p7#1"
	m := []string{a, b, c}
	s := script{
		a: {inst(1, m...), dlv(x, 1, 1), dlv(y, 1, 1), ev(Crash)},
		b: {inst(1, m...), dlv(y, 1, 1), dlv(z, 1, 1), ev(Crash)},
		c: {inst(1, m...), dlv(z, 1, 1), dlv(x, 1, 1), ev(Crash)},
		x: {snd(1, 0), ev(Crash)},
		y: {snd(1, 0), ev(Crash)},
		z: {snd(1, 0), ev(Crash)},
	}
	vs := Check(s.history(), Options{})
	if got := props(vs); !slices.Equal(got, []string{TotalOrder}) || len(vs) != 1 {
		t.Fatalf("want one total-order violation, got:%s", dump(vs))
	}
	t.Log(dump(vs))
}

func TestReportCap(t *testing.T) {
	s := script{a: {inst(1, a)}}
	for i := uint64(1); i <= 300; i++ {
		s[a] = append(s[a], dlv("p9#9", i, 1))
	}
	vs := Check(s.history(), Options{})
	if len(vs) != maxPerProperty+1 || !strings.Contains(vs[len(vs)-1].Detail, "200 more") {
		t.Fatalf("got %d violations, last %v", len(vs), vs[len(vs)-1])
	}
}

// ---- randomized correct histories ----

type simMember struct {
	name    string
	pos     int    // next order-log record to read
	view    uint64 // installed view (0: none yet)
	alive   bool
	leaving bool
	seq     uint64
	pending []uint64 // deferred sends (recorded with View 0), FIFO
}

type record struct {
	view    uint64 // view record if != 0
	members []string
	sender  string
	seq     uint64
}

// sim simulates the gcs design: one order log per group; a member links a
// message with compare(view == its view); view changes are records in the
// same log; each member reads the log in order at its own pace.
type sim struct {
	rng     *rand.Rand
	h       *History
	log     []record
	gview   uint64
	members []string // current view's members, sorted
	ms      map[string]*simMember
	order   []string // creation order of ms
	procs   int
	incs    map[int]int
	crashed []string // crashed members still in the current view
}

func (s *sim) add(e Event) { s.h.Add(e) }

func (s *sim) newMember() string {
	var p int
	// restart a crashed process as a new incarnation, or start a new process
	if s.procs > 0 && s.rng.IntN(3) == 0 {
		p = 1 + s.rng.IntN(s.procs)
	} else {
		s.procs++
		p = s.procs
	}
	s.incs[p]++
	name := fmt.Sprintf("p%d#%d", p, s.incs[p])
	m := &simMember{name: name, pos: len(s.log), alive: true}
	s.ms[name] = m
	s.order = append(s.order, name)
	return name
}

func (s *sim) changeView(members []string) {
	s.gview++
	s.members = slices.Clone(members)
	slices.Sort(s.members)
	s.log = append(s.log, record{view: s.gview, members: s.members})
}

func (s *sim) inView(name string) bool { return slices.Contains(s.members, name) }

func (s *sim) payload(sender string, seq uint64) string {
	if seq%5 == 0 {
		return "" // some payloads unrecorded
	}
	return fmt.Sprintf("%s/%d", sender, seq)
}

// step reads one record at member m.
func (s *sim) step(m *simMember) {
	r := s.log[m.pos]
	m.pos++
	if r.view == 0 {
		s.add(Event{Member: m.name, Kind: Deliver, Sender: r.sender, Seq: r.seq, View: m.view, Payload: s.payload(r.sender, r.seq)})
		return
	}
	if slices.Contains(r.members, m.name) {
		m.view = r.view
		s.add(Event{Member: m.name, Kind: Install, View: r.view, Members: r.members})
		return
	}
	m.alive = false
	if m.leaving {
		s.add(Event{Member: m.name, Kind: Leave})
	} else {
		s.add(Event{Member: m.name, Kind: Evict})
	}
}

func (s *sim) pick(ok func(*simMember) bool) *simMember {
	var cands []*simMember
	for _, n := range s.order {
		if m := s.ms[n]; m.alive && ok(m) {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	return cands[s.rng.IntN(len(cands))]
}

// active: alive, in the current view, not leaving, has installed a view.
func (s *sim) active(m *simMember) bool {
	return m.view != 0 && !m.leaving && s.inView(m.name) && !slices.Contains(s.crashed, m.name)
}

func (s *sim) countActive() int {
	n := 0
	for _, name := range s.members {
		if m := s.ms[name]; m.alive && s.active(m) {
			n++
		}
	}
	return n
}

func (s *sim) link(m *simMember, seq uint64) {
	s.log = append(s.log, record{sender: m.name, seq: seq})
}

// Generator actions, chosen with the weights of a genConfig.
const (
	actRead = iota
	actSendNow
	actSendLater
	actLink
	actSendStale
	actJoin
	actCrash
	actRemoveCrashed
	actLeave
	actEvict
	numActs
)

type genConfig struct {
	steps, initial, maxMembers int
	weights                    [numActs]int
}

// churny: frequent view changes of every kind.
var churny = [numActs]int{40, 25, 7, 8, 2, 3, 2, 5, 2, 1}

// steady: a larger group with rare view changes, as in a benchmark.
var steady = [numActs]int{300, 60, 10, 10, 1, 4, 1, 3, 1, 1}

func genHistory(seed uint64, steps, initial, maxMembers int) *History {
	return generate(seed, genConfig{steps, initial, maxMembers, churny})
}

func generate(seed uint64, cfg genConfig) *History {
	steps, initial, maxMembers := cfg.steps, cfg.initial, cfg.maxMembers
	total := 0
	for _, w := range cfg.weights {
		total += w
	}
	act := func(r int) int {
		for i, w := range cfg.weights {
			if r < w {
				return i
			}
			r -= w
		}
		return numActs
	}
	s := &sim{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), h: &History{}, ms: map[string]*simMember{}, incs: map[int]int{}}
	var first []string
	for range initial {
		first = append(first, s.newMember())
	}
	for _, n := range first {
		s.ms[n].pos = 0
	}
	s.changeView(first)
	for range steps {
		switch act(s.rng.IntN(total)) {
		case actRead: // read one record
			if m := s.pick(func(m *simMember) bool { return m.pos < len(s.log) }); m != nil {
				s.step(m)
			}
		case actSendNow: // multicast, linked at once in the member's view
			if m := s.pick(func(m *simMember) bool { return s.active(m) && m.view == s.gview && len(m.pending) == 0 }); m != nil {
				m.seq++
				s.add(Event{Member: m.name, Kind: Send, Sender: m.name, Seq: m.seq, View: m.view, Payload: s.payload(m.name, m.seq)})
				s.link(m, m.seq)
			}
		case actSendLater: // multicast, linked later (view unknown)
			if m := s.pick(s.active); m != nil {
				m.seq++
				s.add(Event{Member: m.name, Kind: Send, Sender: m.name, Seq: m.seq, Payload: s.payload(m.name, m.seq)})
				m.pending = append(m.pending, m.seq)
			}
		case actLink: // link a deferred message
			if m := s.pick(func(m *simMember) bool { return s.active(m) && len(m.pending) > 0 }); m != nil {
				s.link(m, m.pending[0])
				m.pending = m.pending[1:]
			}
		case actSendStale: // a removed member that has not noticed sends; its link fails
			if m := s.pick(func(m *simMember) bool { return m.view != 0 && !s.inView(m.name) }); m != nil {
				m.seq++
				s.add(Event{Member: m.name, Kind: Send, Sender: m.name, Seq: m.seq, View: m.view, Payload: s.payload(m.name, m.seq)})
			}
		case actJoin: // join
			if len(s.members) < maxMembers {
				n := s.newMember()
				s.changeView(append(slices.Clone(s.members), n))
				s.ms[n].pos = len(s.log) - 1
			}
		case actCrash: // crash (anybody alive, even a joiner or a member being removed)
			if s.countActive() > 1 {
				if m := s.pick(func(*simMember) bool { return true }); m != nil {
					m.alive = false
					s.add(Event{Member: m.name, Kind: Crash})
					if s.inView(m.name) {
						s.crashed = append(s.crashed, m.name)
					}
				}
			}
		case actRemoveCrashed: // remove a crashed member
			if len(s.crashed) > 0 {
				n := s.crashed[0]
				s.crashed = s.crashed[1:]
				s.changeView(slices.DeleteFunc(slices.Clone(s.members), func(x string) bool { return x == n }))
			}
		case actLeave: // graceful leave
			if s.countActive() > 1 {
				if m := s.pick(s.active); m != nil {
					m.leaving = true
					s.changeView(slices.DeleteFunc(slices.Clone(s.members), func(x string) bool { return x == m.name }))
				}
			}
		case actEvict: // removal of a live member (false suspicion)
			if s.countActive() > 1 {
				if m := s.pick(s.active); m != nil {
					s.changeView(slices.DeleteFunc(slices.Clone(s.members), func(x string) bool { return x == m.name }))
				}
			}
		}
	}
	// Quiesce: survivors link what they queued, then everyone drains.
	for _, n := range s.order {
		if m := s.ms[n]; m.alive && s.active(m) {
			for _, q := range m.pending {
				s.link(m, q)
			}
			m.pending = nil
		}
	}
	for {
		progress := false
		for _, n := range s.order {
			if m := s.ms[n]; m.alive && m.pos < len(s.log) {
				s.step(m)
				progress = true
			}
		}
		if !progress {
			break
		}
	}
	return s.h
}

func TestGeneratedCorrect(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		h := genHistory(seed, 400, 2+int(seed%4), 6)
		if vs := Check(h, Options{Complete: true}); len(vs) != 0 {
			t.Fatalf("seed %d (%d events): correct history reported:%s", seed, len(h.Events), dump(vs))
		}
	}
}

// TestGeneratorCoverage keeps the generator honest: across seeds it produces
// every kind of event.
func TestGeneratorCoverage(t *testing.T) {
	kinds := map[Kind]int{}
	for seed := uint64(1); seed <= 50; seed++ {
		for _, e := range genHistory(seed, 400, 3, 6).Events {
			kinds[e.Kind]++
		}
	}
	for k := Install; k <= Evict; k++ {
		if kinds[k] == 0 {
			t.Errorf("generator never produced %v", k)
		}
	}
	t.Logf("%v", kinds)
}

// memberIdx returns the indices of member n's events.
func memberIdx(evs []Event, n string) []int {
	var idx []int
	for i, e := range evs {
		if e.Member == n {
			idx = append(idx, i)
		}
	}
	return idx
}

func deliveredBy(evs []Event) map[string]map[msgKey]bool {
	res := map[string]map[msgKey]bool{}
	for _, e := range evs {
		if e.Kind == Deliver {
			if res[e.Member] == nil {
				res[e.Member] = map[msgKey]bool{}
			}
			res[e.Member][msgKey{e.Sender, e.Seq}] = true
		}
	}
	return res
}

func memberNames(evs []Event) []string {
	var ns []string
	for _, e := range evs {
		if !slices.Contains(ns, e.Member) {
			ns = append(ns, e.Member)
		}
	}
	return ns
}

type mutation struct {
	name    string
	want    string   // must be reported
	allowed []string // may also be reported
	// apply mutates evs (a copy) and reports whether it found a place to do so.
	apply func(rng *rand.Rand, evs []Event) ([]Event, bool)
}

var mutations = []mutation{
	{"swap two deliveries at one member", TotalOrder, nil, func(rng *rand.Rand, evs []Event) ([]Event, bool) {
		del := deliveredBy(evs)
		names := memberNames(evs)
		rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		for _, n := range names {
			idx := memberIdx(evs, n)
			for k := 1; k < len(idx); k++ {
				x, y := evs[idx[k-1]], evs[idx[k]]
				if x.Kind != Deliver || y.Kind != Deliver || x.Sender == y.Sender {
					continue
				}
				for o, set := range del {
					if o != n && set[msgKey{x.Sender, x.Seq}] && set[msgKey{y.Sender, y.Seq}] {
						evs[idx[k-1]], evs[idx[k]] = y, x
						return evs, true
					}
				}
			}
		}
		return evs, false
	}},
	{"drop a delivery at a surviving member", ViewSynchrony, []string{FIFO, SelfDelivery}, func(rng *rand.Rand, evs []Event) ([]Event, bool) {
		count := map[msgKey]int{}
		for _, e := range evs {
			if e.Kind == Deliver {
				count[msgKey{e.Sender, e.Seq}]++
			}
		}
		// survivors: members that install a view after the delivery, or never end
		var cands []int
		for _, n := range memberNames(evs) {
			idx := memberIdx(evs, n)
			last := evs[idx[len(idx)-1]].Kind
			survivor := last != Crash && last != Leave && last != Evict
			later := false
			for k := len(idx) - 1; k >= 0; k-- {
				e := evs[idx[k]]
				if e.Kind == Install {
					later = true
				}
				if e.Kind == Deliver && (later || survivor) && count[msgKey{e.Sender, e.Seq}] >= 2 {
					cands = append(cands, idx[k])
				}
			}
		}
		if len(cands) == 0 {
			return evs, false
		}
		i := cands[rng.IntN(len(cands))]
		return slices.Delete(evs, i, i+1), true
	}},
	{"duplicate a delivery", NoDuplicates, nil, func(rng *rand.Rand, evs []Event) ([]Event, bool) {
		var cands []int
		for i, e := range evs {
			if e.Kind == Deliver {
				cands = append(cands, i)
			}
		}
		if len(cands) == 0 {
			return evs, false
		}
		i := cands[rng.IntN(len(cands))]
		return slices.Insert(evs, i+1, evs[i]), true
	}},
	{"deliver after leave", NoDeliveryAfterLeave, nil, func(rng *rand.Rand, evs []Event) ([]Event, bool) {
		var m string
		var msg Event
		for _, e := range evs {
			if e.Kind == Leave || (m == "" && (e.Kind == Crash || e.Kind == Evict)) {
				m = e.Member
			}
			if e.Kind == Deliver {
				msg = e
			}
		}
		if m == "" || msg.Kind != Deliver {
			return evs, false
		}
		msg.Member = m
		return append(evs, msg), true
	}},
	{"corrupt a payload", NoCreation, nil, func(rng *rand.Rand, evs []Event) ([]Event, bool) {
		for _, i := range rng.Perm(len(evs)) {
			if evs[i].Kind == Deliver && evs[i].Payload != "" {
				evs[i].Payload += "!"
				return evs, true
			}
		}
		return evs, false
	}},
}

func TestGeneratedMutations(t *testing.T) {
	for _, mu := range mutations {
		t.Run(mu.name, func(t *testing.T) {
			applied := 0
			for seed := uint64(1); seed <= 100; seed++ {
				h := genHistory(seed, 300, 3+int(seed%3), 6)
				rng := rand.New(rand.NewPCG(seed, 7))
				evs, ok := mu.apply(rng, slices.Clone(h.Events))
				if !ok {
					continue
				}
				applied++
				vs := Check(&History{Events: evs}, Options{Complete: true})
				got := props(vs)
				if !slices.Contains(got, mu.want) {
					t.Fatalf("seed %d: mutation not caught as %s, got %v:%s", seed, mu.want, got, dump(vs))
				}
				for _, p := range got {
					if p != mu.want && !slices.Contains(mu.allowed, p) {
						t.Fatalf("seed %d: unexpected %s:%s", seed, p, dump(vs))
					}
				}
			}
			if applied < 50 {
				t.Fatalf("mutation applied to only %d of 100 histories", applied)
			}
		})
	}
}

// TestConcurrentAdd records each member's events from its own goroutine.
func TestConcurrentAdd(t *testing.T) {
	src := genHistory(42, 2000, 4, 6)
	byMember := map[string][]Event{}
	for _, e := range src.Events {
		byMember[e.Member] = append(byMember[e.Member], e)
	}
	h := &History{}
	var wg sync.WaitGroup
	for _, evs := range byMember {
		wg.Go(func() {
			for _, e := range evs {
				h.Add(e)
			}
		})
	}
	wg.Wait()
	if len(h.Events) != len(src.Events) {
		t.Fatalf("lost events: %d of %d", len(h.Events), len(src.Events))
	}
	if vs := Check(h, Options{Complete: true}); len(vs) != 0 {
		t.Fatalf("reordered correct history reported:%s", dump(vs))
	}
}

func BenchmarkCheck(b *testing.B) {
	h := generate(1, genConfig{steps: 112000, initial: 6, maxMembers: 8, weights: steady})
	for b.Loop() {
		if vs := Check(h, Options{Complete: true}); len(vs) != 0 {
			b.Fatalf("violations:%s", dump(vs))
		}
	}
	b.ReportMetric(float64(len(h.Events)), "events")
}
