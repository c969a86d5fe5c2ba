package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testSM records every applied command in order. Apply's result is the
// command's position in the log (1-based); Query("len") returns the log
// length and Query(x) the number of times x was applied.
type testSM struct {
	mu     sync.Mutex
	log    []string
	counts map[string]int
}

func newTestSM() *testSM { return &testSM{counts: make(map[string]int)} }

func (s *testSM) Apply(cmds []Command) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, len(cmds))
	for i, c := range cmds {
		s.log = append(s.log, string(c.Data))
		s.counts[string(c.Data)]++
		out[i] = []byte(strconv.Itoa(len(s.log)))
	}
	return out
}

func (s *testSM) Query(q []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if string(q) == "len" {
		return []byte(strconv.Itoa(len(s.log)))
	}
	return []byte(strconv.Itoa(s.counts[string(q)]))
}

func (s *testSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.log)
}

func (s *testSM) Restore(data []byte) error {
	var log []string
	if err := json.Unmarshal(data, &log); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = log
	s.counts = make(map[string]int)
	for _, c := range log {
		s.counts[c]++
	}
	return nil
}

func (s *testSM) entries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

func (s *testSM) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.log)
}

// cluster is n hosts running the same groups.
type cluster struct {
	t      testing.TB
	net    *FaultNetwork
	ids    []uint64
	groups []uint64
	dirs   map[uint64]string
	mod    func(*Config)
	newSM  func() StateMachine   // default: newTestSM
	fss    map[uint64]*vfs.MemFS // hosts whose engine lives in a crashable in-memory FS

	// unknownOutcomes counts the proposals of propose whose outcome was
	// unknown.
	unknownOutcomes atomic.Int64

	mu    sync.Mutex
	hosts map[uint64]*Host
	sms   map[uint64]map[uint64]StateMachine // host -> group -> sm
}

func testConfig() Config {
	c := DefaultConfig()
	c.TickInterval = 10 * time.Millisecond
	c.ElectionTicks = 10
	c.HeartbeatTicks = 1
	c.Workers = 2
	c.Logger = zerolog.Nop()
	return c
}

func newCluster(t testing.TB, n int, groups []uint64, mod func(*Config)) *cluster {
	return newClusterSM(t, n, groups, mod, func() StateMachine { return newTestSM() })
}

// newClusterSM is newCluster with another state machine (sm() then must
// not be used).
func newClusterSM(t testing.TB, n int, groups []uint64, mod func(*Config), newSM func() StateMachine) *cluster {
	return buildCluster(t, n, groups, mod, newSM, false)
}

// newCrashableCluster keeps each host's engine in a crashable in-memory FS
// (see crash).
func newCrashableCluster(t testing.TB, n int, groups []uint64, mod func(*Config)) *cluster {
	return buildCluster(t, n, groups, mod, func() StateMachine { return newTestSM() }, true)
}

func buildCluster(t testing.TB, n int, groups []uint64, mod func(*Config), newSM func() StateMachine, crashable bool) *cluster {
	c := &cluster{
		t:      t,
		net:    NewFaultNetwork(1),
		groups: groups,
		dirs:   make(map[uint64]string),
		mod:    mod,
		hosts:  make(map[uint64]*Host),
		sms:    make(map[uint64]map[uint64]StateMachine),
		newSM:  newSM,
		fss:    make(map[uint64]*vfs.MemFS),
	}
	for i := 1; i <= n; i++ {
		id := uint64(i)
		c.ids = append(c.ids, id)
		if crashable {
			c.dirs[id] = "/data"
			c.fss[id] = vfs.NewCrashableMem()
		} else {
			c.dirs[id] = t.TempDir()
		}
	}
	for _, id := range c.ids {
		c.start(id, c.ids)
	}
	t.Cleanup(func() {
		for _, id := range c.ids {
			c.stop(id)
		}
	})
	return c
}

// start opens host id (recovering from its DataDir) and starts all groups
// with fresh state machines; peers is used only for a first start.
func (c *cluster) start(id uint64, peers []uint64) *Host {
	c.t.Helper()
	cfg := testConfig()
	cfg.ID = id
	cfg.DataDir = c.dirs[id]
	cfg.Transport = c.net.Transport(id)
	if c.mod != nil {
		c.mod(&cfg)
	}
	var fs vfs.FS
	if mfs := c.fss[id]; mfs != nil {
		fs = mfs
	}
	h, err := newHost(cfg, fs)
	if err != nil {
		c.t.Fatal(err)
	}
	sms := make(map[uint64]StateMachine)
	for _, g := range c.groups {
		sm := c.newSM()
		if err := h.StartGroup(g, peers, sm); err != nil {
			c.t.Fatal(err)
		}
		sms[g] = sm
	}
	c.mu.Lock()
	c.hosts[id] = h
	c.sms[id] = sms
	c.mu.Unlock()
	return h
}

func (c *cluster) stop(id uint64) {
	c.mu.Lock()
	h := c.hosts[id]
	delete(c.hosts, id)
	c.mu.Unlock()
	if h != nil {
		if err := h.Close(); err != nil {
			c.t.Errorf("close host %d: %v", id, err)
		}
	}
}

// crash stops host id as a power failure would: its engine restarts from
// exactly what it had fsynced. The host must use a crashable FS. The host
// is isolated first so that nobody sees what it does after the instant of
// the crash (else a peer could count on writes the clone does not hold);
// the caller heals the network before restarting it.
func (c *cluster) crash(id uint64) {
	c.t.Helper()
	c.net.Isolate(id)
	clone := c.fss[id].CrashClone(vfs.CrashCloneCfg{})
	c.stop(id)
	c.fss[id] = clone
}

func (c *cluster) host(id uint64) *Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[id]
}

func (c *cluster) sm(host, group uint64) *testSM {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.sms[host][group].(*bigSM); ok {
		return b.testSM
	}
	return c.sms[host][group].(*testSM)
}

// leader waits until a running host of among (all if nil) believes it
// leads group and a majority of the running hosts of among agree, and
// returns it. (An isolated follower may have forgotten the leader.)
func (c *cluster) leader(group uint64, among []uint64) uint64 {
	c.t.Helper()
	if among == nil {
		among = c.ids
	}
	var lead uint64
	waitFor(c.t, 20*time.Second, fmt.Sprintf("a leader of group %d among %v", group, among), func() bool {
		votes := make(map[uint64]int)
		running := 0
		for _, id := range among {
			h := c.host(id)
			if h == nil {
				continue
			}
			running++
			if l := h.Leader(group); l != 0 {
				votes[l]++
			}
		}
		for l, n := range votes {
			if h := c.host(l); h != nil && slices.Contains(among, l) && h.Leader(group) == l && 2*n > running {
				lead = l
				return true
			}
		}
		return false
	})
	return lead
}

// follower waits for group's leader and returns a host other than it.
func (c *cluster) follower(group uint64) uint64 {
	c.t.Helper()
	if lead := c.leader(group, nil); c.ids[0] != lead {
		return c.ids[0]
	}
	return c.ids[1]
}

// propose proposes cmd at the current leader until it applied once, and
// returns its result. It retries on errors that say nothing was proposed.
// An unknown outcome (ErrUnknownOutcome: the leader lost its term before
// the command committed, which load alone can cause) it settles (settle):
// if the command applied, it returns, else it proposes again. Settling
// asks the state machine's Query(cmd) for the number of times cmd applied
// (testSM, shortSM); with another state machine the command may apply
// twice. The result of a command that settled as applied is its position
// in the answering leader's log if the state machine keeps one (testSM),
// else nil.
func (c *cluster) propose(group uint64, cmd string) []byte {
	c.t.Helper()
	// No deadline of its own for one attempt: a proposal abandoned while
	// its leader still holds it could commit after a settling read.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		lead := c.leader(group, nil)
		h := c.host(lead)
		if h == nil {
			continue
		}
		res, err := h.Propose(ctx, group, []byte(cmd))
		switch {
		case err == nil:
			return res
		case errors.Is(err, ErrUnknownOutcome) && ctx.Err() == nil:
			c.unknownOutcomes.Add(1)
			if res, applied := c.settle(ctx, group, cmd); applied {
				return res
			}
			continue
		case !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrDropped) && !errors.Is(err, ErrStopped):
			c.t.Fatalf("propose %q to group %d at host %d: %v", cmd, group, lead, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("propose %q to group %d: no success within 30 s", cmd, group)
	return nil
}

// settle reports whether cmd, whose proposal to group has an unknown
// outcome because its leader lost its term (not because the proposal's
// context ended), applied, and its result then (see propose). It reads
// Query(cmd) at a leader: a leader serves a linearizable read only once it
// has committed an entry of its own term, which is later than the
// proposal's, and by then the proposal has committed if it is in that
// leader's log, and can never commit if it is not. So the answer is final.
func (c *cluster) settle(ctx context.Context, group uint64, cmd string) ([]byte, bool) {
	c.t.Helper()
	for ctx.Err() == nil {
		lead := c.leader(group, nil)
		h := c.host(lead)
		if h == nil {
			continue
		}
		got, err := h.Read(ctx, group, []byte(cmd))
		if err != nil {
			time.Sleep(10 * time.Millisecond) // not the leader any more, or stopping: again
			continue
		}
		n, err := strconv.Atoi(string(got))
		if err != nil {
			c.t.Fatalf("settling %q in group %d: Query answered %q, not a count", cmd, group, got)
		}
		if n == 0 {
			return nil, false
		}
		c.mu.Lock()
		sm, _ := c.sms[lead][group].(*testSM)
		c.mu.Unlock()
		if sm != nil {
			if i := slices.Index(sm.entries(), cmd); i >= 0 {
				return []byte(strconv.Itoa(i + 1)), true
			}
		}
		return nil, true
	}
	c.t.Fatalf("settling %q in group %d: no answer within the proposal's 30 s", cmd, group)
	return nil, false
}

// waitApplied waits until every running host applied n commands of group.
func (c *cluster) waitApplied(group uint64, n int) {
	c.t.Helper()
	waitFor(c.t, 20*time.Second, fmt.Sprintf("all replicas of group %d to apply %d commands", group, n), func() bool {
		for _, id := range c.ids {
			if c.host(id) == nil {
				continue
			}
			if c.sm(id, group).len() < n {
				return false
			}
		}
		return true
	})
}

// checkSame asserts every running replica of group holds the same log.
func (c *cluster) checkSame(group uint64) []string {
	c.t.Helper()
	var ref []string
	var refID uint64
	for _, id := range c.ids {
		if c.host(id) == nil {
			continue
		}
		log := c.sm(id, group).entries()
		if refID == 0 {
			ref, refID = log, id
			continue
		}
		if !slices.Equal(log, ref) {
			c.t.Fatalf("group %d: host %d log (%d entries) differs from host %d log (%d entries)", group, id, len(log), refID, len(ref))
		}
	}
	return ref
}
