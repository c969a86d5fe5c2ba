package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
	"github.com/tutti-gcs/tutti/membership"
)

// logLines decodes the JSON lines of a zerolog buffer.
func logLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// awaitAgent waits up to d for a server agent's start goroutine to end.
func awaitAgent(t *testing.T, a *serverAgent, d time.Duration) {
	t.Helper()
	select {
	case <-a.done:
	case <-time.After(d):
		t.Fatalf("the membership agent's start did not end within %v", d)
	}
}

// A server whose membership agent cannot start, for a reason time does not
// fix (here a table config memberStart refuses), says so in its log at
// error level; it used to return silently, and the host ran on without
// its agent and without a word.
func TestServerAgentStartFailureIsLogged(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 1})
	buf := &syncbuf.Buffer{}
	cfg := membership.Config{ID: "host-1", Bind: "127.0.0.1:0",
		Table: membership.TableConfig{Memnode: 0, Base: membership.DefaultTable.Base, MaxRows: 5000, LogSize: 64}}
	seed := c.Seeds()[0]
	a := startServerAgent(zerolog.New(buf), cfg, nil, seed, map[uint64]string{1: seed}, 0, nil)
	defer a.stop()
	awaitAgent(t, a, 30*time.Second)
	if a.node != nil {
		t.Fatal("the agent started with an invalid table config")
	}
	for _, l := range logLines(t, buf.String()) {
		if l["level"] == "error" && strings.Contains(l["error"].(string), "MaxRows") &&
			strings.Contains(l["message"].(string), "did not start") && l["process"] == "host-1" {
			return
		}
	}
	t.Fatalf("no error-level log line says the agent did not start and why; the log:\n%s", buf)
}

// A host stopped while its agent is still starting (here: waiting for a
// gossip seed that never comes up) abandons the start without an error in
// its log: that is a shutdown, not a failure.
func TestServerAgentStopWhileStartingIsQuiet(t *testing.T) {
	c := testClusterWith(t, cluster.Config{Memnodes: 1})
	// A seed nobody listens on (TCP): the start waits for it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	buf := &syncbuf.Buffer{}
	cfg := membership.Config{ID: "host-1", Bind: "127.0.0.1:0"}
	seed := c.Seeds()[0]
	a := startServerAgent(zerolog.New(buf), cfg, []string{down}, seed, map[uint64]string{1: seed}, time.Hour, nil)
	poll(t, 30*time.Second, "wait for the gossip seed in the log", func() bool {
		return strings.Contains(buf.String(), "waiting for a gossip seed")
	})
	a.stop()
	awaitAgent(t, a, time.Second) // stop waited for it
	if a.node != nil {
		t.Fatal("the agent started without a seed")
	}
	var abandoned bool
	for _, l := range logLines(t, buf.String()) {
		if l["level"] == "error" {
			t.Fatalf("error logged on a stop during the start: %v\nthe log:\n%s", l, buf)
		}
		abandoned = abandoned || l["level"] == "debug" && strings.Contains(l["message"].(string), "abandoned")
	}
	if !abandoned {
		t.Fatalf("no debug line says the start was abandoned; the log:\n%s", buf)
	}
}
