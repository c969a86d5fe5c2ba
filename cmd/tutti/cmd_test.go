package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/internal/cluster"
)

func TestParseValue(t *testing.T) {
	cases := []struct {
		in   string
		want []byte
		err  bool
	}{
		{"hello", []byte("hello"), false},
		{"hex:0a0b", []byte{10, 11}, false},
		{"u32:7", []byte{7, 0, 0, 0}, false},
		{"u64:0x101", []byte{1, 1, 0, 0, 0, 0, 0, 0}, false},
		{"text:hex:zz", []byte("hex:zz"), false},
		{"hex:zz", nil, true},
		{"u32:4294967296", nil, true},
		{"", nil, true},
	}
	for _, tc := range cases {
		got, err := parseValue(tc.in)
		if (err != nil) != tc.err || !bytes.Equal(got, tc.want) {
			t.Errorf("parseValue(%q) = %v, %v", tc.in, got, err)
		}
	}
	if _, _, _, err := parseRead("0:0x10"); err == nil {
		t.Error("parseRead without length accepted")
	}
	if mn, addr, n, err := parseRead("2:0x10:5"); err != nil || mn != 2 || addr != 16 || n != 5 {
		t.Errorf("parseRead: %d %d %d %v", mn, addr, n, err)
	}
	if _, err := parsePeers("1=a:1,1=b:2"); err == nil {
		t.Error("duplicate peer accepted")
	}
}

// testCluster starts an embedded cluster without fsync for one test, closed
// when the test ends, and waits until every memnode has a leader.
func testCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	return testClusterWith(t, cluster.Config{})
}

// testClusterWith is testCluster with cfg (NoSync and a temporary DataDir
// are set here).
func testClusterWith(t *testing.T, cfg cluster.Config) *cluster.Cluster {
	t.Helper()
	cfg.NoSync, cfg.DataDir = true, t.TempDir()
	c, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestMtxCommand(t *testing.T) {
	c := testCluster(t)
	seed := "--seed=" + c.Seeds()[0]

	out, err := run(t, "mtx", seed, "--write", "0:0x10=hello")
	if err != nil || !strings.Contains(out, "committed") {
		t.Fatalf("write: %q %v", out, err)
	}
	out, err = run(t, "mtx", seed, "--cmp", "0:0x10=hello", "--write", "0:0x10=world", "--read", "0:0x10:5", "--json")
	if err != nil {
		t.Fatalf("cas: %q %v", out, err)
	}
	var res struct {
		Committed bool `json:"committed"`
		Reads     []struct {
			Text string `json:"text"`
			Hex  string `json:"hex"`
		} `json:"reads"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Committed || res.Reads[0].Text != "hello" {
		t.Fatalf("json output %q: %+v %v", out, res, err)
	}
	// A failed compare exits 1 and names the item.
	out, err = run(t, "mtx", seed, "--cmp", "0:0x10=hello", "--write", "0:0x10=again")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, "compare 0") {
		t.Fatalf("failed compare: %q %v", out, err)
	}
	// With read items it shows what the compare saw.
	out, err = run(t, "mtx", seed, "--cmp", "0:0x10=hello", "--write", "0:0x10=again", "--read", "0:0x10:5")
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, `read 0:0x10:5 = "world" (hex 776f726c64) (when the compare failed)`) {
		t.Fatalf("failed compare with a read: %q %v", out, err)
	}
	// Bad input exits 2 with a clear message.
	_, err = run(t, "mtx", seed, "--write", "7:0=x")
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "memnode 7") {
		t.Fatalf("unknown memnode: %v", err)
	}
	_, err = run(t, "mtx", seed, "--read", "0:zz:1")
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "address") {
		t.Fatalf("bad address: %v", err)
	}
}

func TestBenchCommandJSON(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 1})
	file := filepath.Join(t.TempDir(), "bench.json")
	out, err := run(t, "bench", "mtx", "--seed="+c.Seeds()[0], "--outstanding", "1,4", "--duration", "300ms",
		"--warmup", "100ms", "--json", "--quiet", "--out", file)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 JSON lines, got %q", b)
	}
	for i, l := range lines {
		var p map[string]any
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"workload", "outstanding", "duration_s", "ops", "ops_per_sec", "p50_ms", "p99_ms"} {
			if _, ok := p[k]; !ok {
				t.Fatalf("line %d lacks %q: %s", i, k, l)
			}
		}
		if p["ops"].(float64) <= 0 || p["errors"].(float64) != 0 {
			t.Fatalf("line %d: %s", i, l)
		}
	}
}

func TestServerConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.json")
	os.WriteFile(cfg, []byte(`{"memnodes": 5, "replicas": 1, "memnode-size": 1099511627776}`), 0o644)
	cmd := newServer(&globals{})
	t.Setenv("TUTTI_REPLICAS", "2")
	if err := cmd.ParseFlags([]string{"--memnodes=4"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnvAndConfig(cmd.Flags(), cfg); err != nil {
		t.Fatal(err)
	}
	get := func(n string) string { return cmd.Flags().Lookup(n).Value.String() }
	if get("memnodes") != "4" || get("replicas") != "2" || get("memnode-size") != "1099511627776" {
		t.Fatalf("memnodes=%s replicas=%s size=%s", get("memnodes"), get("replicas"), get("memnode-size"))
	}
	os.WriteFile(cfg, []byte(`{"bogus": 1}`), 0o644)
	if err := applyEnvAndConfig(newServer(&globals{}).Flags(), cfg); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("unknown key: %v", err)
	}
}
