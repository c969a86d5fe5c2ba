package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/examples/kv/kvstore"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// startCluster starts an embedded cluster without fsync, closed with the
// test, and waits until it serves.
func startCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	c, err := cluster.Start(cluster.Config{NoSync: true, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestHTTP drives the front ends of two replicas: a write through one is
// read back from it, and both report the same state.
func TestHTTP(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var srvs []*httptest.Server
	for _, id := range []string{"a", "b"} {
		n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: id})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		r, err := kvstore.Join(ctx, n, "kv", kvstore.Config{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Leave(ctx)
		s := httptest.NewServer(handler(r))
		defer s.Close()
		srvs = append(srvs, s)
	}
	call := func(s *httptest.Server, method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, s.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	a, b := srvs[0], srvs[1]
	steps := []struct {
		s                  *httptest.Server
		method, path, body string
		code               int
		want               string
	}{
		{a, "PUT", "/greeting", "hello", 204, ""},
		{a, "GET", "/greeting", "", 200, "hello"},
		{a, "GET", "/missing", "", 404, "404 page not found\n"},
		{b, "POST", "/hits?incr=5", "", 200, "5\n"},
		{b, "POST", "/hits", "", 200, "6\n"},
		{b, "POST", "/greeting", "", 409, "kv: value is not an integer\n"},
		{b, "PUT", "/dir/key", "nested", 204, ""},
		{b, "GET", "/dir/key", "", 200, "nested"},
		{b, "DELETE", "/dir/key", "", 204, ""},
		{b, "DELETE", "/dir/key", "", 404, "404 page not found\n"},
		{a, "GET", "/hits", "", 200, ""}, // a may lag b: checked below
	}
	for _, st := range steps {
		code, got := call(st.s, st.method, st.path, st.body)
		if code != st.code || (st.want != "" && got != st.want) {
			t.Fatalf("%s %s: %d %q, want %d %q", st.method, st.path, code, got, st.code, st.want)
		}
	}
	// b's last write is applied at b; wait until a reached the same
	// position, then the digests must match.
	var sa, sb kvstore.State
	_, body := call(b, "GET", "/_state", "")
	if err := json.Unmarshal([]byte(body), &sb); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for sa.Pos < sb.Pos {
		_, body := call(a, "GET", "/_state", "")
		if err := json.Unmarshal([]byte(body), &sa); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a stuck at %+v, b at %+v", sa, sb)
		case <-tick.C:
		}
	}
	if sa.Pos != sb.Pos || sa.Digest != sb.Digest || sa.Keys != 2 || len(sa.Members) != 2 {
		t.Fatalf("states differ: a %+v, b %+v", sa, sb)
	}
}

// A --listen address that cannot be served was found only after the
// replica had joined the group (a view change and a state transfer at
// every replica) and state-transferred; it must fail before joining. A
// stray argument ('kv 127.0.0.1:8082' for --listen) was ignored.
func TestBadCommandLineJoinsNothing(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	seed := "--seed=" + strings.Join(c.Seeds(), ",")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{seed, "--listen", busy.Addr().String()}, "--listen"},
		{[]string{seed, "--listen", "nonsense"}, "--listen"},
		{[]string{seed, "--listen", "127.0.0.1:0", "127.0.0.1:8082"}, `unexpected argument "127.0.0.1:8082"`},
	} {
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		err := run(rctx, rcancel, tc.args, io.Discard)
		rcancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("kv %s: %v, want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: "inspector"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if gi, err := n.Describe(ctx, "kv"); !errors.Is(err, gcs.ErrNoGroup) {
		t.Fatalf("after failed starts the group exists: %+v %v", gi, err)
	}
}

// A replica removed from the group (*Evicted) went on serving: GETs
// answered from a map no longer kept up to date, writes failed with 503,
// and the process never exited. It must stop and say why.
func TestEvictedReplicaExits(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- run(rctx, stop, []string{"--seed=" + strings.Join(c.Seeds(), ","), "--listen", "127.0.0.1:0", "--name", "doomed"}, io.Discard)
	}()

	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// Wait for the replica's join, then join and remove it.
	var victim string
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for victim == "" {
		if gi, err := n.Describe(ctx, "kv"); err == nil && len(gi.Members) == 1 {
			victim = gi.Members[0].Name
		}
		select {
		case err := <-done:
			t.Fatalf("kv ended before joining: %v", err)
		case <-ctx.Done():
			t.Fatal("kv did not join")
		case <-tick.C:
		}
	}
	g, err := n.Join(ctx, "kv", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range g.Events() {
		}
	}()
	defer g.Leave(ctx)
	if err := g.Remove(ctx, victim); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, gcs.ErrEvicted) {
			t.Fatalf("the evicted replica ended with %v, want gcs.ErrEvicted", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the evicted replica still runs 20 s after its removal")
	}
}
