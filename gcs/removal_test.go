package gcs_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/vscheck"
	"github.com/tutti-gcs/tutti/membership"
)

func (e *procEnv) check(t *testing.T) {
	t.Helper()
	h, _ := e.history()
	for _, v := range vscheck.Check(h, vscheck.Options{Complete: true}) {
		t.Errorf("violation: %v", v)
	}
}

// viewWithout returns the index of m's first view after index from that
// does not include name, or -1.
func (m *procMember) viewWithout(from int, name string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := from; i < len(m.views); i++ {
		if !slices.Contains(m.views[i].Members, name) {
			return i
		}
	}
	return -1
}

func (m *procMember) viewCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.views)
}

// TestMembershipRemovesCrashedMembers: crashes are detected by gossip,
// confirmed Dead in the process table, and the lowest-ranked live member
// removes them: first the oldest member (the trimmer and usual proposer),
// then two at once. No Group.Remove is called.
func TestMembershipRemovesCrashedMembers(t *testing.T) {
	t.Parallel() // mostly waiting for gossip and timeouts
	e := newProcEnv(t, false)
	e.gcfg = gcs.Config{GCInterval: 20 * time.Millisecond, TakeoverTimeout: 500 * time.Millisecond}
	var ms []*procMember
	for i := 0; i < 5; i++ {
		p, err := e.startProc(fmt.Sprintf("p%d", i))
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.join(p, "g", nil)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	if !pollFor(30*time.Second, e.settled) {
		t.Fatal("no 5-member view")
	}
	// Under heavy load gossip may suspect a live process: it is then
	// evicted (and stays out); the test goes on with the others.
	multicastAll := func(tag string) {
		t.Helper()
		for _, m := range e.survivors() {
			if err := m.multicast(tag + m.name); err != nil && !m.isEnded() {
				t.Fatal(err)
			}
		}
	}
	multicastAll("before/")
	crash := func(victims ...*procMember) {
		t.Helper()
		sv := e.survivors()
		from := map[*procMember]int{}
		for _, m := range sv {
			from[m] = m.viewCount()
		}
		for _, v := range victims {
			e.crash(v.p)
		}
		ok := pollFor(30*time.Second, func() bool {
			for _, m := range sv {
				if slices.Contains(victims, m) {
					continue
				}
				for _, v := range victims {
					if m.viewWithout(from[m], v.name) < 0 {
						return false
					}
				}
			}
			return true
		})
		if !ok {
			t.Fatalf("crashed %d members: survivors did not install a view without them", len(victims))
		}
		for _, m := range e.survivors() {
			v := m.lastView()
			if !strings.Contains(v.Reason, "failed") {
				t.Errorf("%s: view %d reason %q, want failed", m.name, v.ID, v.Reason)
			}
		}
	}
	sv := e.survivors()
	oldest := sv[0]
	for _, m := range sv {
		if slices.Index(ms, m) < slices.Index(ms, oldest) {
			oldest = m
		}
	}
	crash(oldest) // the trimmer and usual proposer
	multicastAll("after/")
	if sv := e.survivors(); len(sv) >= 3 {
		crash(sv[0], sv[2]) // two at once
	} else {
		t.Logf("only %d survivors after false suspicions: skipping the double crash", len(sv))
	}
	e.drain(30 * time.Second)
	e.check(t)
}

// TestRemovalTakeover: the oldest member cannot propose removals (its
// Node has no Membership, so it never sees a failure confirmed); the next
// live member takes over after TakeoverTimeout and removes the crashed
// member.
func TestRemovalTakeover(t *testing.T) {
	t.Parallel() // mostly waiting for gossip and timeouts
	e := newProcEnv(t, false)
	e.gcfg = gcs.Config{GCInterval: 20 * time.Millisecond, TakeoverTimeout: 300 * time.Millisecond}
	px, err := e.startPlainProc("x")
	if err != nil {
		t.Fatal(err)
	}
	x, err := e.join(px, "g", nil)
	if err != nil {
		t.Fatal(err)
	}
	var ms []*procMember
	for _, id := range []string{"y", "z"} {
		p, err := e.startProc(id)
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.join(p, "g", nil)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	if !pollFor(30*time.Second, e.settled) {
		t.Fatal("no 3-member view")
	}
	if v := x.lastView(); v.Members[0] != x.name {
		t.Fatalf("x is not the oldest: %v", v.Members)
	}
	y, z := ms[0], ms[1]
	from := y.viewCount()
	e.crash(z.p)
	if !pollFor(30*time.Second, func() bool { return y.viewWithout(from, z.name) >= 0 && e.settled() }) {
		t.Fatalf("%s was not removed: x's view %v", z.name, x.lastView().Members)
	}
	for _, m := range []*procMember{x, y} {
		if err := m.multicast("after/" + m.name); err != nil {
			t.Fatal(err)
		}
	}
	e.drain(30 * time.Second)
	e.check(t)
}

// TestJoinerSurvivesProviderCrash: the provider named by the join view
// dies before publishing the state. Before the fix the joiner waited for
// the state forever: nobody removed the provider (the joiner was the only
// other member and its housekeeping had not started). Now the joiner sees
// the provider confirmed dead, gives up that attempt and joins again; the
// new join removes the dead provider and, with no live member left to
// provide, admits the joiner alone.
func TestJoinerSurvivesProviderCrash(t *testing.T) {
	t.Parallel() // mostly waiting for gossip and timeouts
	e := newProcEnv(t, false)
	// Never inline: every batch goes through the sender's queue.
	e.gcfg = gcs.Config{GCInterval: 20 * time.Millisecond, TakeoverTimeout: 500 * time.Millisecond, InlineBytes: -1}
	pa, err := e.startProc("a")
	if err != nil {
		t.Fatal(err)
	}
	called, release := make(chan struct{}), make(chan struct{})
	a, err := e.join(pa, "g", &gcs.JoinOptions{Snapshot: func() ([]byte, error) {
		close(called)
		<-release
		return []byte("late"), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	if err := a.multicast("m1"); err != nil {
		t.Fatal(err)
	}
	pb, err := e.startProc("b")
	if err != nil {
		t.Fatal(err)
	}
	type res struct {
		m   *procMember
		err error
	}
	joined := make(chan res, 1)
	go func() {
		m, err := e.join(pb, "g", nil)
		joined <- res{m, err}
	}()
	select {
	case <-called:
	case <-time.After(30 * time.Second):
		t.Fatal("the provider was never asked for a snapshot")
	}
	// a's process dies while its snapshot is under way: its membership
	// node stops (the table will say Dead), its gcs member never publishes.
	pa.mn.Close()
	var r res
	select {
	case r = <-joined:
	case <-time.After(40 * time.Second):
		t.Fatal("the joiner still waits for the dead provider's state")
	}
	if r.err != nil {
		t.Fatalf("join: %v", r.err)
	}
	b := r.m
	if !pollFor(10*time.Second, func() bool { return b.lastView() != nil }) {
		t.Fatal("the joiner delivered no view")
	}
	v := b.lastView()
	if len(v.Members) != 1 || v.Members[0] != b.name || !slices.Contains(v.Left, a.name) {
		t.Errorf("joiner's first view %+v, want it alone with %s removed", v, a.name)
	}
	if err := b.multicast("m2"); err != nil {
		t.Fatal(err)
	}
	// Large messages go through b's queue. The slot of b's abandoned first
	// attempt is reclaimed by b's housekeeping (queue fence zeroed, queue
	// freed) once the log is trimmed past it; before the fix both
	// attempts shared one queue, and these failed with ErrEvicted while
	// b was alone in the view. Each round waits for stability, i.e. for
	// at least one more housekeeping round.
	for i := uint64(0); i < 10; i++ {
		if err := b.multicast(fmt.Sprintf("big/%d/%s", i, strings.Repeat("x", 3000))); err != nil {
			t.Fatalf("large multicast %d: %v", i, err)
		}
		if !pollFor(10*time.Second, func() bool { return b.g.Stability().Pos >= 3+i }) {
			t.Fatalf("stability did not reach %d", 3+i)
		}
	}
	close(release)
	e.crash(pa)
	e.drain(30 * time.Second)
	e.check(t)
}

// TestJoinWithoutMembershipFailsOnItsDeadline: without Membership nothing
// confirms the provider's crash; Join's ctx bounds the wait and the
// half-made membership is left, so the group is usable afterwards.
func TestJoinWithoutMembershipFailsOnItsDeadline(t *testing.T) {
	t.Parallel() // mostly waiting for gossip and timeouts
	e := newEnv(t)
	na := e.node("a")
	release := make(chan struct{})
	defer close(release)
	ga, err := na.Join(context.Background(), "g", gcs.JoinOptions{Snapshot: func() ([]byte, error) {
		<-release
		return nil, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ga.Events() {
		}
	}()
	nb := e.node("b")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = nb.Join(ctx, "g", gcs.JoinOptions{Restore: func([]byte) error { return nil }})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("join: %v, want the deadline", err)
	}
}

// BenchmarkCrashToView measures, over b.N crashes of one member of a
// 3-member group (each process with its own membership node), the time
// from the crash to the survivors' delivery of the view without it:
// gossip detection, the process-table write, gcs's next housekeeping
// round, the view change and its delivery. Reported: p50/p99/max over
// every (crash, survivor) pair, in ms. "default" uses membership's and
// gcs's default timings; "fast" the tests' (same gossip, quicker table
// polling and gcs housekeeping).
//
//	go test -run '^$' -bench CrashToView -benchtime 20x ./gcs/
func BenchmarkCrashToView(b *testing.B) {
	for _, mode := range []string{"default", "fast"} {
		b.Run(mode, func(b *testing.B) {
			e := newProcEnv(b, false)
			if mode == "default" {
				e.defaultTimings = true
			} else {
				e.gcfg = gcs.Config{GCInterval: 20 * time.Millisecond, TakeoverTimeout: 500 * time.Millisecond}
			}
			next := 0
			add := func() {
				next++
				p, err := e.startProc(fmt.Sprintf("p%d", next))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.join(p, "g", nil); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; i < 3; i++ {
				add()
			}
			var samples []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if !pollFor(60*time.Second, e.settled) {
					b.Fatal("the group did not settle")
				}
				sv := e.survivors()
				victim := sv[i%len(sv)]
				from := map[*procMember]int{}
				for _, m := range sv {
					from[m] = m.viewCount()
				}
				t0 := time.Now()
				e.crash(victim.p)
				if !pollFor(60*time.Second, func() bool {
					for _, m := range sv {
						if m != victim && m.viewWithout(from[m], victim.name) < 0 {
							return false
						}
					}
					return true
				}) {
					b.Fatalf("no view without %s", victim.name)
				}
				for _, m := range sv {
					if m == victim {
						continue
					}
					k := m.viewWithout(from[m], victim.name)
					m.mu.Lock()
					samples = append(samples, m.viewAt[k].Sub(t0))
					m.mu.Unlock()
				}
				b.StopTimer()
				add()
				b.StartTimer()
			}
			b.StopTimer()
			sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
			q := func(p float64) float64 {
				return float64(samples[min(len(samples)-1, int(p*float64(len(samples))))].Microseconds()) / 1000
			}
			b.ReportMetric(q(0.5), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(q(1), "max-ms")
			b.Logf("%s: %d crashes, %d samples: p50 %.0f ms, p99 %.0f ms, max %.0f ms", mode, b.N, len(samples), q(0.5), q(0.99), q(1))
		})
	}
}

// TestLeaveWhileBehindDeliversEverything: a member that calls Leave while
// its application is behind must still deliver everything ordered before
// its leave view. Before the fix, the oldest member trimmed the log by the
// minimum over the new view only, which no longer includes the leaver:
// the log below the leaver's position was reclaimed and overwritten by
// later messages, and the leaver was evicted ("fell behind the order
// log") instead of leaving, losing messages of its last view.
func TestLeaveWhileBehindDeliversEverything(t *testing.T) {
	t.Parallel() // mostly waiting for gossip and timeouts
	e := newEnv(t)
	mk := func(id string) *gcs.Node {
		return e.nodeWith(id, gcs.Config{LogCapacity: 8192, QueueCapacity: 16 << 10, MaxBatchBytes: 4 << 10,
			GCInterval: 5 * time.Millisecond})
	}
	a := e.join(mk("a"), "small")
	nb := mk("b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gb, err := nb.Join(ctx, "small", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a sees b", func() bool { return a.viewSize() == 2 })
	// b's application stalls: nothing is read from its Events for now.
	// 24 records of 264 bytes fit in the 7 KiB of the log that multicasts
	// may fill (logRoom) while b pins it.
	if err := a.send(24, 200); err != nil {
		t.Fatal(err)
	}
	left := make(chan error, 1)
	go func() { left <- gb.Leave(ctx) }()
	waitUntil(t, 20*time.Second, "the view without b at a", func() bool { return a.viewSize() == 1 })
	// a goes on multicasting more than the log holds while b catches up.
	sent := make(chan error, 1)
	go func() { sent <- a.send(60, 200) }()
	var got []*gcs.Message
	var evicted *gcs.Evicted
	for ev := range gb.Events() {
		switch ev := ev.(type) {
		case *gcs.Message:
			got = append(got, ev)
		case *gcs.Evicted:
			evicted = ev
		}
	}
	if err := <-left; err != nil {
		t.Errorf("leave: %v", err)
	}
	if evicted != nil {
		t.Errorf("the leaver was evicted (%s) instead of leaving", evicted.Reason)
	}
	if len(got) != 24 {
		t.Errorf("the leaver delivered %d messages, want the 24 ordered before its leave", len(got))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a delivered all", func() bool { return a.delivered() == 84 })
	a.leave()
}

// TestRemovalFitsInAFullLog: a member that stops delivering pins the log
// (head cannot pass its position), the others' multicasts fill it, and
// only removing that member lets head move again. Before the fix
// multicasts could fill the whole log, so the removal's view record found
// no room and waited, like the senders, for a trim that could not come:
// the group stalled for good (TestRandomizedVirtualSynchrony hit it when
// a joiner's state provider was declared dead under load: the joiner's
// slot pinned the log, and neither its leave nor the removal of the dead
// could be written). Multicasts and joins now leave a reserve that only
// removals use.
func TestRemovalFitsInAFullLog(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mk := func(id string) *gcs.Node {
		return e.nodeWith(id, gcs.Config{LogCapacity: 4096, GCInterval: 5 * time.Millisecond})
	}
	a := e.join(mk("a"), "full")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// b's application never reads its Events: b delivers nothing and
	// pins the log at its join record.
	gb, err := mk("b").Join(ctx, "full", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a sees b", func() bool { return a.viewSize() == 2 })
	// a multicasts small messages (their records are smaller than the
	// removal's view record) until the log is full.
	const n = 200 // far more than 4 KiB of records
	sent := make(chan error, 1)
	go func() { sent <- a.send(n, 8) }()
	waitUntil(t, 20*time.Second, "a's sender finds the log full", func() bool { return gcs.LogFullWaits(a.g) > 0 })
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if err := a.g.Remove(rctx, gb.Name()); err != nil {
		t.Fatalf("removing the member that pins the full log: %v", err)
	}
	// b learns it was removed; a's multicasts go on once head moves.
	for ev := range gb.Events() {
		_ = ev
	}
	if err := <-sent; err != nil {
		t.Fatalf("multicast after the removal: %v", err)
	}
	waitUntil(t, 20*time.Second, "a delivered all", func() bool { return a.delivered() == n })
	a.leave()
}

// TestJoinRefusedWhenItsRemovalCouldNotFit: a removal must fit in the
// eighth of the order log that multicasts and joins leave free
// (TestRemovalFitsInAFullLog), or a member that stops delivering pins a
// full log for good. With a 4 KiB log (512 bytes kept) and 120-byte
// process ids, a view of two members has a removal record too large for
// that: the second join is refused with ErrGroupFull, saying why, and
// leaves nothing behind. It used to be admitted.
func TestJoinRefusedWhenItsRemovalCouldNotFit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	long := func(c string) string { return strings.Repeat(c, gcs.MaxIDLen) }
	mk := func(id string) *gcs.Node { return e.nodeWith(id, gcs.Config{LogCapacity: 4096}) }
	a := e.join(mk(long("a")), "narrow")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := mk(long("b")).Join(ctx, "narrow", gcs.JoinOptions{})
	if !errors.Is(err, gcs.ErrGroupFull) || !strings.Contains(err.Error(), "LogCapacity") {
		t.Fatalf("second long-named join into a 4 KiB log: %v, want ErrGroupFull naming LogCapacity", err)
	}
	gi := describe(t, e.node("obs"), "narrow", "one member", func(gi gcs.GroupInfo) bool { return true })
	if len(gi.Members) != 1 || len(gi.Retired) != 0 {
		t.Fatalf("after the refused join: members %+v, retired %+v", gi.Members, gi.Retired)
	}
	// Short names fit: the group takes more members.
	b := e.join(mk("b"), "narrow")
	sendAll(t, []*member{a, b}, 3, 50)
	waitUntil(t, 20*time.Second, "delivered", func() bool { return a.delivered() == 6 && b.delivered() == 6 })
	e.leaveAll([]*member{a, b})
}

// TestMemberOfAReclaimedRowIsRemoved: a member's process crashed and was
// declared dead, and a new process took its row (the table was full, so
// registration reused the longest-dead row) before any member removed it.
// The dead member's id was then nowhere in the process table, and
// confirmedDead, which looked the id up, never called it dead: it stayed
// in the view for good (holding back trimming, and joiners waited for its
// state). The table's maximum incarnation says the member's life was
// registered, so a missing row means it ended.
func TestMemberOfAReclaimedRowIsRemoved(t *testing.T) {
	t.Parallel() // mostly waiting for gossip
	e := newProcEnv(t, false)
	e.gcfg = gcs.Config{GCInterval: 20 * time.Millisecond, TakeoverTimeout: 300 * time.Millisecond}
	e.table = membership.DefaultTable
	e.table.MaxRows = 3
	var w *proc
	for _, id := range []string{"w1", "w2"} { // observers, in no group
		p, err := e.startProc(id)
		if err != nil {
			t.Fatal(err)
		}
		w = p
	}
	px, err := e.startProc("x")
	if err != nil {
		t.Fatal(err)
	}
	x, err := e.join(px, "g", &gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.crash(px)
	if !pollFor(15*time.Second, func() bool {
		r, _ := w.mn.Known().Lookup("x")
		return r.State == membership.StateDead
	}) {
		t.Fatalf("x not declared dead: %v", w.mn.Known().Rows)
	}
	py, err := e.startProc("y") // the table is full: y takes x's row
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := py.mn.Known().Lookup("x"); ok {
		t.Fatalf("x's row %v was not reused", r)
	}
	y, err := e.join(py, "g", &gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !pollFor(10*time.Second, func() bool { return y.viewWithout(0, x.name) >= 0 }) {
		t.Fatalf("the dead %s was never removed: y's view %v", x.name, y.lastView().Members)
	}
}
