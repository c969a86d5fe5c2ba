package main

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/internal/cluster"
)

// --workload base,cas2 --rounds N prints every point with its round, a
// ratio line per round and the median ratio.
func TestBenchCommandRatio(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 2})
	out, err := run(t, "bench", "mtx", "--seed="+c.Seeds()[0], "--workload", "base,cas2", "--rounds", "2",
		"--outstanding", "2", "--duration", "300ms", "--warmup", "100ms", "--json", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var workloads []string
	var ratios, medians int
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var p map[string]any
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		switch {
		case p["kind"] == "ratio" && p["median"] == true:
			medians++
			if rs, _ := p["rounds"].([]any); len(rs) != 2 || p["cas2_over_base"].(float64) <= 0 {
				t.Fatalf("median line: %s", l)
			}
		case p["kind"] == "ratio":
			ratios++
			if r := p["cas2_over_base"].(float64); r <= 0 || r != p["cas2_ops_per_sec"].(float64)/p["base_ops_per_sec"].(float64) {
				t.Fatalf("ratio line: %s", l)
			}
		default:
			workloads = append(workloads, fmt.Sprintf("%v/%v", p["round"], p["workload"]))
		}
	}
	// The order alternates between rounds.
	if want := []string{"1/base", "1/cas2", "2/cas2", "2/base"}; !slices.Equal(workloads, want) || ratios != 2 || medians != 1 {
		t.Fatalf("points %v (want %v), %d ratio lines, %d medians:\n%s", workloads, want, ratios, medians, out)
	}
	if _, err := run(t, "bench", "mtx", "--seed="+c.Seeds()[0], "--workload", "base,nope"); err == nil {
		t.Fatal("unknown workload accepted")
	}
}

// With several levels, --workload base,cas2 also compares the workloads'
// peaks: each one's highest throughput over the levels.
func TestBenchCommandPeakRatio(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 2})
	out, err := run(t, "bench", "mtx", "--seed="+c.Seeds()[0], "--workload", "base,cas2",
		"--outstanding", "1,4", "--duration", "300ms", "--warmup", "100ms", "--json", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	best := map[string]float64{}
	at := map[string]float64{}
	var peaks []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var p map[string]any
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		switch {
		case p["kind"] == "ratio" && p["peak"] == true:
			peaks = append(peaks, p)
		case p["kind"] == "ratio":
		default:
			w := p["workload"].(string)
			if ops := p["ops_per_sec"].(float64); ops > best[w] {
				best[w], at[w] = ops, p["outstanding"].(float64)
			}
		}
	}
	if len(peaks) != 1 || best["base"] == 0 || best["cas2"] == 0 {
		t.Fatalf("%d peak lines, peaks %v:\n%s", len(peaks), best, out)
	}
	p := peaks[0]
	if p["base_ops_per_sec"] != best["base"] || p["cas2_ops_per_sec"] != best["cas2"] ||
		p["cas2_over_base"] != best["cas2"]/best["base"] ||
		p["base_outstanding"] != at["base"] || p["cas2_outstanding"] != at["cas2"] {
		t.Fatalf("peak line %v, points' peaks %v at %v", p, best, at)
	}
}

// --per-memnode multiplies every level by the embedded cluster's memnodes,
// and refuses an external cluster (its size is not the benchmark's to set).
func TestBenchCommandPerMemnode(t *testing.T) {
	out, err := run(t, "bench", "mtx", "--workload", "cas2", "--memnodes", "1,2", "--outstanding", "3", "--per-memnode",
		"--no-fsync", "--duration", "300ms", "--warmup", "100ms", "--json", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var p map[string]any
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if p["ops"].(float64) <= 0 {
			t.Fatalf("no op committed: %s", l)
		}
		// Without fsync the log engine never syncs; Raft entries are
		// still counted.
		if e, _ := p["raft_entries_per_op"].(float64); e <= 0 || p["fsyncs_per_op"] != nil {
			t.Fatalf("raft_entries_per_op %v, fsyncs_per_op %v with --no-fsync: %s", p["raft_entries_per_op"], p["fsyncs_per_op"], l)
		}
		got = append(got, fmt.Sprintf("%v memnodes, %v outstanding", p["memnodes"], p["outstanding"]))
	}
	if want := []string{"1 memnodes, 3 outstanding", "2 memnodes, 6 outstanding"}; !slices.Equal(got, want) {
		t.Fatalf("points %v, want %v", got, want)
	}
	if out, err := run(t, "bench", "mtx", "--seed=127.0.0.1:1", "--per-memnode"); err == nil || !strings.Contains(err.Error(), "--per-memnode") {
		t.Fatalf("--per-memnode with --seed: %v\n%s", err, out)
	}
}

// With fsync on (the default), the embedded cluster's fsyncs and Raft
// entries per committed op are reported; an external cluster's are not
// this process's to count.
func TestBenchCommandRaftCounters(t *testing.T) {
	out, err := run(t, "bench", "mtx", "--memnodes", "1", "--outstanding", "4",
		"--duration", "300ms", "--warmup", "100ms", "--json", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var p map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &p); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	f, _ := p["fsyncs_per_op"].(float64)
	e, _ := p["raft_entries_per_op"].(float64)
	// Every op is one request in one entry at most, fsynced by the leader
	// and a follower at least, unless entries share fsyncs.
	if f <= 0 || e <= 0 || e > 1 {
		t.Fatalf("fsyncs_per_op %v, raft_entries_per_op %v: %s", p["fsyncs_per_op"], p["raft_entries_per_op"], out)
	}

	c := testClusterWith(t, cluster.Config{Memnodes: 1})
	out, err = run(t, "bench", "mtx", "--seed="+c.Seeds()[0], "--outstanding", "2", "--duration", "200ms", "--warmup", "50ms", "--json", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	if strings.Contains(out, "fsyncs_per_op") || strings.Contains(out, "raft_entries_per_op") {
		t.Fatalf("Raft counters reported for an external cluster: %s", out)
	}
}

// --leaders places the embedded cluster's Raft leaders before measuring:
// spread gives each memnode a host of its own, colocated one host to all.
func TestBenchCommandLeaders(t *testing.T) {
	for _, tc := range []struct {
		how  string
		want func([]any) bool
	}{
		{"spread", func(hs []any) bool { return len(hs) == 2 && hs[0] != hs[1] }},
		{"colocated", func(hs []any) bool { return len(hs) == 2 && hs[0] == hs[1] }},
	} {
		out, err := run(t, "bench", "mtx", "--workload", "cas2", "--memnodes", "2", "--outstanding", "2", "--leaders", tc.how,
			"--no-fsync", "--duration", "300ms", "--warmup", "100ms", "--json", "--quiet")
		if err != nil {
			t.Fatalf("--leaders %s: %v\n%s", tc.how, err, out)
		}
		var p map[string]any
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &p); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if hs, _ := p["leader_hosts"].([]any); !tc.want(hs) || p["leader_changes"].(float64) != 0 {
			t.Fatalf("--leaders %s: leader_hosts %v, leader_changes %v", tc.how, p["leader_hosts"], p["leader_changes"])
		}
	}
	if _, err := run(t, "bench", "mtx", "--leaders", "nearby"); err == nil || !strings.Contains(err.Error(), "--leaders") {
		t.Fatalf("unknown --leaders accepted: %v", err)
	}
}

// Every cas2 level starts from the words' current values: the second level
// runs on the cluster the first one wrote, with other workers owning each
// word. Before, its workers assumed zeros and their first compare of every
// word the first level had swapped failed (not committed).
func TestBenchCAS2LevelsStartFromCurrentValues(t *testing.T) {
	out, err := run(t, "bench", "mtx", "--workload", "cas2", "--memnodes", "2", "--outstanding", "4,8", "--words", "600",
		"--no-fsync", "--duration", "500ms", "--warmup", "100ms", "--json", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want two points:\n%s", out)
	}
	for _, l := range lines {
		var p map[string]any
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if p["ops"].(float64) <= 0 || p["not_committed"].(float64) != 0 || p["errors"].(float64) != 0 {
			t.Fatalf("outstanding %v: ops %v, not committed %v, errors %v", p["outstanding"], p["ops"], p["not_committed"], p["errors"])
		}
	}
}

// bench mcast runs its members as processes of its own binary, so the test
// builds tutti and runs it: a paced and a saturated point with two members
// on its embedded cluster. Every point must carry the JSON contract of the
// benchmark, deliver what was sent, and lose nothing.
func TestBenchMcastCommand(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "tutti")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "bench", "mcast", "--members", "2", "--rates", "200,max", "--window", "64",
		"--duration", "1s", "--warmup", "300ms", "--no-fsync", "--json", "--quiet").CombinedOutput()
	if err != nil {
		t.Fatalf("bench mcast: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 points, got:\n%s", out)
	}
	var points []map[string]any
	for i, l := range lines {
		var p map[string]any
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		points = append(points, p)
		for _, k := range []string{"members", "msg_bytes", "offered_per_sec", "delivered_per_member_per_sec", "p50_ms", "p99_ms", "lost"} {
			if _, ok := p[k]; !ok {
				t.Fatalf("point %d lacks %q: %s", i, k, l)
			}
		}
		if p["members"].(float64) != 2 || p["msg_bytes"].(float64) != 1024 || p["payload"] != "random" || p["lost"].(float64) != 0 || p["errors"].(float64) != 0 {
			t.Fatalf("point %d: %s", i, l)
		}
		if d := p["delivered_per_member_per_sec"].(float64); d <= 0 || p["p50_ms"].(float64) <= 0 || p["p99_ms"].(float64) < p["p50_ms"].(float64) {
			t.Fatalf("point %d: nothing delivered or no latency: %s", i, l)
		}
		// Without fsync the engine never syncs; Raft entries are counted.
		if e, _ := p["raft_entries_per_msg"].(float64); e <= 0 || p["fsyncs_per_msg"] != nil {
			t.Fatalf("point %d: raft_entries_per_msg %v, fsyncs_per_msg %v with --no-fsync", i, p["raft_entries_per_msg"], p["fsyncs_per_msg"])
		}
	}
	if points[0]["offered_per_sec"] != 200.0 || points[0]["saturation"] != false || points[1]["saturation"] != true {
		t.Fatalf("points: offered %v (saturation %v), then saturation %v; want 200/s, then max", points[0]["offered_per_sec"], points[0]["saturation"], points[1]["saturation"])
	}

	// --async: the members keep their messages in flight with
	// MulticastAsync, paced and saturated alike.
	out, err = exec.CommandContext(ctx, bin, "bench", "mcast", "--members", "2", "--rates", "200,max", "--window", "64", "--async",
		"--duration", "1s", "--warmup", "300ms", "--no-fsync", "--json", "--quiet").CombinedOutput()
	if err != nil {
		t.Fatalf("bench mcast --async: %v\n%s", err, out)
	}
	lines = strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		t.Fatalf("--async: want 2 points, got:\n%s", out)
	}
	for i, l := range lines {
		var p map[string]any
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		sent, _ := p["sent_per_member_per_sec"].(float64)
		if p["async"] != true || p["lost"].(float64) != 0 || p["errors"].(float64) != 0 || sent <= 0 ||
			p["delivered_per_member_per_sec"].(float64) < sent || (i == 0 && sent > 200*1.5) {
			t.Fatalf("--async point %d: %s", i, l)
		}
	}

	// On a cluster it did not start, the benchmark deletes the groups its
	// members joined once they left (before, each run left one behind,
	// and each memnode's index holds 1024 names).
	c := testCluster(t)
	seed := c.Seeds()[0]
	if out, err := exec.CommandContext(ctx, bin, "bench", "mcast", "--seed", seed, "--members", "2", "--rates", "200",
		"--duration", "1s", "--warmup", "300ms", "--quiet").CombinedOutput(); err != nil {
		t.Fatalf("bench mcast --seed: %v\n%s", err, out)
	}
	groups, err := run(t, "groups", "--seed="+seed)
	if err != nil || strings.Contains(groups, "bench-mcast-") {
		t.Fatalf("groups after bench mcast --seed (%v):\n%s", err, groups)
	}
}

// TestBenchMcastPayloadIncompressible: the default payload of bench mcast
// is what no layer can compress: consecutive messages of one sender and of
// several, laid end to end as in a log engine's table block, do not shrink
// under DEFLATE (whose window is wider than snappy's), while zeros shrink
// to almost nothing. With zeros, saturation measured ~20% higher than with
// these bytes, as the engine's flushed tables compressed.
func TestBenchMcastPayloadIncompressible(t *testing.T) {
	deflated := func(b []byte) int {
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.BestCompression)
		w.Write(b)
		w.Close()
		return buf.Len()
	}
	var block []byte
	for seq := uint64(1); seq <= 32; seq++ {
		for sender := range 3 {
			block = append(block, randomFill(sender, seq, 1024)...)
		}
	}
	if n := deflated(block); n < len(block)*99/100 {
		t.Fatalf("96 KiB of random payloads deflate to %d bytes: they repeat each other", n)
	}
	if n := deflated(make([]byte, len(block))); n > len(block)/100 {
		t.Fatalf("zeros deflate to %d bytes", n)
	}
	if a, b := randomFill(0, 1, 1024), randomFill(0, 2, 1024); bytes.Equal(a, b) {
		t.Fatal("two messages of one sender have the same payload")
	}
	if len(randomFill(5, 1<<40, 1<<20)) != 1<<20 {
		t.Fatal("randomFill of 1 MiB is short")
	}
}

// TestLatencyShardsMergeEveryRecord: latencies recorded by many workers
// into the shared shards all reach the merged histogram.
func TestLatencyShardsMergeEveryRecord(t *testing.T) {
	const workers = 5000
	s := newLatencyShards(workers)
	if len(s) >= workers {
		t.Fatalf("%d shards for %d workers: one histogram per worker is what the shards avoid", len(s), workers)
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.record(w, time.Duration(w%1000+1)*time.Millisecond)
		}()
	}
	wg.Wait()
	h := s.merged()
	if h.TotalCount() != workers {
		t.Fatalf("merged %d latencies, recorded %d", h.TotalCount(), workers)
	}
	if p50 := h.ValueAtQuantile(50); p50 < 499_000 || p50 > 501_000 {
		t.Fatalf("p50 %d µs, want 500 ms", p50)
	}
	if m := h.Max(); m < 999_000 || m > 1_001_000 {
		t.Fatalf("max %d µs, want 1 s", m)
	}
}
