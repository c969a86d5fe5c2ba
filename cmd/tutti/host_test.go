package main

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/internal/cluster"
)

// An operator takes a host holding replicas out of service online: `host
// drain --move` moves each replica to a host that holds none of that
// memnode, one at a time, stops at the first that has nowhere to go (saying
// what moved and what is left) and finishes when run again; the drained
// host is then skipped by `memnode add` and refused by `replica add`;
// `host remove` is refused while it runs or for a host with replicas, and
// goes through once it is stopped; the data written before is still there.
func TestHostDrainMoveAndRemove(t *testing.T) {
	// Memnodes 0 and 1 on hosts 1-3; host 4 holds nothing.
	c := testClusterWith(t, cluster.Config{Hosts: 4, Spares: 1, Memnodes: 2, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}
	seed := "--seed=" + c.Seeds()[0]
	for _, w := range []string{"0:0x10=before-0", "1:0x10=before-1"} {
		if out, err := run(t, "mtx", seed, "--write", w); err != nil {
			t.Fatalf("mtx --write %s: %v\n%s", w, err, out)
		}
	}
	code := func(err error) int {
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		if err != nil {
			return 2 // what main makes of cobra's own errors
		}
		return 0
	}
	hosts := func() map[uint64]hostJSON {
		t.Helper()
		out, err := run(t, "hosts", seed, "--json")
		var got hostsJSON
		if err != nil || json.Unmarshal([]byte(out), &got) != nil {
			t.Fatalf("hosts --json: %v\n%s", err, out)
		}
		m := map[uint64]hostJSON{}
		for _, h := range got.Hosts {
			m[h.ID] = h
		}
		return m
	}

	// Memnode 2 on hosts 1, 3, 4: with host 2 drained, its replica on
	// host 3 has nowhere to go.
	if out, err := run(t, "memnode", "add", "--replicas", "1,3,4", "--wait", seed); err != nil {
		t.Fatalf("memnode add --replicas 1,3,4: %v\n%s", err, out)
	}
	if out, err := run(t, "host", "drain", "2", seed); err != nil {
		t.Fatalf("host drain 2: %v\n%s", err, out)
	}
	out, err := run(t, "host", "drain", "3", "--move", seed)
	if code(err) != 2 || !strings.Contains(err.Error(), "moved: memnode 0 to host 4, memnode 1 to host 4; moving memnode 2's replica off it failed") ||
		!strings.Contains(err.Error(), "still on host 3: memnodes [2]; run 'tutti host drain 3 --move' again") ||
		!strings.Contains(err.Error(), "too few answering hosts") {
		t.Fatalf("host drain 3 --move with nowhere to move memnode 2: exit %d: %v\n%s", code(err), err, out)
	}
	if !strings.Contains(out, "memnode 1: replica moved from host 3 to host 4") {
		t.Fatalf("host drain 3 --move does not report the moves done:\n%s", out)
	}
	if out, err := run(t, "host", "undrain", "2", seed); err != nil {
		t.Fatalf("host undrain 2: %v\n%s", err, out)
	}
	out, err = run(t, "host", "drain", "3", "--move", seed)
	if err != nil || !strings.Contains(out, "memnode 2: replica moved from host 3 to host 2") || !strings.Contains(out, "host 3 holds no replica") ||
		strings.Contains(out, "memnode 0:") {
		t.Fatalf("host drain 3 --move, again: %v\n%s", err, out)
	}
	for _, mn := range []uint64{0, 1, 2} {
		if err := c.WaitReplicas(ctx, mn, []uint64{1, 2, 4}); err != nil {
			t.Fatal(err)
		}
	}
	h := hosts()
	if !h[3].Drained || h[3].Replicas != 0 || !h[3].Answering || h[2].Drained || !slices.Equal(h[4].Memnodes, []uint64{0, 1, 2}) {
		t.Fatalf("hosts after the drain: %+v", h)
	}
	out, err = run(t, "memnodes", seed)
	if err != nil || !strings.Contains(out, "drained") {
		t.Fatalf("memnodes does not show the drained host: %v\n%s", err, out)
	}

	// Host 3 is the least loaded, and is not picked.
	out, err = run(t, "memnode", "add", seed, "--wait", "--json")
	var added struct {
		Memnode struct {
			ID       uint64   `json:"id"`
			Replicas []uint64 `json:"replicas"`
		} `json:"memnode"`
	}
	if err != nil || json.Unmarshal([]byte(out), &added) != nil || !slices.Equal(added.Memnode.Replicas, []uint64{1, 2, 4}) {
		t.Fatalf("memnode add with host 3 drained: %v\n%s", err, out)
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"replica", "add", "3", "3"}, 1, "host 3 is drained"},
		{[]string{"replica", "move", "3", "1", "3"}, 1, "host 3 is drained"},
		{[]string{"host", "remove", "3"}, 1, "still answers"},
		{[]string{"host", "remove", "4"}, 1, "not drained"},
		{[]string{"host", "remove", "4"}, 1, "memnodes [0 1 2 3]"},
		{[]string{"host", "drain", "9"}, 1, "host 9 is not in the cluster"},
		{[]string{"host", "drain", "x"}, 2, `"x" is not a host id`},
		{[]string{"host", "undrain", "0"}, 2, `"0" is not a host id`},
		{[]string{"host", "drain"}, 2, "tutti host drain HOST"},
		{[]string{"host", "remove", "3", "4"}, 2, "tutti host remove HOST"},
	} {
		out, err := run(t, append(c.args, seed)...)
		if code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%v: exit %d, want %d saying %q: %v\n%s", c.args, code(err), c.code, c.want, err, out)
		}
	}

	if err := c.StopHost(2); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "host", "remove", "3", seed)
	if err != nil || !strings.Contains(out, "host 3 removed from the directory") {
		t.Fatalf("host remove 3 once stopped: %v\n%s", err, out)
	}
	if h := hosts(); len(h) != 3 || h[3].ID != 0 {
		t.Fatalf("hosts after the removal: %+v", h)
	}
	if out, err := run(t, "host", "undrain", "3", seed); code(err) != 1 {
		t.Fatalf("undrain of a removed host: %v\n%s", err, out)
	}

	// Drain without --move, then undrain: only the flag changes.
	if out, err := run(t, "host", "drain", "1", seed); err != nil || !strings.Contains(out, "host 1 still holds replicas of memnodes [0 1 2 3]") {
		t.Fatalf("host drain 1: %v\n%s", err, out)
	}
	if !hosts()[1].Drained {
		t.Fatal("host 1 not drained")
	}
	if out, err := run(t, "host", "undrain", "1", seed); err != nil || !strings.Contains(out, "host 1 is in service") {
		t.Fatalf("host undrain 1: %v\n%s", err, out)
	}
	if h := hosts()[1]; h.Drained || h.Replicas != 4 {
		t.Fatalf("host 1 after undrain: %+v", h)
	}

	out, err = run(t, "mtx", seed, "--read", "0:0x10:8", "--read", "1:0x10:8", "--json")
	var res struct {
		Reads []struct {
			Text string `json:"text"`
		} `json:"reads"`
	}
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || len(res.Reads) != 2 ||
		res.Reads[0].Text != "before-0" || res.Reads[1].Text != "before-1" {
		t.Fatalf("data written before the drain: %v\n%s", err, out)
	}
}
