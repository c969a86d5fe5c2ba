package gcs_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/vscheck"
	"github.com/tutti-gcs/tutti/membership"
)

// This file holds the process model shared by the randomized
// virtual-synchrony test (vs_test.go) and the membership-driven removal
// tests and benchmark (removal_test.go): each process is a client, a
// membership node and a gcs Node of its own, as in production, so a crash
// (closing all three without leaving) is detected by gossip, confirmed in
// the process table and acted on by gcs.

// Test timings: failure detection in about a second (membership's
// in-process tests use the same table timing) and quick gcs housekeeping.
var (
	procGossip = membership.GossipTiming{ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond,
		SuspicionMult: 3, GossipInterval: 100 * time.Millisecond}
	procTiming = membership.Timing{PollInterval: 50 * time.Millisecond, TakeoverTimeout: 500 * time.Millisecond,
		AbsentTimeout: 3 * time.Second, IsolationDelay: 5 * time.Second, LeaveTimeout: 200 * time.Millisecond}
)

type procEnv struct {
	t      testing.TB
	c      *cluster.Cluster
	faults *cluster.Faults
	log    zerolog.Logger
	mlog   zerolog.Logger // membership's
	gcfg   gcs.Config     // template: Client, ID and Membership are filled per process
	// defaultTimings uses membership's defaults instead of procGossip and
	// procTiming (the benchmark measures what users get).
	defaultTimings bool
	// table places the process table (zero: membership.DefaultTable).
	table membership.TableConfig

	mu      sync.Mutex
	procs   map[string]*proc // running processes by id
	members []*procMember    // every member ever joined, in join order
}

func newProcEnv(t testing.TB, withFaults bool) *procEnv {
	t.Helper()
	e := &procEnv{t: t, procs: map[string]*proc{},
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)}
	mlog := zerolog.Nop()
	if path := os.Getenv("TUTTI_VS_LOG"); path != "" {
		// Debugging: every log of gcs and membership, with timestamps.
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		e.log = zerolog.New(f).Level(zerolog.DebugLevel).With().Timestamp().Logger()
		mlog = e.log.Level(zerolog.InfoLevel)
	}
	e.mlog = mlog
	cfg := cluster.Config{NoSync: true, DataDir: t.TempDir()}
	if withFaults {
		e.faults = cluster.NewFaults()
		cfg.WrapTransport = e.faults.Wrap
	}
	c, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	t.Cleanup(func() {
		e.closeAll()
		c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

// proc is one process: client, membership node and gcs node.
type proc struct {
	id     string
	cl     *client.Client
	mn     *membership.Node
	n      *gcs.Node
	member *procMember // the current membership of the group, if any
	closed bool
}

func (e *procEnv) gossipSeeds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s []string
	for _, p := range e.procs {
		if p.mn != nil {
			s = append(s, p.mn.GossipAddr())
		}
	}
	sort.Strings(s)
	return s
}

// startProc starts process id (a new incarnation if id ran before).
func (e *procEnv) startProc(id string) (*proc, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: e.c.Seeds()})
	if err != nil {
		return nil, err
	}
	mcfg := membership.Config{ID: id, Client: cl, Bind: "127.0.0.1:0", Seeds: e.gossipSeeds(),
		Logger: e.mlog.With().Str("mn", id).Logger(), Gossip: procGossip, Timing: procTiming, Table: e.table}
	if e.defaultTimings {
		mcfg.Gossip, mcfg.Timing = membership.GossipTiming{}, membership.Timing{}
	}
	mn, err := membership.Start(ctx, mcfg)
	if err != nil {
		cl.Close()
		return nil, err
	}
	gc := e.gcfg
	gc.Client, gc.ID, gc.Membership, gc.Logger = cl, id, mn, e.log
	n, err := gcs.Open(ctx, gc)
	if err != nil {
		mn.Close()
		cl.Close()
		return nil, err
	}
	p := &proc{id: id, cl: cl, mn: mn, n: n}
	e.mu.Lock()
	e.procs[id] = p
	e.mu.Unlock()
	return p, nil
}

// startPlainProc starts process id without a membership node: its gcs
// Node has no Membership.
func (e *procEnv) startPlainProc(id string) (*proc, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: e.c.Seeds()})
	if err != nil {
		return nil, err
	}
	gc := e.gcfg
	gc.Client, gc.ID, gc.Logger = cl, id, e.log
	n, err := gcs.Open(ctx, gc)
	if err != nil {
		cl.Close()
		return nil, err
	}
	p := &proc{id: id, cl: cl, n: n}
	e.mu.Lock()
	e.procs[id] = p
	e.mu.Unlock()
	return p, nil
}

func (p *proc) closeMembership() {
	if p.mn != nil {
		p.mn.Close()
	}
}

// crash stops p as a crash would: no gcs Leave, no membership Leave.
func (e *procEnv) crash(p *proc) {
	e.mu.Lock()
	if p.closed {
		e.mu.Unlock()
		return
	}
	p.closed = true
	delete(e.procs, p.id)
	e.mu.Unlock()
	p.n.Close()
	if m := p.member; m != nil {
		<-m.done
		m.end(vscheck.Crash)
	}
	p.closeMembership()
	p.cl.Close()
}

// exit stops p gracefully in the process table (membership Leave) after
// its member left the group.
func (e *procEnv) exit(p *proc) {
	e.mu.Lock()
	if p.closed {
		e.mu.Unlock()
		return
	}
	p.closed = true
	delete(e.procs, p.id)
	e.mu.Unlock()
	p.n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p.mn != nil {
		if err := p.mn.Leave(ctx); err != nil {
			e.log.Debug().Err(err).Msg("membership leave")
		}
	}
	p.cl.Close()
}

// closeAll stops every process without recording anything (the end of a
// test: the survivors' histories were cut already).
func (e *procEnv) closeAll() {
	e.mu.Lock()
	ps := make([]*proc, 0, len(e.procs))
	for _, p := range e.procs {
		ps = append(ps, p)
		p.closed = true
	}
	e.procs = map[string]*proc{}
	ms := e.members
	e.mu.Unlock()
	for _, m := range ms {
		m.freeze()
	}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.n.Close()
			p.closeMembership()
			p.cl.Close()
		}()
	}
	wg.Wait()
	for _, m := range ms {
		m.stopSender()
	}
}

// procMember is one membership of the group, recording its own events
// (its local order) and keeping an application state: the number of
// messages applied and a running hash of their payloads, which state
// transfer carries to joiners.
type procMember struct {
	e    *procEnv
	p    *proc
	g    *gcs.Group
	name string
	done chan struct{} // closed when Events is closed

	mu         sync.Mutex
	events     []vscheck.Event
	frozen     bool // the history was cut: record nothing more
	ended      bool
	evicted    bool
	seq        uint64
	views      []*gcs.View
	viewAt     []time.Time // when each view was received
	delivered  int
	lastDeliv  int // len(events) after the last Deliver
	applied    uint64
	stateHash  uint64
	markerSeen map[string]bool

	stop       chan struct{} // stops the sender
	stopOnce   sync.Once
	senderDone chan struct{}
}

func (m *procMember) add(ev vscheck.Event) {
	if m.frozen {
		return
	}
	ev.Member = m.name
	m.events = append(m.events, ev)
}

// end records Leave or Crash unless the membership already ended.
func (m *procMember) end(k vscheck.Kind) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.ended {
		m.ended = true
		m.add(vscheck.Event{Kind: k})
	}
}

func (m *procMember) freeze() {
	m.mu.Lock()
	m.frozen = true
	m.mu.Unlock()
}

func (m *procMember) stopSender() {
	m.stopOnce.Do(func() { close(m.stop) })
	if m.senderDone != nil {
		<-m.senderDone
	}
}

func (m *procMember) apply(payload []byte) {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], m.stateHash)
	h.Write(b[:])
	h.Write(payload)
	m.stateHash = h.Sum64()
	m.applied++
}

func (m *procMember) state() (uint64, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applied, m.stateHash
}

func (m *procMember) lastView() *gcs.View {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.views) == 0 {
		return nil
	}
	return m.views[len(m.views)-1]
}

func (m *procMember) isEnded() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ended
}

// join makes p a member of group and starts consuming its events.
func (e *procEnv) join(p *proc, group string, opts *gcs.JoinOptions) (*procMember, error) {
	m := &procMember{e: e, p: p, done: make(chan struct{}), markerSeen: map[string]bool{}, stop: make(chan struct{})}
	o := gcs.JoinOptions{
		Snapshot: func() ([]byte, error) {
			m.mu.Lock()
			defer m.mu.Unlock()
			return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, m.applied), m.stateHash), nil
		},
		Restore: func(b []byte) error {
			if len(b) != 16 {
				return fmt.Errorf("state of %d bytes", len(b))
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			m.applied, m.stateHash = binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
			return nil
		},
	}
	if opts != nil {
		o = *opts
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := p.n.Join(ctx, group, o)
	if err != nil {
		return nil, err
	}
	m.g, m.name = g, g.Name()
	e.mu.Lock()
	p.member = m
	e.members = append(e.members, m)
	e.mu.Unlock()
	go m.consume()
	return m, nil
}

func (m *procMember) consume() {
	defer close(m.done)
	for ev := range m.g.Events() {
		m.mu.Lock()
		switch ev := ev.(type) {
		case *gcs.View:
			mem := append([]string(nil), ev.Members...)
			sort.Strings(mem)
			m.add(vscheck.Event{Kind: vscheck.Install, View: ev.ID, Members: mem})
			m.views = append(m.views, ev)
			m.viewAt = append(m.viewAt, time.Now())
		case *gcs.Message:
			m.add(vscheck.Event{Kind: vscheck.Deliver, View: ev.View, Sender: ev.Sender, Seq: ev.Seq, Payload: string(ev.Payload)})
			if !m.frozen {
				m.lastDeliv = len(m.events)
				m.delivered++
				m.apply(ev.Payload)
				if strings.HasPrefix(string(ev.Payload), "marker/") {
					m.markerSeen[ev.Sender] = true
				}
			}
		case *gcs.Evicted:
			if !m.ended {
				m.add(vscheck.Event{Kind: vscheck.Evict, View: ev.View})
			}
			m.ended, m.evicted = true, true
		}
		m.mu.Unlock()
	}
}

// multicast records a Send and multicasts it. The view is recorded as 0:
// a message may be linked in a later view than the one it was submitted
// in.
func (m *procMember) multicast(payload string) error {
	m.mu.Lock()
	if m.ended || m.frozen {
		m.mu.Unlock()
		return gcs.ErrNotMember
	}
	m.seq++
	m.add(vscheck.Event{Kind: vscheck.Send, Sender: m.name, Seq: m.seq, Payload: payload})
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return m.g.Multicast(ctx, []byte(payload))
}

// startSender multicasts random messages, one at a time, until stopped or
// the membership ends.
func (m *procMember) startSender(rng *rand.Rand, maxGap time.Duration) {
	m.senderDone = make(chan struct{})
	go func() {
		defer close(m.senderDone)
		for i := 0; ; i++ {
			t := time.NewTimer(time.Duration(rng.Int64N(int64(maxGap))))
			select {
			case <-m.stop:
				t.Stop()
				return
			case <-t.C:
			}
			size := 8 + rng.IntN(120)
			if rng.IntN(10) == 0 {
				size = 1500 + rng.IntN(3000) // through the sender's queue
			}
			p := fmt.Sprintf("%s/%d/", m.name, i)
			p += strings.Repeat("x", max(0, size-len(p)))
			err := m.multicast(p)
			if err == nil {
				continue
			}
			if errors.Is(err, gcs.ErrEvicted) || errors.Is(err, gcs.ErrNotMember) || errors.Is(err, gcs.ErrClosed) {
				return
			}
			m.e.t.Errorf("%s: multicast: %v", m.name, err)
			return
		}
	}()
}

// leave leaves the group gracefully and records Leave.
func (m *procMember) leave() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := m.g.Leave(ctx)
	if err != nil && !errors.Is(err, gcs.ErrEvicted) {
		return err
	}
	<-m.done
	m.end(vscheck.Leave)
	return nil
}

// survivors returns the members that neither ended nor belong to a closed
// process.
func (e *procEnv) survivors() []*procMember {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*procMember
	for _, p := range e.procs {
		if m := p.member; m != nil && !m.isEnded() {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// waitFor polls cond every few milliseconds until it holds or d passed.
func pollFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// settled reports whether every survivor's last view is exactly the
// survivors.
func (e *procEnv) settled() bool {
	sv := e.survivors()
	if len(sv) == 0 {
		return false
	}
	var names []string
	for _, m := range sv {
		names = append(names, m.name)
	}
	want := strings.Join(names, ",")
	for _, m := range sv {
		v := m.lastView()
		if v == nil {
			return false
		}
		mem := append([]string(nil), v.Members...)
		sort.Strings(mem)
		if strings.Join(mem, ",") != want {
			return false
		}
	}
	return true
}

// drain brings the group to quiescence and cuts the history there: wait
// until the survivors' view is exactly the survivors (crashed members
// removed through the process table), have every survivor multicast a
// marker, wait until every survivor delivered every survivor's marker and
// all delivered the same number of messages, then freeze the histories.
// Each survivor's history is cut after its last delivery, which drops
// view installs that raced with the freeze (a late false suspicion) so
// the cut is consistent: a history ending in the middle of a view change
// at some members is not "complete". It returns the survivors.
func (e *procEnv) drain(d time.Duration) []*procMember {
	e.t.Helper()
	if !pollFor(d, e.settled) {
		for _, m := range e.survivors() {
			e.t.Logf("%s: last view %+v", m.name, m.lastView())
		}
		e.t.Fatalf("the survivors' view did not settle within %v", d)
	}
	var wg sync.WaitGroup
	for _, m := range e.survivors() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A survivor may still be evicted (a late false suspicion): it
			// then stops being a survivor.
			err := m.multicast("marker/" + m.name)
			if err != nil && !errors.Is(err, gcs.ErrEvicted) && !errors.Is(err, gcs.ErrNotMember) {
				e.t.Errorf("%s: marker: %v", m.name, err)
			}
		}()
	}
	wg.Wait()
	quiet := func() bool {
		sv := e.survivors()
		if len(sv) == 0 {
			return false
		}
		n := -1
		for _, m := range sv {
			m.mu.Lock()
			ok := n < 0 || int(m.applied) == n
			n = int(m.applied)
			for _, o := range sv {
				ok = ok && m.markerSeen[o.name]
			}
			m.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	}
	if !pollFor(d, quiet) {
		for _, m := range e.survivors() {
			m.mu.Lock()
			e.t.Logf("%s: delivered %d, applied %d, markers %v, last view %+v", m.name, m.delivered, m.applied, m.markerSeen, m.views[len(m.views)-1])
			m.mu.Unlock()
		}
		e.t.Fatalf("the survivors did not deliver every marker within %v", d)
	}
	sv := e.survivors()
	for _, m := range sv {
		m.mu.Lock()
		m.frozen = true
		m.events = m.events[:m.lastDeliv]
		m.mu.Unlock()
	}
	return sv
}

// history assembles every member's events.
func (e *procEnv) history() (*vscheck.History, int) {
	e.mu.Lock()
	ms := e.members
	e.mu.Unlock()
	h := &vscheck.History{}
	n := 0
	for _, m := range ms {
		m.mu.Lock()
		for _, ev := range m.events {
			h.Add(ev)
		}
		n += len(m.events)
		m.mu.Unlock()
	}
	return h, n
}
