package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wantExit2 checks that err is a usage error (exit 2) whose message
// contains every one of want.
func wantExit2(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted", what)
	}
	var ee *exitError
	if errors.As(err, &ee) && ee.code != 2 {
		t.Fatalf("%s: exit %d, want 2: %v", what, ee.code, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("%s: error %q does not say %q", what, err, w)
		}
	}
}

// A command that only groups others ('tutti memnode', 'tutti replica',
// 'tutti bench') refuses an unknown subcommand instead of printing its help
// and exiting 0: 'tutti memnode remove 1' must not look like a success.
func TestCommandGroupsRefuseUnknownSubcommands(t *testing.T) {
	for _, args := range [][]string{
		{"memnode", "remove", "1"},
		{"replica", "bogus", "1", "2"},
		{"host", "evict", "3"},
		{"bench", "mtxx"},
	} {
		_, err := run(t, args...)
		wantExit2(t, strings.Join(args, " "), err, "unknown command", args[1])
	}
	for _, args := range [][]string{{"memnode"}, {"replica"}, {"host"}, {"bench"}} {
		out, err := run(t, args...)
		if err != nil || !strings.Contains(out, "Available Commands") {
			t.Fatalf("%v: %v %q", args, err, out)
		}
	}
}

// 'tutti members --watch --interval 0' panicked in time.NewTicker after
// printing the table.
func TestMembersRefusesNonPositiveInterval(t *testing.T) {
	for _, iv := range []string{"0", "-1s"} {
		_, err := run(t, "members", "--seed=127.0.0.1:1", "--watch", "--interval", iv)
		wantExit2(t, "--interval "+iv, err, "--interval", "positive")
	}
}

// A --timeout of 0 or less expired at once and was reported as "no seed
// answered ... context deadline exceeded", blaming a healthy cluster.
func TestNonPositiveTimeoutIsAUsageError(t *testing.T) {
	for _, args := range [][]string{
		{"mtx", "--read", "0:0:1"},
		{"memnodes"},
		{"members"},
		{"groups"},
		{"group", "lobby"},
		{"send", "lobby", "hi"},
		{"tail", "lobby"},
		{"replica", "add", "1", "2"},
		{"hosts"},
		{"host", "drain", "3", "--move"},
		{"host", "remove", "3"},
		{"decide", "1.1@1", "--participants", "1,2", "--abort"},
	} {
		for _, tm := range []string{"0", "-1s"} {
			_, err := run(t, append(args, "--seed=127.0.0.1:1", "--timeout", tm)...)
			wantExit2(t, strings.Join(args, " ")+" --timeout "+tm, err, "--timeout", "positive")
		}
	}
}

// Zero or negative failure-detection settings were silently replaced by
// membership's defaults; the probe timeout check named Go fields.
func TestMembershipFlagsRefuseNonPositive(t *testing.T) {
	dir := t.TempDir()
	for _, bad := range [][]string{
		{"--probe-interval", "-1s"}, {"--probe-timeout", "0"}, {"--gossip-interval", "-1s"},
		{"--table-poll", "0"}, {"--takeover-timeout", "-1s"}, {"--absent-timeout", "0"},
		{"--suspicion-mult", "-1"}, {"--suspicion-max-mult", "0"}, {"--indirect-checks", "-1"}, {"--retransmit-mult", "0"},
	} {
		_, err := run(t, append([]string{"agent", "--seed=127.0.0.1:1"}, bad...)...)
		wantExit2(t, "agent "+strings.Join(bad, " "), err, bad[0])
		_, err = run(t, append([]string{"server", "--id=1", "--peers=1=127.0.0.1:1", "--replicas=1", "--data-dir=" + dir}, bad...)...)
		wantExit2(t, "server "+strings.Join(bad, " "), err, bad[0])
	}
	_, err := run(t, "agent", "--seed=127.0.0.1:1", "--probe-timeout=1s")
	wantExit2(t, "--probe-timeout 1s", err, "--probe-timeout 1s must be below --probe-interval 200ms")
}

// The gossip key's usage quoted a shell command in backquotes, which pflag
// takes for the flag's value name: the help showed
// '--gossip-key head -c 32 /dev/urandom | base64'.
func TestGossipKeyHelpValueName(t *testing.T) {
	for _, args := range [][]string{{"server", "--help"}, {"agent", "--help"}} {
		out, err := run(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "--gossip-key string") {
			t.Fatalf("%v: --gossip-key is not shown as a string flag:\n%s", args, out)
		}
	}
}

// A read item without its length was told "want MEMNODE:ADDR", and a length
// too large for an item "want a positive number".
func TestParseReadSaysWhatIsWrong(t *testing.T) {
	for in, want := range map[string]string{
		"0:0x10":             "want MEMNODE:ADDR:LEN",
		"0x10:5":             "want MEMNODE:ADDR:LEN",
		"0:0x10:99999999999": "too large",
		"0:0x10:0":           "want a positive number",
	} {
		_, _, _, err := parseRead(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseRead(%q) = %v, want %q", in, err, want)
		}
	}
	if _, _, _, err := parseAssign("0=x"); err == nil || !strings.Contains(err.Error(), "want MEMNODE:ADDR=VALUE") {
		t.Errorf("parseAssign(0=x) = %v", err)
	}
}

// A peer address without a port was blamed on --gossip-addr, a flag the
// user had not given.
func TestParsePeersChecksAddresses(t *testing.T) {
	for _, in := range []string{"1=bogus", "1=:7400", "1=10.0.0.1:x", "1=10.0.0.1:0", "1=10.0.0.1:70000"} {
		if _, err := parsePeers(in); err == nil || !strings.Contains(err.Error(), "--peers") {
			t.Errorf("parsePeers(%q) = %v", in, err)
		}
	}
	if h, err := parsePeers("1=10.0.0.1:7400, 2=host-b:7400,3=[::1]:7400"); err != nil || len(h) != 3 {
		t.Errorf("valid peers: %v %v", h, err)
	}
	_, err := run(t, "server", "--id=1", "--peers=1=bogus", "--replicas=1", "--data-dir="+t.TempDir())
	wantExit2(t, "server --peers 1=bogus", err, "--peers", "host:port")
}

// 'tutti send' read standard input with a 1 MiB line limit, below the
// largest message a group takes, and reported a longer line as
// "bufio.Scanner: token too long".
func TestSendLongStdinLines(t *testing.T) {
	c := testCluster(t)
	send := func(in string) error {
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetIn(strings.NewReader(in))
		root.SetArgs([]string{"send", "big", "--seed=" + c.Seeds()[0], "--log-level=warn"})
		return root.ExecuteContext(context.Background())
	}
	if err := send("small\n" + strings.Repeat("x", 1<<20+100) + "\n"); err != nil {
		t.Fatalf("a 1 MiB + 100 B line: %v", err)
	}
	err := send("a\nb\n" + strings.Repeat("y", maxSendLine+1) + "\n")
	wantExit2(t, "a line over the limit", err, "line 3 of standard input", "the 2 lines before it were sent")
}

// bench mtx ran with --duration 0 or negative and printed NaN ops/s with
// exit 0; flags of the embedded cluster were silently ignored with --seed;
// bench mcast took --senders beyond --members and --crash-timeout 0.
func TestBenchRefusesBadAndConflictingFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"mtx", "--duration", "0", "--outstanding", "1", "--warmup", "0s"}, "--duration"},
		{[]string{"mtx", "--duration", "-1s", "--outstanding", "1", "--warmup", "0s"}, "--duration"},
		{[]string{"mtx", "--warmup", "-1s", "--outstanding", "1", "--duration", "1ms"}, "--warmup"},
		{[]string{"mtx", "--seed", "127.0.0.1:1", "--no-fsync"}, "--no-fsync"},
		// A level listed twice was measured twice and its ratios mixed up.
		{[]string{"mtx", "--outstanding", "4,8,4", "--duration", "1ms"}, "--outstanding: 4 listed twice"},
		{[]string{"mtx", "--memnodes", "2,2", "--duration", "1ms"}, "--memnodes: 2 listed twice"},
		{[]string{"mtx", "--seed", "127.0.0.1:1", "--leaders", "colocated"}, "--leaders"},
		{[]string{"mcast", "--seed", "127.0.0.1:1", "--senders", "4"}, "--senders"},
		{[]string{"mcast", "--seed", "127.0.0.1:1", "--senders", "-1"}, "--senders"},
		{[]string{"mcast", "--seed", "127.0.0.1:1", "--crash-timeout", "0"}, "--crash-timeout"},
		{[]string{"mcast", "--seed", "127.0.0.1:1", "--no-fsync"}, "--no-fsync"},
	} {
		_, err := run(t, append(append([]string{"bench"}, c.args...), "--quiet")...)
		wantExit2(t, "bench "+strings.Join(c.args, " "), err, c.want)
	}
	// TUTTI_SEED counts as --seed.
	t.Setenv("TUTTI_SEED", "127.0.0.1:1")
	_, err := run(t, "bench", "mtx", "--no-fsync", "--quiet")
	wantExit2(t, "TUTTI_SEED with --no-fsync", err, "--no-fsync")
}

// The benchmarks' --help showed --seed defaulting to 127.0.0.1:7400, while
// without --seed they start a cluster of their own; and did not say that
// driving an existing cluster overwrites data in it.
func TestBenchSeedHelp(t *testing.T) {
	for _, sub := range []string{"mtx", "mcast"} {
		out, err := run(t, "bench", sub, "--help")
		if err != nil {
			t.Fatal(err)
		}
		var line string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "--seed string") {
				line = l
			}
		}
		if strings.Contains(line, DefaultSeed) || !strings.Contains(line, "a cluster of its own") {
			t.Errorf("bench %s --seed: %q", sub, line)
		}
	}
	out, _ := run(t, "bench", "mtx", "--help")
	if !strings.Contains(out, "overwrites") {
		t.Errorf("bench mtx --help does not say that --seed overwrites words of the cluster")
	}
}

// 'tutti tail --count -1' joined and printed until interrupted, as if
// --count had not been given.
func TestTailRefusesNegativeCount(t *testing.T) {
	_, err := run(t, "tail", "lobby", "--seed=127.0.0.1:1", "--count", "-1")
	wantExit2(t, "--count -1", err, "--count -1")
}

// 'tutti up --hosts -1' panicked in the cluster's start; --memnodes 0 and
// --hosts 0 started the defaults under a banner saying "memnodes: 0 (ids
// 0--1)" or "0 replicas each"; a --port whose gossip ports (+1000) leave
// the port range was blamed on a Bind address.
func TestUpRefusesBadSizesAndPorts(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--hosts", "-1"}, "--hosts -1"},
		{[]string{"--hosts", "0"}, "--hosts 0"},
		{[]string{"--memnodes", "0"}, "--memnodes 0"},
		{[]string{"--port", "-1"}, "--port -1"},
		{[]string{"--port", "65534"}, "--port 65534"},
		{[]string{"--port", "65000"}, "--gossip-port"},
		{[]string{"--gossip-port", "70000"}, "--gossip-port 70000"},
	} {
		_, err := run(t, append([]string{"up", "--no-fsync", "--data-dir", t.TempDir()}, c.args...)...)
		wantExit2(t, "up "+strings.Join(c.args, " "), err, c.want)
	}
}

// Errors of the client library begin with "tutti: ", and main printed
// "tutti: tutti: directory change refused: ...".
func TestErrorLinePrefixOnce(t *testing.T) {
	if got := errorLine(errors.New("tutti: directory change refused: memnode 9 does not exist")); got != "tutti: directory change refused: memnode 9 does not exist" {
		t.Fatalf("%q", got)
	}
	if got := errorLine(errors.New("--count -1: bad")); got != "tutti: --count -1: bad" {
		t.Fatalf("%q", got)
	}
}

// An agent that cannot reach the cluster exits 2 (trouble), as every other
// command does; 1 is for the cluster's "no" (a gossip seed refusing it:
// TestUpThenMembers). It used to exit 1. The root help, which tells
// scripts how to read exit codes, must say so.
func TestAgentUnreachableExits2(t *testing.T) {
	_, err := run(t, "agent", "--seed", "127.0.0.1:1", "--name", "a", "--timeout", "1s", "--log-level", "error")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 {
		t.Fatalf("agent with no cluster: %v, want exit 2", err)
	}
	help, _ := run(t, "--help")
	for _, w := range []string{"Exit status", "1 when the cluster answered no", "2 on any other error"} {
		if !strings.Contains(help, w) {
			t.Fatalf("root help does not say %q:\n%s", w, help)
		}
	}
}

// main prints an error as one line, but memberlist's join errors (a wrong
// --gossip-key: "3 errors occurred:\n\t* failed to join ...\n\n") and
// errors.Join spread over several, and a client error wrapped by the
// client repeated "tutti: " in the middle of the line.
func TestErrorLineIsOneLine(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{errors.New("membership: could not join any seed [a b] (check the gossip key): 2 errors occurred:\n\t* failed to join a: encryption is configured but remote state is not encrypted\n\t* failed to join b: refused\n\n"),
			"tutti: membership: could not join any seed [a b] (check the gossip key): 2 errors occurred: failed to join a: encryption is configured but remote state is not encrypted; failed to join b: refused"},
		{errors.Join(errors.New("multicast: tutti: memnode unavailable"), errors.New("tutti: client closed")),
			"tutti: multicast: memnode unavailable; client closed"},
		{errors.New("memnode 9: tutti: unknown memnode: the cluster has no memnode 9"),
			"tutti: memnode 9: unknown memnode: the cluster has no memnode 9"},
		{fmt.Errorf("tutti: no seed answered: %w", errors.New("a:1: refused")), "tutti: no seed answered: a:1: refused"},
	} {
		if got := errorLine(c.err); got != c.want {
			t.Errorf("errorLine(%q)\n = %q\nwant %q", c.err, got, c.want)
		}
	}
}

// An empty --gossip-key-file (a key that was never written, a failed
// 'head | base64 >') or a blank --gossip-key ran gossip unencrypted without
// a word, where the operator asked for encryption.
func TestBlankGossipKeyIsRefused(t *testing.T) {
	empty, blank := filepath.Join(t.TempDir(), "gossip.key"), filepath.Join(t.TempDir(), "gossip.key")
	if err := errors.Join(os.WriteFile(empty, nil, 0o600), os.WriteFile(blank, []byte("\n"), 0o600)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--gossip-key-file", empty}, "--gossip-key-file " + empty},
		{[]string{"--gossip-key-file", blank}, "--gossip-key-file " + blank},
		{[]string{"--gossip-key", "  "}, "--gossip-key"},
	} {
		_, err := run(t, append([]string{"agent", "--seed=127.0.0.1:1", "--timeout", "1s", "--log-level", "error"}, c.args...)...)
		wantExit2(t, "agent "+strings.Join(c.args, " "), err, c.want, "empty")
	}
}

// A --seed without a port (or with a port out of range) was dialed by gRPC
// at its default port 443: 'tutti mtx --seed 10.0.0.1' said "dial tcp
// 10.0.0.1:443: connection refused", an address the operator never gave.
func TestSeedMustBeHostPort(t *testing.T) {
	for _, seed := range []string{"localhost", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x", "127.0.0.1:7400,10.0.0.2"} {
		for _, args := range [][]string{
			{"mtx", "--read", "0:0:1", "--timeout", "2s"},
			{"memnodes", "--timeout", "2s"},
			{"members", "--timeout", "2s"},
			{"send", "lobby", "hi", "--timeout", "2s"},
			{"bench", "mtx", "--duration", "100ms"},
		} {
			_, err := run(t, append(args, "--seed", seed)...)
			wantExit2(t, strings.Join(args, " ")+" --seed "+seed, err, "--seed", "host:port")
		}
	}
}

// A --metrics-addr that cannot be served (taken, malformed) was found only
// after the host (or the local cluster) had started: the data directory
// was created and written, the host had joined its Raft groups and its
// agent was registering in the process table, and then the command failed.
// It must fail before anything is started.
func TestMetricsAddrCheckedBeforeStarting(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	for _, addr := range []string{busy.Addr().String(), "nonsense"} {
		for _, args := range [][]string{
			{"server", "--id", "1", "--peers", "1=" + free() + ",2=" + free() + ",3=" + free(), "--no-fsync"},
			{"up", "--port", "0", "--no-fsync"},
		} {
			dir := filepath.Join(t.TempDir(), "data")
			_, err := run(t, append(args, "--data-dir", dir, "--metrics-addr", addr, "--log-level", "error")...)
			wantExit2(t, args[0]+" --metrics-addr "+addr, err, "--metrics-addr")
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s --metrics-addr %s: the data directory was created before the metrics address was found unusable (%v)", args[0], addr, err)
			}
		}
	}
}

// '--log-level bogus' failed with zerolog's "Unknown Level String: 'bogus',
// defaulting to NoLevel", which says the command went on when it stopped;
// 'tutti server' without --data-dir blamed "tutti host: data directory".
func TestFlagErrorsNameTheFlag(t *testing.T) {
	_, err := run(t, "mtx", "--seed=127.0.0.1:1", "--read", "0:0:1", "--log-level", "bogus")
	wantExit2(t, "--log-level bogus", err, `--log-level "bogus"`, "debug, info, warn or error")
	if strings.Contains(err.Error(), "defaulting") {
		t.Errorf("--log-level bogus: %q says it goes on", err)
	}
	_, err = run(t, "server", "--id", "1", "--peers", "1=127.0.0.1:1")
	wantExit2(t, "server without --data-dir", err, "--data-dir is required")
}

// A missing or extra argument was reported in cobra's words alone, 'tutti:
// accepts 2 arg(s), received 1', naming neither the command nor what it
// takes.
func TestArgumentCountErrorsShowUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"tail"}, "tutti tail GROUP"},
		{[]string{"send"}, "tutti send GROUP [MESSAGE...]"},
		{[]string{"group", "a", "b"}, "tutti group GROUP"},
		{[]string{"replica", "add", "1"}, "tutti replica add MEMNODE HOST"},
		{[]string{"replica", "move", "1", "2"}, "tutti replica move MEMNODE HOST TOHOST"},
		{[]string{"host", "drain"}, "tutti host drain HOST"},
		{[]string{"host", "undrain", "1", "2"}, "tutti host undrain HOST"},
		{[]string{"hosts", "1"}, "tutti hosts"},
		{[]string{"decide", "--participants", "1,2", "--commit"}, "tutti decide TID"},
	} {
		_, err := run(t, append(c.args, "--seed=127.0.0.1:1")...)
		wantExit2(t, strings.Join(c.args, " "), err, c.want)
	}
}

// The console log format colored its output with ANSI escapes even when
// standard error was a file or a pipe (a service's journal, '2> log'),
// which then held "\x1b[32mINF\x1b[0m" for every level.
func TestConsoleLogsUncoloredWhenNotATerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	saved := os.Stderr
	os.Stderr = w
	g := &globals{logLevel: "info", logFormat: "console"}
	log, err := g.logger()
	os.Stderr = saved
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Str("k", "v").Msg("hello")
	w.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "hello") || strings.Contains(string(b), "\x1b[") {
		t.Fatalf("log line to a pipe: %q", b)
	}
}
