package client_test

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/replication"
)

// The linearizability test runs random minitransactions from several clients
// over a small key space spread across memnodes while a nemesis crashes and
// restarts hosts (leaders and followers) and cuts hosts off the Raft
// network, then checks the recorded history with porcupine against a
// sequential model of the whole key space (multi-key minitransactions rule
// out partitioning the check by key).
//
// The seed comes from the clock; TUTTI_LIN_SEED overrides it (logged on every run); TUTTI_LIN_DURATION
// (a Go duration) overrides how long the clients run.

const (
	linKeys      = 6 // 8-byte words, key k on memnode k%3
	linMemnodes  = 3
	linClients   = 5
	linOpsPerCli = 400 // at most linClients*linOpsPerCli = 2000 operations
	linOpTimeout = 3 * time.Second
)

// linItem places key k: memnode k%3, one word per key.
func linItem(k int) (memnode, addr uint64) {
	return uint64(k % linMemnodes), 0x1000 + 8*uint64(k/linMemnodes)
}

func linWord(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// linKV is a key and a value.
type linKV struct {
	Key int
	Val uint64
}

// linInput is a minitransaction over keys: compares, reads, writes. Reads
// see the state before the writes of the same minitransaction.
type linInput struct {
	Name     string
	Compares []linKV
	Reads    []int
	Writes   []linKV
}

// linOutput is what the client learned. Unknown: ErrUnknownOutcome (or the
// client's deadline while the request was out); the minitransaction may or
// may not have been applied, and its return time is "never".
type linOutput struct {
	Unknown       bool
	Committed     bool
	FailedCompare int // index into Compares when !Committed, or -1
	Reads         []uint64
}

type linState [linKeys]uint64

func (in linInput) tx() *client.Tx {
	tx := client.NewTx()
	for _, c := range in.Compares {
		mn, a := linItem(c.Key)
		tx.Compare(mn, a, linWord(c.Val))
	}
	for _, k := range in.Reads {
		mn, a := linItem(k)
		tx.Read(mn, a, 8)
	}
	for _, w := range in.Writes {
		mn, a := linItem(w.Key)
		tx.Write(mn, a, linWord(w.Val))
	}
	return tx
}

func linStep(state, input, output any) (bool, any) {
	s := state.(linState)
	in := input.(linInput)
	out := output.(linOutput)
	match := true
	for _, c := range in.Compares {
		match = match && s[c.Key] == c.Val
	}
	apply := func() linState {
		n := s
		for _, w := range in.Writes {
			n[w.Key] = w.Val
		}
		return n
	}
	switch {
	case out.Unknown:
		// Applied (if the compares match) or not at all; the reads were
		// never seen. Porcupine places the step anywhere after the call.
		if match {
			return true, apply()
		}
		return true, s
	case out.Committed:
		if !match || len(out.Reads) != len(in.Reads) {
			return false, s
		}
		for i, k := range in.Reads {
			if out.Reads[i] != s[k] {
				return false, s
			}
		}
		return true, apply()
	default:
		if match {
			return false, s
		}
		if f := out.FailedCompare; f >= 0 && f < len(in.Compares) && s[in.Compares[f].Key] == in.Compares[f].Val {
			return false, s // the compare named as failed holds
		}
		return true, s
	}
}

var linModel = porcupine.Model{
	Init: func() any { return linState{} },
	Step: linStep,
	Hash: func(state any) uint64 {
		s := state.(linState)
		var h uint64 = 14695981039346656037
		for _, v := range s {
			h = (h ^ v) * 1099511628211
		}
		return h
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		var b strings.Builder
		b.WriteString(in.Name)
		for _, c := range in.Compares {
			fmt.Fprintf(&b, " k%d==%x", c.Key, c.Val)
		}
		for _, k := range in.Reads {
			fmt.Fprintf(&b, " r(k%d)", k)
		}
		for _, w := range in.Writes {
			fmt.Fprintf(&b, " k%d:=%x", w.Key, w.Val)
		}
		switch {
		case out.Unknown:
			b.WriteString(" -> unknown")
		case out.Committed:
			b.WriteString(" -> ok")
			for _, v := range out.Reads {
				fmt.Fprintf(&b, " %x", v)
			}
		default:
			fmt.Fprintf(&b, " -> cmp %d failed", out.FailedCompare)
		}
		return b.String()
	},
	DescribeState: func(state any) string {
		s := state.(linState)
		parts := make([]string, len(s))
		for i, v := range s {
			parts[i] = fmt.Sprintf("k%d=%x", i, v)
		}
		return strings.Join(parts, " ")
	},
}

// linCheck checks history and, unless it is Ok, writes porcupine's
// visualization and returns its path.
func linCheck(t *testing.T, history []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, string) {
	t.Helper()
	res, info := porcupine.CheckOperationsVerbose(linModel, history, timeout)
	if res == porcupine.Ok {
		return res, ""
	}
	// Keep the file after the test unless -artifacts keeps it anyway.
	dir := ""
	if f := flag.Lookup("test.artifacts"); f != nil && f.Value.String() == "true" {
		dir = t.ArtifactDir()
	} else {
		d, err := os.MkdirTemp("", "tutti-linearizability-")
		if err != nil {
			t.Logf("cannot write the visualization: %v", err)
			return res, ""
		}
		dir = d
	}
	path := filepath.Join(dir, "history.html")
	if err := porcupine.VisualizePath(linModel, info, path); err != nil {
		t.Logf("cannot write the visualization: %v", err)
		return res, ""
	}
	return res, path
}

// linOp builds a history operation; unknown outcomes never return.
func linOp(cli int, in linInput, out linOutput, call, ret int64) porcupine.Operation {
	if out.Unknown {
		ret = math.MaxInt64
	}
	return porcupine.Operation{ClientId: cli, Input: in, Output: out, Call: call, Return: ret}
}

// The checker must reject what the test is there to catch.
func TestLinearizabilityCheckerCatchesViolations(t *testing.T) {
	w := func(k int, v uint64) linInput { return linInput{Name: "write", Writes: []linKV{{k, v}}} }
	r := func(ks ...int) linInput { return linInput{Name: "read", Reads: ks} }
	ok := func(reads ...uint64) linOutput { return linOutput{Committed: true, FailedCompare: -1, Reads: reads} }
	unknown := linOutput{Unknown: true, FailedCompare: -1}
	cases := []struct {
		name    string
		history []porcupine.Operation
		want    porcupine.CheckResult
	}{
		{"stale read", []porcupine.Operation{
			linOp(0, w(0, 7), ok(), 0, 10),
			linOp(1, r(0), ok(0), 20, 30),
		}, porcupine.Illegal},
		{"concurrent read may see either", []porcupine.Operation{
			linOp(0, w(0, 7), ok(), 0, 10),
			linOp(1, r(0), ok(0), 5, 30),
		}, porcupine.Ok},
		{"torn multi-memnode read", []porcupine.Operation{
			linOp(0, linInput{Name: "mwrite", Writes: []linKV{{0, 1}, {1, 2}}}, ok(), 0, 10),
			linOp(1, r(0, 1), ok(1, 0), 20, 30),
		}, porcupine.Illegal},
		{"unknown write may apply late", []porcupine.Operation{
			linOp(0, w(2, 9), unknown, 0, 10),
			linOp(1, r(2), ok(0), 20, 30),
			linOp(1, r(2), ok(9), 40, 50),
		}, porcupine.Ok},
		{"unknown write applies at most once", []porcupine.Operation{
			linOp(0, w(2, 9), unknown, 0, 10),
			linOp(1, w(2, 3), ok(), 20, 30),
			linOp(1, r(2), ok(9), 40, 50),
			linOp(1, r(2), ok(3), 60, 70),
		}, porcupine.Illegal},
		{"cas must not succeed on a stale value", []porcupine.Operation{
			linOp(0, w(3, 5), ok(), 0, 10),
			linOp(1, linInput{Name: "cas", Compares: []linKV{{3, 0}}, Reads: []int{3}, Writes: []linKV{{3, 6}}}, ok(0), 20, 30),
		}, porcupine.Illegal},
		{"failed cas must have a failing compare", []porcupine.Operation{
			linOp(0, w(3, 5), ok(), 0, 10),
			linOp(1, linInput{Name: "cas", Compares: []linKV{{3, 5}}, Writes: []linKV{{3, 6}}}, linOutput{FailedCompare: 0}, 20, 30),
		}, porcupine.Illegal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, path := linCheck(t, tc.history, 10*time.Second)
			if path != "" {
				os.RemoveAll(filepath.Dir(path))
			}
			if got != tc.want {
				t.Fatalf("porcupine says %s, want %s", got, tc.want)
			}
		})
	}
}

// linRecorder collects the history.
type linRecorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// counts by outcome, for the log
	committed, failedCmp, unknown, dropped int
	dropReasons                            map[string]int
}

func (r *linRecorder) now() int64 { return int64(time.Since(r.start)) }

func (r *linRecorder) record(cli int, in linInput, res *client.Result, err error, call, ret int64) (out linOutput, kept bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out.FailedCompare = -1
	switch {
	case err == nil:
		out.Committed = res.Committed
		if res.Committed {
			r.committed++
			for _, d := range res.Reads {
				out.Reads = append(out.Reads, binary.LittleEndian.Uint64(d))
			}
		} else {
			r.failedCmp++
			out.FailedCompare = res.FailedCompare
		}
	case errors.Is(err, client.ErrUnknownOutcome):
		r.unknown++
		out.Unknown = true
	default:
		// Nothing was applied: not part of the history.
		r.dropped++
		reason := "other"
		for _, e := range []error{client.ErrUnavailable, client.ErrContention, context.DeadlineExceeded, client.ErrClosed} {
			if errors.Is(err, e) {
				reason = e.Error()
				break
			}
		}
		r.dropReasons[reason]++
		return out, false
	}
	r.ops = append(r.ops, linOp(cli, in, out, call, ret))
	return out, true
}

// linWorker is one client's random workload.
type linWorker struct {
	id     int
	rng    *rand.Rand
	seq    uint64
	belief linState // last value seen or written per key (may be stale)
}

func (w *linWorker) value() uint64 {
	w.seq++
	return uint64(w.id+1)<<32 | w.seq
}

// keysOnDistinctMemnodes picks n keys on n different memnodes.
func (w *linWorker) keysOnDistinctMemnodes(n int) []int {
	mns := w.rng.Perm(linMemnodes)[:n]
	ks := make([]int, n)
	for i, mn := range mns {
		ks[i] = mn + linMemnodes*w.rng.IntN(linKeys/linMemnodes)
	}
	return ks
}

func (w *linWorker) next() linInput {
	k := w.rng.IntN(linKeys)
	switch p := w.rng.IntN(100); {
	case p < 25:
		return linInput{Name: "read", Reads: []int{k}}
	case p < 45:
		return linInput{Name: "write", Writes: []linKV{{k, w.value()}}}
	case p < 65:
		return linInput{Name: "cas", Compares: []linKV{{k, w.belief[k]}}, Reads: []int{k}, Writes: []linKV{{k, w.value()}}}
	case p < 80:
		return linInput{Name: "mread", Reads: w.keysOnDistinctMemnodes(2 + w.rng.IntN(2))}
	case p < 90:
		var ws []linKV
		for _, k := range w.keysOnDistinctMemnodes(2 + w.rng.IntN(2)) {
			ws = append(ws, linKV{k, w.value()})
		}
		return linInput{Name: "mwrite", Writes: ws}
	default:
		ks := w.keysOnDistinctMemnodes(2)
		return linInput{Name: "mcas",
			Compares: []linKV{{ks[0], w.belief[ks[0]]}},
			Reads:    []int{ks[1]},
			Writes:   []linKV{{ks[0], w.value()}, {ks[1], w.value()}}}
	}
}

// learn updates the worker's beliefs from a known outcome.
func (w *linWorker) learn(in linInput, out linOutput) {
	if out.Unknown || !out.Committed {
		return
	}
	for i, k := range in.Reads {
		w.belief[k] = out.Reads[i]
	}
	for _, x := range in.Writes {
		w.belief[x.Key] = x.Val
	}
}

// linSeed is the nemesis's and clients' seed: drawn from the clock, so
// every run explores other crash and partition schedules (a fixed seed
// replayed one schedule forever), unless TUTTI_LIN_SEED names one. It is
// logged, and a failure names it, so any run can be replayed.
func linSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TUTTI_LIN_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			t.Fatalf("TUTTI_LIN_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (set TUTTI_LIN_SEED to replay the same choices)", seed)
	return seed
}

// linNemesis injects one fault at a time, heals it, and waits until every
// memnode has a leader again before the next. Timers between faults shape
// the load; they synchronize nothing.
type linNemesis struct {
	c      *cluster.Cluster
	faults *cluster.Faults
	rng    *rand.Rand
	rec    *linRecorder
	mns    []uint64
	log    []string
}

func (n *linNemesis) pause(lo, hi time.Duration, stop <-chan struct{}) bool {
	d := lo + time.Duration(n.rng.Int64N(int64(hi-lo)+1))
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-stop:
		return false
	}
}

func (n *linNemesis) note(format string, args ...any) {
	n.log = append(n.log, fmt.Sprintf("%8.3fs ", time.Since(n.rec.start).Seconds())+fmt.Sprintf(format, args...))
}

// leaderOr returns the host index leading memnode mn, or a random one.
func (n *linNemesis) leaderOr(mn uint64) int {
	if i := n.c.Leader(mn); i >= 0 {
		return i
	}
	return n.rng.IntN(len(n.c.Hosts))
}

// The nemesis' faults; each round runs all of them in a seeded order.
const (
	faultCrashLeader = iota
	faultCrashFollower
	faultPartitionLeader
	faultIsolate
	faultNoQuorum
	numFaults
)

func (n *linNemesis) run(stop <-chan struct{}) error {
	hosts := len(n.c.Hosts)
	var round []int
	for {
		if len(round) == 0 {
			round = n.rng.Perm(numFaults)
		}
		fault := round[0]
		round = round[1:]
		if !n.pause(50*time.Millisecond, 250*time.Millisecond, stop) {
			return nil
		}
		mn := n.mns[n.rng.IntN(len(n.mns))]
		down := -1
		switch fault {
		case faultCrashLeader:
			down = n.leaderOr(mn)
			n.note("crash host %d (leader of memnode %d)", down+1, mn)
		case faultCrashFollower:
			l := n.leaderOr(mn)
			down = (l + 1 + n.rng.IntN(hosts-1)) % hosts
			n.note("crash host %d (follower of memnode %d)", down+1, mn)
		case faultPartitionLeader: // the leader's side keeps serving clients
			l := n.leaderOr(mn)
			others := []uint64{}
			for i := range hosts {
				if i != l {
					others = append(others, uint64(i+1))
				}
			}
			n.faults.Partition([]uint64{uint64(l + 1)}, others)
			n.note("partition {%d} | %v (leader of memnode %d cut off)", l+1, others, mn)
		case faultIsolate:
			h := n.rng.IntN(hosts)
			n.faults.Isolate(uint64(h + 1))
			n.note("isolate host %d", h+1)
		case faultNoQuorum: // cut the leader off and crash another host
			l := n.leaderOr(mn)
			down = (l + 1 + n.rng.IntN(hosts-1)) % hosts
			n.faults.Isolate(uint64(l + 1))
			n.note("isolate host %d (leader of memnode %d) and crash host %d: no quorum", l+1, mn, down+1)
		}
		if down >= 0 {
			if err := n.c.StopHost(down); err != nil {
				return fmt.Errorf("stop host %d: %w", down+1, err)
			}
		}
		// Long enough for elections (200ms timeout) and check-quorum
		// step-downs to happen under the fault.
		n.pause(200*time.Millisecond, 900*time.Millisecond, nil)
		n.faults.Heal()
		if down >= 0 {
			if err := n.c.RestartHost(down); err != nil {
				return fmt.Errorf("restart host %d: %w", down+1, err)
			}
			n.note("heal, restart host %d", down+1)
		} else {
			n.note("heal")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := n.c.WaitReady(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("cluster not ready after the fault was repaired: %w", err)
		}
		n.note("ready")
	}
}

func TestLinearizabilityUnderFaults(t *testing.T) {
	seed := linSeed(t)
	duration := 20 * time.Second
	if testing.Short() {
		duration = 6 * time.Second
	}
	if s := os.Getenv("TUTTI_LIN_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("TUTTI_LIN_DURATION=%q: %v", s, err)
		}
		duration = d
	}

	faults := cluster.NewFaults()
	c := startCluster(t, cluster.Config{
		Hosts: 3, Memnodes: linMemnodes, Replicas: 3,
		// Hosts are "crashed" by closing them in this process, so the
		// page cache survives: fsync would change nothing but the speed.
		NoSync: true,
		// Small snapshots so that restarted followers also catch up from
		// snapshots, not only from the log.
		Replication:   replication.Config{SnapshotEntries: 100},
		WrapTransport: faults.Wrap,
	})
	var mns []uint64
	for _, m := range c.Memnodes() {
		mns = append(mns, m.ID)
	}
	slices.Sort(mns)
	if len(mns) != linMemnodes {
		t.Fatalf("want %d memnodes, got %v", linMemnodes, mns)
	}

	rec := &linRecorder{dropReasons: map[string]int{}}
	clients := make([]*client.Client, linClients)
	for i := range clients {
		clients[i] = newClient(t, c.Seeds())
	}
	rec.start = time.Now()
	end := rec.start.Add(duration)
	pace := duration / linOpsPerCli

	nem := &linNemesis{c: c, faults: faults, rng: rand.New(rand.NewPCG(seed, 0xfa)), rec: rec, mns: mns}
	stopNemesis := make(chan struct{})
	nemDone := make(chan error, 1)
	go func() { nemDone <- nem.run(stopNemesis) }()

	var wg sync.WaitGroup
	for i := range linClients {
		w := &linWorker{id: i, rng: rand.New(rand.NewPCG(seed, uint64(i+1)))}
		cl := clients[i]
		wg.Go(func() {
			for n := 0; n < linOpsPerCli && time.Now().Before(end); n++ {
				if n > 0 {
					// Spread the operations over the whole run, so that
					// they meet every fault.
					think := time.NewTimer(time.Duration(w.rng.Int64N(int64(pace))))
					<-think.C
				}
				in := w.next()
				ctx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
				call := rec.now()
				res, err := cl.Exec(ctx, in.tx())
				ret := rec.now()
				cancel()
				if os.Getenv("TUTTI_LIN_DEBUG") != "" && time.Duration(ret-call) > 300*time.Millisecond {
					t.Logf("slow: client %d %8.3fs +%v %s err=%v", i, time.Duration(call).Seconds(), time.Duration(ret-call), in.Name, err)
				}
				if out, kept := rec.record(i, in, res, err, call, ret); kept {
					w.learn(in, out)
				}
			}
		})
	}
	wg.Wait()
	close(stopNemesis)
	nemErr := <-nemDone
	faults.Heal()
	for _, l := range nem.log {
		t.Log("nemesis:", l)
	}
	if nemErr != nil {
		t.Errorf("nemesis (seed %d): %v", seed, nemErr)
	}

	// Once healed, every key must be readable again (no lock left behind by
	// a lost Commit or Abort), and the final state joins the history.
	final := linInput{Name: "final", Reads: make([]int, linKeys)}
	for k := range final.Reads {
		final.Reads[k] = k
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Errorf("cluster not ready after the nemesis stopped: %v", err)
	}
	var finalErr error
	for ctx.Err() == nil {
		call := rec.now()
		res, err := clients[0].Exec(ctx, final.tx())
		if finalErr = err; err == nil {
			rec.record(linClients, final, res, nil, call, rec.now())
			break
		}
	}
	if finalErr != nil {
		t.Errorf("the keys are still not readable 30s after the faults were healed: %v", finalErr)
	}

	rec.mu.Lock()
	history := rec.ops
	t.Logf("history: %d operations in %v (committed %d, failed compare %d, unknown %d); dropped %d as not applied %v; raft messages dropped by faults %d",
		len(history), time.Since(rec.start).Round(time.Millisecond), rec.committed, rec.failedCmp, rec.unknown, rec.dropped, rec.dropReasons, faults.Dropped())
	rec.mu.Unlock()
	if rec.committed < 100 {
		t.Errorf("only %d minitransactions committed: the cluster made too little progress under faults", rec.committed)
	}

	checkStart := time.Now()
	res, path := linCheck(t, history, 30*time.Second)
	t.Logf("porcupine: %s in %v", res, time.Since(checkStart).Round(time.Millisecond))
	if res != porcupine.Ok {
		t.Errorf("history is not linearizable (porcupine: %s; seed %d); visualization: %s", res, seed, path)
	}
}
