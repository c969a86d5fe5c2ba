package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestStatusPage: /status shows the memnodes with their leaders and the
// groups with their views, as text and as JSON.
func TestStatusPage(t *testing.T) {
	c := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "send", "lobby", "hi", "--seed="+c.Seeds()[0], "--log-level", "warn"); err != nil {
		t.Fatalf("send: %q %v", out, err)
	}
	st := newStatusPage(c.Seeds(), nil, zerolog.Nop())
	defer st.Close()
	srv := httptest.NewServer(st)
	defer srv.Close()
	get := func(url string) string {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
		}
		return string(b)
	}
	text := get(srv.URL)
	for _, want := range []string{"MEMNODE", "LEADER", "1 groups", "lobby"} {
		if !strings.Contains(text, want) {
			t.Errorf("status page lacks %q:\n%s", want, text)
		}
	}
	var js statusJSON
	if err := json.Unmarshal([]byte(get(srv.URL+"?format=json")), &js); err != nil {
		t.Fatal(err)
	}
	if js.Memnodes == nil || len(js.Memnodes.Memnodes) == 0 || len(js.Memnodes.Hosts) != len(c.Hosts) || len(js.Errors) != 0 {
		t.Fatalf("status json memnodes: %+v, errors %q", js.Memnodes, js.Errors)
	}
	for _, m := range js.Memnodes.Memnodes {
		if m.Leader == 0 {
			t.Errorf("memnode %d without a leader on the status page", m.ID)
		}
	}
	if len(js.Groups) != 1 || js.Groups[0].Name != "lobby" || js.Groups[0].Msgs != 1 || js.Groups[0].View != 2 {
		t.Fatalf("status json groups: %+v", js.Groups)
	}
}
