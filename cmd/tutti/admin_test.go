package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/internal/cluster"
)

func TestMemnodesAndReplicaCommands(t *testing.T) {
	c, err := cluster.Start(cluster.Config{NoSync: true, DataDir: t.TempDir(), Hosts: 4, Spares: 1, Memnodes: 2,
		DirectoryPoll: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}
	seed := "--seed=" + c.Seeds()[0]

	var got memnodesJSON
	memnodes := func() error {
		out, err := run(t, "memnodes", seed, "--json")
		if err != nil {
			return fmt.Errorf("memnodes: %v\n%s", err, out)
		}
		got = memnodesJSON{}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			return fmt.Errorf("memnodes --json output %q: %v", out, err)
		}
		return nil
	}
	allUp := func() error {
		if err := memnodes(); err != nil {
			return err
		}
		for _, m := range got.Memnodes {
			if m.Leader == 0 || !m.Converged {
				return fmt.Errorf("memnode %d: leader %d converged %v", m.ID, m.Leader, m.Converged)
			}
			for _, r := range m.Replicas {
				if r.Health != "up" {
					return fmt.Errorf("memnode %d replica on host %d: %s", m.ID, r.Host, r.Health)
				}
			}
		}
		return nil
	}
	if err := cluster.Eventually(ctx, "every replica up", allUp); err != nil {
		t.Fatal(err)
	}
	if got.Version == 0 || len(got.Hosts) != 4 || len(got.Memnodes) != 2 || len(got.Memnodes[1].Replicas) != 3 {
		t.Fatalf("memnodes --json: %+v", got)
	}

	out, err := run(t, "memnode", "add", seed, "--replicas", "2,3,4", "--wait", "--json")
	if err != nil {
		t.Fatalf("memnode add: %v\n%s", err, out)
	}
	var added struct {
		Memnode struct {
			ID       uint64   `json:"id"`
			Replicas []uint64 `json:"replicas"`
		} `json:"memnode"`
		Converged *bool `json:"converged"`
	}
	if err := json.Unmarshal([]byte(out), &added); err != nil || added.Memnode.ID != 2 || added.Converged == nil || !*added.Converged {
		t.Fatalf("memnode add --json %q: %+v %v", out, added, err)
	}

	out, err = run(t, "replica", "move", "1", "1", "4", seed, "--wait")
	if err != nil || !strings.Contains(out, "replicas converged") {
		t.Fatalf("replica move: %v\n%s", err, out)
	}
	if err := cluster.Eventually(ctx, "every replica up after the move", allUp); err != nil {
		t.Fatal(err)
	}
	var hosts []uint64
	for _, r := range got.Memnodes[1].Replicas {
		hosts = append(hosts, r.Host)
	}
	if !slices.Equal(hosts, []uint64{2, 3, 4}) || len(got.Memnodes) != 3 {
		t.Fatalf("after the move: %+v", got.Memnodes)
	}

	// Refused changes exit 1 and say why.
	for _, args := range [][]string{
		{"replica", "remove", "99", "1"},
		{"replica", "add", "0", "9"},
		{"replica", "add", "0", "1"},
	} {
		out, err := run(t, append(args, seed)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if _, err := run(t, "replica", "move", "1", "2", seed); err == nil {
		t.Fatal("replica move with two arguments accepted")
	}
}

// TestDecideCommand: tutti decide applies an operator's decision and
// refuses one that a participant contradicts. Tids no participant has seen
// stand in for stuck ones here (the stuck case itself is
// memnode/service's TestRecoverRefusesTidPastHorizon): aborting one fences
// every participant; committing one is refused, since a participant that
// never voted OK proves it cannot have committed; and once aborted, a
// commit of the same tid is refused too.
func TestDecideCommand(t *testing.T) {
	c := testCluster(t)
	seed := "--seed=" + c.Seeds()[0]
	now := time.Now().UnixNano()
	code := func(err error) int {
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		if err != nil {
			return -1
		}
		return 0
	}
	for _, args := range [][]string{
		{"decide", seed, "1.2", "--participants", "0,1", "--abort"},                                  // tid format
		{"decide", seed, fmt.Sprintf("7.1@%d", now), "--abort"},                                      // no participants
		{"decide", seed, fmt.Sprintf("7.1@%d", now), "--participants", "0,0", "--abort"},             // twice
		{"decide", seed, fmt.Sprintf("7.1@%d", now), "--participants", "0,1"},                        // neither
		{"decide", seed, fmt.Sprintf("7.1@%d", now), "--participants", "0,1", "--commit", "--abort"}, // both
	} {
		if out, err := run(t, args...); code(err) != 2 {
			t.Fatalf("%v: exit %d (%v), want 2\n%s", args[1:], code(err), err, out)
		}
	}
	tid := fmt.Sprintf("7.1@%d", now)
	out, err := run(t, "decide", seed, tid, "--participants", "0,1", "--abort")
	if err != nil || !strings.Contains(out, "aborted 7.1@") {
		t.Fatalf("abort: %q %v", out, err)
	}
	out, err = run(t, "decide", seed, tid, "--participants", "0,1", "--commit")
	if code(err) != 1 || !strings.Contains(err.Error(), "aborted according to its participants") {
		t.Fatalf("commit of an aborted tid: exit %d, %v\n%s", code(err), err, out)
	}
	if out, err = run(t, "decide", seed, tid, "--participants", "0,1", "--abort"); err != nil {
		t.Fatalf("abort again (it agrees): %q %v", out, err)
	}
	fresh := fmt.Sprintf("7.2@%d", now)
	out, err = run(t, "decide", seed, fresh, "--participants", "1,2", "--commit", "--json")
	if code(err) != 1 || !strings.Contains(err.Error(), "never voted OK") {
		t.Fatalf("commit of a tid nobody prepared: exit %d, %v\n%s", code(err), err, out)
	}
	// Older than the horizon everywhere: nobody holds it, nothing to decide.
	old := fmt.Sprintf("7.3@%d", now-int64(10*time.Minute))
	out, err = run(t, "decide", seed, old, "--participants", "0,2", "--commit")
	if code(err) != 1 || !strings.Contains(err.Error(), "nothing to decide") {
		t.Fatalf("decide a forgotten tid: exit %d, %v\n%s", code(err), err, out)
	}
	// Dated far in the future: the memnodes reject the request itself.
	future := fmt.Sprintf("7.4@%d", now+int64(time.Hour))
	out, err = run(t, "decide", seed, future, "--participants", "0,2", "--abort")
	if code(err) != 2 {
		t.Fatalf("decide a tid from the future: exit %d, %v\n%s", code(err), err, out)
	}
}

// `memnode add` without --replicas never places a memnode on hosts that do
// not answer, and refuses (exit 2, nothing changed) when too few answer;
// --wait on a memnode that cannot elect a leader fails at --timeout and
// says so.
func TestMemnodeAddSkipsDownHosts(t *testing.T) {
	// Memnode 0 on hosts 1-3, host 4 holds nothing.
	c := testClusterWith(t, cluster.Config{Hosts: 4, Spares: 1, Memnodes: 1, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}
	seed := "--seed=" + c.Seeds()[0]
	// Hosts 3 and 4 stop: hosts 1 and 2 answer, 3 replicas wanted.
	for _, i := range []int{2, 3} {
		if err := c.StopHost(i); err != nil {
			t.Fatal(err)
		}
	}
	out, err := run(t, "memnode", "add", seed)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "too few answering hosts") {
		t.Fatalf("memnode add with 2 answering hosts for 3 replicas: %v\n%s", err, out)
	}
	out, err = run(t, "memnodes", seed, "--json")
	var got memnodesJSON
	if err != nil || json.Unmarshal([]byte(out), &got) != nil || len(got.Memnodes) != 1 {
		t.Fatalf("after the refused add: %v\n%s", err, out)
	}

	out, err = run(t, "memnode", "add", seed, "--replicas", "3,4", "--wait", "--timeout", "3s")
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "no Raft leader") {
		t.Fatalf("memnode add --wait on stopped hosts: %v\n%s", err, out)
	}
}
