package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
	"github.com/tutti-gcs/tutti/membership"
	"github.com/tutti-gcs/tutti/memnode"
)

// buildTutti builds this command into dir once per test.
func buildTutti(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tutti")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a running child process whose stdout is read line by line.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncbuf.Buffer
	exited chan struct{}
	err    error
}

func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, cmd: exec.Command(bin, args...), lines: make(chan string, 1000),
		stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
		p.err = p.cmd.Wait()
		close(p.lines)
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// line waits up to d for a stdout line matching pred.
func (p *proc) line(d time.Duration, what string, pred func(string) bool) string {
	p.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("%s exited (%v) before %s; stderr:\n%s", p.name, p.err, what, p.stderr)
			}
			if pred(l) {
				return l
			}
		case <-timer.C:
			p.t.Fatalf("%s: no %s within %v; stderr:\n%s", p.name, what, d, p.stderr)
		}
	}
}

// stop sends sig and waits up to d for a clean exit.
func (p *proc) stop(sig os.Signal, d time.Duration) {
	p.t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		if p.err != nil {
			p.t.Fatalf("%s exited with %v; stderr:\n%s", p.name, p.err, p.stderr)
		}
	case <-time.After(d):
		p.t.Fatalf("%s did not exit within %v of %v", p.name, d, sig)
	}
}

type memberOut struct {
	ID          string `json:"id"`
	Incarnation uint64 `json:"incarnation"`
	State       string `json:"state"`
	Addr        string `json:"addr"`
}

type changeOut struct {
	Version uint64    `json:"version"`
	Kind    string    `json:"kind"`
	Member  memberOut `json:"member"`
}

// TestUpThenMembers runs the real binary: right after `tutti up` prints its
// banner, `tutti members --json` lists its three hosts alive; `--watch`
// streams an agent process joining and leaving; an agent with a gossip key
// the cluster does not use cannot join and says why.
func TestUpThenMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildTutti(t)
	up := startProc(t, "tutti up", bin, "up", "--port", "0", "--no-fsync", "--data-dir", filepath.Join(t.TempDir(), "data"), "--log-level", "warn")
	hostsLine := up.line(90*time.Second, "banner hosts line", func(l string) bool { return strings.HasPrefix(l, "  hosts:") })
	m := regexp.MustCompile(`1=(\S+) 2=(\S+) 3=(\S+)`).FindStringSubmatch(hostsLine)
	if m == nil {
		t.Fatalf("hosts line %q", hostsLine)
	}
	grpc := m[1:]
	seed := "--seed=" + grpc[0]
	up.line(10*time.Second, "banner members hint", func(l string) bool { return strings.TrimSpace(l) == "tutti members --seed "+grpc[0] })

	members := func(args ...string) []memberOut {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append([]string{"members", seed, "--json"}, args...)...).Output()
		if err != nil {
			t.Fatalf("tutti members: %v", err)
		}
		var ms []memberOut
		if err := json.Unmarshal(out, &ms); err != nil {
			t.Fatalf("tutti members --json printed %q: %v", out, err)
		}
		return ms
	}
	// Right after the banner: no waiting.
	ms := members()
	if len(ms) != 3 {
		t.Fatalf("want 3 members, got %+v", ms)
	}
	incs := map[uint64]bool{}
	for i, mm := range ms {
		if mm.ID != "host-"+string(rune('1'+i)) || mm.State != "alive" || mm.Incarnation == 0 || mm.Addr != grpc[i] || incs[mm.Incarnation] {
			t.Fatalf("member %d: %+v (hosts %v)", i, mm, grpc)
		}
		incs[mm.Incarnation] = true
	}

	watch := startProc(t, "tutti members --watch", bin, "members", seed, "--watch", "--json", "--interval", "50ms")
	first := watch.line(30*time.Second, "the table", func(l string) bool { return strings.HasPrefix(l, "[") })
	if strings.Count(first, `"state":"alive"`) != 3 {
		t.Fatalf("watch's first line: %s", first)
	}
	change := func(kind, id string) changeOut {
		var c changeOut
		watch.line(30*time.Second, kind+" "+id, func(l string) bool {
			return json.Unmarshal([]byte(l), &c) == nil && c.Kind == kind && c.Member.ID == id
		})
		return c
	}

	agent := startProc(t, "tutti agent", bin, "agent", seed, "--name", "app-1", "--ready-json", "--log-level", "warn")
	var ready agentReady
	agent.line(30*time.Second, "ready line", func(l string) bool { return json.Unmarshal([]byte(l), &ready) == nil && ready.ID == "app-1" })
	if j := change("joined", "app-1"); j.Member.Incarnation != ready.Incarnation || j.Member.State != "alive" || j.Member.Addr != ready.Gossip {
		t.Fatalf("joined: %+v, agent says %+v", j, ready)
	}
	agent.stop(syscall.SIGTERM, 20*time.Second)
	if l := change("left", "app-1"); l.Member.Incarnation != ready.Incarnation || l.Member.State != "left" {
		t.Fatalf("left: %+v", l)
	}
	watch.stop(os.Interrupt, 10*time.Second)
	all := members("--all")
	if len(all) != 4 || all[3].ID != "app-1" || all[3].State != "left" {
		t.Fatalf("--all after the leave: %+v", all)
	}

	// A wrong gossip key: the agent cannot join, exits 1 and says why.
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "agent", seed, "--name", "intruder", "--gossip-key", key, "--log-level", "warn").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "gossip key") {
		t.Fatalf("agent with a wrong key: %v\n%s", err, out)
	}
	for _, mm := range members("--all") {
		if mm.ID == "intruder" {
			t.Fatalf("the intruder registered: %+v", mm)
		}
	}

	up.stop(os.Interrupt, 30*time.Second)
}

func TestServerMembershipFlags(t *testing.T) {
	for _, name := range []string{"name", "gossip-addr", "gossip-advertise", "gossip-seeds", "gossip-key", "gossip-key-file", "probe-interval", "suspicion-mult"} {
		if newServer(&globals{}).Flags().Lookup(name) == nil {
			t.Errorf("tutti server has no --%s", name)
		}
	}
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	var mf memberFlags
	mf.register(fs, "", "", "")
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	t.Setenv("TUTTI_GOSSIP_KEY", key)
	t.Setenv("TUTTI_PROBE_INTERVAL", "300ms")
	if err := applyEnvAndConfig(fs, ""); err != nil {
		t.Fatal(err)
	}
	hosts := map[uint64]string{1: "10.0.0.1:7400", 2: "10.0.0.2:7400", 3: "10.0.0.3:7401"}
	cfg, seeds, rank, err := serverMembership(&mf, zerolog.Nop(), 2, ":7400", hosts)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ID != "host-2" || cfg.Bind != "0.0.0.0:8400" || cfg.Advertise != "10.0.0.2:8400" || cfg.GRPCAddr != "10.0.0.2:7400" ||
		len(cfg.Key) != 32 || cfg.Gossip.ProbeInterval != 300*time.Millisecond || rank != 1 ||
		strings.Join(seeds, ",") != "10.0.0.1:8400,10.0.0.3:8401" {
		t.Fatalf("cfg %+v seeds %v rank %d", cfg, seeds, rank)
	}
	mf = memberFlags{key: "c2hvcnQ="}
	if _, _, _, err := serverMembership(&mf, zerolog.Nop(), 1, "10.0.0.1:7400", hosts); err == nil || !strings.Contains(err.Error(), "16, 24 or 32") {
		t.Fatalf("short key: %v", err)
	}
}

// Two servers that list each other as gossip seeds and start at the same
// time end in one gossip cluster (the first to give up waiting starts
// alone, the other joins it); a third with another key is never let in,
// nor does it start alone.
func TestServerAgentsStartTogether(t *testing.T) {
	c, err := cluster.Start(cluster.Config{NoSync: true, Memnodes: 1, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	timing := membership.Timing{PollInterval: 50 * time.Millisecond, AbsentTimeout: time.Second}
	cfg := func(i int, bind string, key []byte) membership.Config {
		cl, err := newClient(ctx, zerolog.Nop(), c.Seeds())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return membership.Config{ID: fmt.Sprintf("host-%d", i+1), Client: cl, Bind: bind, Key: key, Timing: timing}
	}
	nodes, addrs := startAgentsTogether(ctx, t, func(i int, bind string) membership.Config { return cfg(i, bind, nil) })
	for _, n := range nodes {
		defer n.Close()
	}
	poll(t, 20*time.Second, "one gossip cluster", func() bool {
		return nodes[0].GossipMembers() == 2 && nodes[1].GossipMembers() == 2
	})
	// Past AbsentTimeout neither declared the other absent.
	until := time.Now().Add(2 * timing.AbsentTimeout)
	poll(t, 4*timing.AbsentTimeout, "AbsentTimeout to pass with both alive", func() bool {
		tb, err := nodes[0].Table(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if l := tb.Live(); len(l) != 2 {
			t.Fatalf("live rows %v", l)
		}
		return time.Now().After(until)
	})

	// Another key: the seeds are reachable but refuse; memberStart keeps
	// trying (never starts alone) until its context ends. Nobody needs its
	// address: it binds a port the kernel picks.
	third := cfg(2, "127.0.0.1:0", bytes.Repeat([]byte{9}, 16))
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	defer scancel()
	n, err := memberStart(sctx, zerolog.Nop(), third, []string{addrs[0]}, 0)
	if err == nil {
		n.Close()
		t.Fatal("a process with another gossip key started")
	}
}

// startAgentsTogether starts two membership agents (cfg(i, bind) for
// i = 0, 1) that list each other as gossip seeds at the same time, as two
// servers do: the first starts alone at once if the other is not up, the
// second waits 2 s for the first. It returns them and their gossip
// addresses.
//
// Each address is the other's seed, so both are fixed before either agent
// binds its own (as a server's configured address is): found free
// (freeGossipPort), released, and bound when the agent starts. In between,
// another socket can take the port: another process's, or an ephemeral
// port of an outgoing connection of any process, this one's clients
// included. memberStart then retries the bind until its context ends. So
// an attempt whose agents have not both started within 30 s, and one of
// whose ports is then held by another socket (EADDRINUSE), is made again
// on fresh ports, until ctx ends; any other failure fails the test.
func startAgentsTogether(ctx context.Context, t *testing.T, cfg func(i int, bind string) membership.Config) ([]*membership.Node, []string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		var addrs []string
		for range 2 {
			p, err := freeGossipPort()
			if err != nil {
				t.Fatal(err)
			}
			addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(p))
		}
		cfgs := []membership.Config{cfg(0, addrs[0]), cfg(1, addrs[1])} // clients connect before the agents start
		// The agents' context also bounds an agent that started alone
		// joining the other later (keepJoining): it ends with the test,
		// or when the attempt is given up.
		actx, cancel := context.WithCancel(ctx)
		type res struct {
			i   int
			n   *membership.Node
			err error
		}
		results := make(chan res, 2)
		for i, after := range []time.Duration{0, 2 * time.Second} {
			go func() {
				n, err := memberStart(actx, zerolog.New(zerolog.NewTestWriter(t)), cfgs[i], []string{addrs[1-i]}, after)
				results <- res{i, n, err}
			}()
		}
		var (
			nodes  = make([]*membership.Node, 2)
			errs   = make([]error, 2)
			giveUp = time.NewTimer(30 * time.Second)
		)
		for range 2 {
			var r res
			select {
			case r = <-results:
			case <-giveUp.C:
				cancel() // both return at once now
				r = <-results
			}
			nodes[r.i], errs[r.i] = r.n, r.err
		}
		giveUp.Stop()
		if errs[0] == nil && errs[1] == nil {
			t.Cleanup(cancel)
			return nodes, addrs
		}
		cancel()
		var taken []string
		for i, n := range nodes {
			if n != nil {
				lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
				if err := n.Leave(lctx); err != nil {
					t.Logf("leaving after a failed start: %v", err)
				}
				lcancel()
			} else if portTaken(addrs[i]) {
				taken = append(taken, addrs[i])
			}
		}
		if len(taken) == 0 || ctx.Err() != nil {
			t.Fatalf("agents starting together on %v: %v, %v", addrs, errs[0], errs[1])
		}
		t.Logf("attempt %d: another socket took gossip address %v before its agent bound it; again on fresh ports", attempt, taken)
	}
}

// freeGossipPort finds a loopback port free for both UDP and TCP. It is
// free when found, not when bound later (startAgentsTogether).
func freeGossipPort() (int, error) {
	for range 20 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		t, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		u.Close()
		if err == nil {
			t.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free gossip port found")
}

// poll checks cond every 20 ms until it holds, failing after d.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		<-tick.C
	}
}

// TestMemberStartGivesUpOnWhatWaitingCannotFix: memberStart retries what
// time can fix (no memnode quorum, no seed up, a seed that refuses), but an
// invalid configuration or a process table of another layout or corrupt
// never clears: it returns at once with the reason, and the server logs
// that its agent did not start. It used to retry them until its context
// ended, forever for a server, with only a warning per attempt.
func TestMemberStartGivesUpOnWhatWaitingCannotFix(t *testing.T) {
	cl, try := memberStartOn(t, cluster.Config{Memnodes: 1})
	ctx := t.Context()
	cfg := membership.Config{ID: "host-1", Client: cl, Bind: "127.0.0.1:0"}
	bad := cfg
	bad.Key = []byte("seven77") // AES keys are 16, 24 or 32 bytes
	if err := try(bad); err == nil || !strings.Contains(err.Error(), "Key") {
		t.Fatalf("invalid key: %v, want an error that names Key", err)
	}
	// Another layout: the table was created with 32 log entries.
	other := cfg
	other.Table = membership.DefaultTable
	other.Table.LogSize = 32
	n, err := memberStart(ctx, zerolog.Nop(), other, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	n.Close()
	if err := try(cfg); !errors.Is(err, membership.ErrLayoutMismatch) {
		t.Fatalf("table of another layout: %v, want ErrLayoutMismatch", err)
	}
	// A corrupt table: its header's magic overwritten.
	tx := client.NewTx().Write(cfg.Table.Memnode, membership.DefaultTable.Base, bytes.Repeat([]byte{0xff}, 8))
	if _, err := cl.Exec(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := try(cfg); !errors.Is(err, membership.ErrCorruptTable) {
		t.Fatalf("corrupt table: %v, want ErrCorruptTable", err)
	}
}

// TestMemberStartGivesUpOnATableOutsideTheMemnode: a cluster whose
// memnodes are too small to hold the process table (tutti server
// --memnode-size below the table's base, a configuration the hosts accept
// with a warning) refuses every read of the table as invalid. No wait
// changes that: memberStart returns client.ErrInvalid, and the server
// logs that its agent did not start. It used to take the refusal for a
// missing quorum ("waiting for the process table") and retry it until its
// context ended, forever for a server.
func TestMemberStartGivesUpOnATableOutsideTheMemnode(t *testing.T) {
	cl, try := memberStartOn(t, cluster.Config{Memnodes: 1, Memnode: memnode.Config{Size: membership.DefaultTable.Base / 2}})
	if err := try(membership.Config{ID: "host-1", Client: cl, Bind: "127.0.0.1:0"}); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("memberStart with the table outside the memnode: %v, want client.ErrInvalid", err)
	}
}

// memberStartOn starts a test cluster of cfg and returns a client of it
// and try, which runs memberStart and fails the test if the agent started
// or memberStart retried until its 20 s context ended.
func memberStartOn(t *testing.T, cfg cluster.Config) (*client.Client, func(membership.Config) error) {
	t.Helper()
	c := testClusterWith(t, cfg)
	cl, err := newClient(t.Context(), zerolog.Nop(), c.Seeds())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl, func(cfg membership.Config) error {
		t.Helper()
		sctx, scancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer scancel()
		n, err := memberStart(sctx, zerolog.Nop(), cfg, nil, 0)
		if n != nil {
			n.Close()
			t.Fatalf("the agent started with %+v", cfg)
		}
		if sctx.Err() != nil {
			t.Fatalf("memberStart retried until its context ended: %v", err)
		}
		return err
	}
}

// 'tutti up --data-dir D' restarted with another --memnodes or --hosts
// than D's cluster was made with waited 30 s for memnodes the directory
// does not have, then failed with "local cluster: memnodes without a
// leader: context deadline exceeded". It must say at once what conflicts;
// without the flags it starts D's cluster as it was made.
func TestUpRestartWithOtherShape(t *testing.T) {
	bin := standInForTutti(t)
	dir := filepath.Join(t.TempDir(), "data")
	first := []string{"up", "--port", "0", "--no-fsync", "--data-dir", dir, "--log-level", "warn", "--hosts", "1", "--memnodes", "1"}
	up := startProc(t, "tutti up", bin, first...)
	up.line(60*time.Second, "banner", func(l string) bool { return strings.HasPrefix(l, "  memnodes: 1 ") })
	up.stop(os.Interrupt, 30*time.Second)

	for _, c := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--hosts", "1", "--memnodes", "2"}, "--memnodes 2"},
		{[]string{"--hosts", "2", "--memnodes", "1"}, "--hosts 2"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, bin, append([]string{"up", "--port", "0", "--no-fsync", "--data-dir", dir, "--log-level", "warn"}, c.flags...)...).CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) || !strings.Contains(string(out), "1 memnode") {
			t.Errorf("up %s on a cluster of 1 host and 1 memnode: %v\n%s", strings.Join(c.flags, " "), err, out)
		}
	}
	up = startProc(t, "tutti up", bin, "up", "--port", "0", "--no-fsync", "--data-dir", dir, "--log-level", "warn")
	up.line(60*time.Second, "banner", func(l string) bool { return strings.HasPrefix(l, "  memnodes: 1 (ids 0-0), 1 replicas each") })
	up.stop(os.Interrupt, 30*time.Second)
}

// 'tutti members --watch' retries while the cluster does not answer, with
// one warning per failed read; the client's error spans lines ("request
// not sent\nrpc error: ..."), so each warning came out as two lines, the
// second a bare gRPC error, and said "tutti:" twice.
func TestMembersWatchWarnsOnOneLine(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The table must exist for the watch to start: register one process.
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := membership.NewWatcher(ctx, cl, membership.DefaultTable); err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var out, errOut syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		root := newRoot()
		root.SetOut(&out)
		root.SetErr(&errOut)
		root.SetArgs([]string{"members", "--seed=" + c.Seeds()[0], "--watch", "--interval", "50ms", "--timeout", "2s", "--log-level", "error"})
		done <- root.ExecuteContext(wctx)
	}()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(out.String(), "process table version") {
		select {
		case err := <-done:
			t.Fatalf("watch ended: %v\n%s%s", err, out.String(), errOut.String())
		case <-ctx.Done():
			t.Fatalf("no table: %s%s", out.String(), errOut.String())
		case <-tick.C:
		}
	}
	for i := range c.Hosts {
		if err := c.StopHost(i); err != nil {
			t.Fatal(err)
		}
	}
	for strings.Count(errOut.String(), "(retrying)") < 2 {
		select {
		case err := <-done:
			t.Fatalf("watch ended: %v\n%s", err, errOut.String())
		case <-ctx.Done():
			t.Fatalf("no warning: %s", errOut.String())
		case <-tick.C:
		}
	}
	stopWatch()
	<-done
	for _, l := range strings.Split(strings.TrimSpace(errOut.String()), "\n") {
		if !strings.HasPrefix(l, "tutti: reading the process table: ") || !strings.HasSuffix(l, "(retrying)") || strings.Count(l, "tutti:") != 1 {
			t.Fatalf("warning line %q of\n%s", l, errOut.String())
		}
	}
}
