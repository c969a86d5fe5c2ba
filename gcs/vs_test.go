package gcs_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/vscheck"
)

// TestRandomizedVirtualSynchrony runs a group of 3–7 members, each a
// process of its own (client, membership node, gcs Node), under random
// multicasts from every member, crashes (detected by gossip, confirmed in
// the process table, removed by gcs), joins (new processes and new
// incarnations of crashed ones, with state transfer), graceful leaves,
// rejoins after false-suspicion evictions, and memnode faults (the leader
// host of a memnode crashed and restarted, a host's Raft links cut and
// healed). At the end the survivors are drained and every member's
// recorded events must pass vscheck with Complete, and every survivor must
// hold the same application state (messages applied, hash of payloads),
// which checks state transfer too.
//
// Seeds: TUTTI_VS_SEED=n runs seed n; TUTTI_VS_SEEDS=k runs k seeds (from
// TUTTI_VS_SEED or the clock); TUTTI_VS_DURATION=20s sets the chaos phase
// of each run (default 8s, 4s with -short).
func TestRandomizedVirtualSynchrony(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TUTTI_VS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TUTTI_VS_SEED: %v", err)
		}
		seed = v
	}
	runs := 1
	if s := os.Getenv("TUTTI_VS_SEEDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("TUTTI_VS_SEEDS=%q", s)
		}
		runs = v
	}
	dur := 8 * time.Second
	if testing.Short() {
		dur = 4 * time.Second
	}
	if s := os.Getenv("TUTTI_VS_DURATION"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("TUTTI_VS_DURATION: %v", err)
		}
		dur = v
	}
	for i := 0; i < runs; i++ {
		s := seed + uint64(i)
		t.Run(fmt.Sprintf("seed=%d", s), func(t *testing.T) {
			t.Logf("seed %d (rerun with TUTTI_VS_SEED=%d), chaos for %v", s, s, dur)
			runVS(t, s, dur)
		})
	}
}

func runVS(t *testing.T, seed uint64, dur time.Duration) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	e := newProcEnv(t, true)
	// Small logs and queues so the run wraps them, trims and reclaims.
	// Batches over 1 KiB go through the senders' queues.
	e.gcfg = gcs.Config{LogCapacity: 64 << 10, QueueCapacity: 64 << 10, MaxBatchBytes: 16 << 10, InlineBytes: 1 << 10,
		GCInterval: 20 * time.Millisecond, TakeoverTimeout: 500 * time.Millisecond}
	const group, minLive, maxLive = "vs", 3, 7
	var (
		nextID  int
		crashed []string // ids whose process crashed: rejoin as a new incarnation
		stats   = map[string]int{}
	)
	senderRng := func() *rand.Rand { return rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64())) }
	const maxGap = 40 * time.Millisecond
	startMember := func(id string) {
		p, err := e.startProc(id)
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		m, err := e.join(p, group, nil)
		if err != nil {
			t.Fatalf("%s: join: %v", id, err)
		}
		m.startSender(senderRng(), maxGap)
		stats["join"]++
	}
	newID := func() string {
		if len(crashed) > 0 && rng.IntN(2) == 0 {
			id := crashed[0]
			crashed = crashed[1:]
			stats["restart"]++
			return id
		}
		nextID++
		return fmt.Sprintf("p%d", nextID)
	}
	n0 := minLive + rng.IntN(maxLive-minLive+1)
	for i := 0; i < n0; i++ {
		startMember(newID())
	}
	if !pollFor(30*time.Second, e.settled) {
		t.Fatalf("the initial %d-member view did not form", n0)
	}

	// Memnode faults run on their own goroutine (a join or leave may block
	// while a memnode has no leader): at most one at a time, each undone
	// after 0.5–2 s, with 0.5–2 s between them.
	faultsDone := make(chan struct{})
	stopFaults := make(chan struct{})
	faultRng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
	var faultStats sync.Map
	go func() {
		defer close(faultsDone)
		mns := e.c.Memnodes()
		pause := func() bool {
			tm := time.NewTimer(time.Duration(500+faultRng.IntN(1500)) * time.Millisecond)
			defer tm.Stop()
			select {
			case <-stopFaults:
				return false
			case <-tm.C:
				return true
			}
		}
		for pause() {
			mn := mns[faultRng.IntN(len(mns))].ID
			var undo func()
			if faultRng.IntN(2) == 0 {
				e.log.Info().Uint64("memnode", mn).Msg("TEST: crashing the memnode's leader host")
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				i, err := e.c.CrashLeader(ctx, mn)
				cancel()
				if err != nil {
					t.Errorf("crash the leader of memnode %d: %v", mn, err)
					return
				}
				e.log.Info().Int("host", i+1).Uint64("memnode", mn).Msg("TEST: crashed the memnode's leader host")
				undo = func() {
					if err := e.c.RestartHost(i); err != nil {
						t.Errorf("restart host %d: %v", i+1, err)
					}
					e.log.Info().Int("host", i+1).Msg("TEST: restarted host")
				}
				addStat(&faultStats, "memnode-leader-crash")
			} else {
				h := uint64(1 + faultRng.IntN(len(e.c.Hosts)))
				e.faults.Isolate(h)
				e.log.Info().Uint64("host", h).Msg("TEST: isolated host")
				undo = func() {
					e.faults.Heal()
					e.log.Info().Msg("TEST: healed")
				}
				addStat(&faultStats, "raft-isolate")
			}
			pause()
			undo()
		}
	}()
	endFaults := func() {
		select {
		case <-stopFaults:
		default:
			close(stopFaults)
		}
		<-faultsDone
	}
	defer endFaults()

	deadline := time.Now().Add(dur)
	for time.Now().Before(deadline) {
		tm := time.NewTimer(time.Duration(100+rng.IntN(400)) * time.Millisecond)
		<-tm.C
		// Members evicted while alive (false suspicion, or removed while
		// their process was cut off) join again.
		e.mu.Lock()
		var evictedProcs []*proc
		for _, p := range e.procs {
			if p.member != nil && p.member.isEnded() {
				evictedProcs = append(evictedProcs, p)
			}
		}
		e.mu.Unlock()
		for _, p := range evictedProcs {
			p.member.stopSender()
			m, err := e.join(p, group, nil)
			if err != nil {
				t.Errorf("%s: rejoin after eviction: %v", p.id, err)
				continue
			}
			m.startSender(senderRng(), maxGap)
			stats["rejoin"]++
		}
		live := e.survivors()
		switch op := rng.IntN(100); {
		case op < 22 && len(live) > minLive:
			m := live[rng.IntN(len(live))]
			e.crash(m.p)
			m.stopSender()
			id := m.p.id
			crashed = append(crashed, id)
			stats["crash"]++
		case op < 44 && len(live) < maxLive:
			startMember(newID())
		case op < 54 && len(live) > minLive:
			m := live[rng.IntN(len(live))]
			if err := m.leave(); err != nil {
				t.Errorf("%s: leave: %v", m.name, err)
			}
			m.stopSender()
			e.exit(m.p)
			stats["leave"]++
		}
	}
	endFaults()
	faultStats.Range(func(k, v any) bool { stats[k.(string)] = v.(int); return true })
	// Stop the traffic, then drain.
	e.mu.Lock()
	all := e.members
	e.mu.Unlock()
	for _, m := range all {
		m.stopSender()
	}
	sv := e.drain(60 * time.Second)
	a0, h0 := sv[0].state()
	for _, m := range sv[1:] {
		if a, h := m.state(); a != a0 || h != h0 {
			t.Errorf("state differs: %s applied %d (hash %x), %s applied %d (hash %x)", sv[0].name, a0, h0, m.name, a, h)
		}
	}
	e.closeAll()
	h, nev := e.history()
	sends, delivers := 0, 0
	for _, ev := range h.Events {
		switch ev.Kind {
		case vscheck.Send:
			sends++
		case vscheck.Deliver:
			delivers++
		}
	}
	vs := vscheck.Check(h, vscheck.Options{Complete: true})
	t.Logf("seed %d: %d members over the run, %d survivors, %d events, %d multicasts, %d deliveries, ops %v, violations %d",
		seed, len(all), len(sv), nev, sends, delivers, stats, len(vs))
	for _, v := range vs {
		t.Errorf("violation: %v", v)
	}
}

func addStat(m *sync.Map, k string) {
	v, _ := m.LoadOrStore(k, 0)
	m.Store(k, v.(int)+1)
}
