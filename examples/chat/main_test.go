package main

import (
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
)

func TestFormat(t *testing.T) {
	cases := []struct {
		ev   gcs.Event
		want string
	}{
		{&gcs.Message{View: 3, Sender: "alice#2", Payload: []byte("hi")}, "[view 3] alice: hi\n"},
		{&gcs.View{ID: 3, Members: []string{"alice#2", "bob#5"}, Joined: []string{"bob#5"}, Reason: "join"},
			"* bob joined (view 3: alice, bob)\n"},
		{&gcs.View{ID: 4, Members: []string{"alice#2"}, Left: []string{"bob#5"}, Reason: "left"},
			"* bob left (view 4: alice)\n"},
		{&gcs.View{ID: 5, Members: []string{"alice#2"}, Left: []string{"bob#5"}, Reason: "failed"},
			"* bob failed (view 5: alice)\n"},
		{&gcs.View{ID: 6, Members: []string{"alice#2", "carol#9"}, Joined: []string{"carol#9"}, Left: []string{"bob#5"}, Reason: "join"},
			"* carol joined (view 6: alice, carol)\n* bob failed (view 6: alice, carol)\n"},
		{&gcs.View{ID: 7, Members: []string{"alice#2"}, Left: []string{"carol#9"}, Reason: "removed by alice#2"},
			"* carol was removed by alice (view 7: alice)\n"},
	}
	for _, tc := range cases {
		if got := format(tc.ev); got != tc.want {
			t.Errorf("format(%+v) = %q, want %q", tc.ev, got, tc.want)
		}
	}
}

// user is one running chat.
type user struct {
	out    syncbuf.Buffer
	in     *io.PipeWriter
	cancel context.CancelFunc
	done   chan error
}

func startChat(ctx context.Context, seed, name string) *user {
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	u := &user{in: w, cancel: cancel, done: make(chan error, 1)}
	go func() { u.done <- run(ctx, config{seed: seed, name: name, group: "lobby"}, r, &u.out) }()
	return u
}

// waitFor waits until u printed a line matching re.
func (u *user) waitFor(t *testing.T, ctx context.Context, re string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !rx.MatchString(u.out.String()) {
		select {
		case err := <-u.done:
			t.Fatalf("chat ended (%v) before printing %q:\n%s", err, re, u.out.String())
		case <-ctx.Done():
			t.Fatalf("no %q in:\n%s", re, u.out.String())
		case <-tick.C:
		}
	}
}

func (u *user) wait(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case err := <-u.done:
		if err != nil {
			t.Fatalf("chat: %v\n%s", err, u.out.String())
		}
	case <-ctx.Done():
		t.Fatalf("chat did not end:\n%s", u.out.String())
	}
}

// TestChat: two chats see each other join, exchange lines, and see a
// leave on end of input and on cancellation (Ctrl-C).
func TestChat(t *testing.T) {
	c, err := cluster.Start(cluster.Config{NoSync: true, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	seed := c.Seeds()[0]

	alice := startChat(ctx, seed, "alice")
	defer alice.in.Close()
	alice.waitFor(t, ctx, `(?m)^\* alice joined \(view \d+: alice\)$`)
	bob := startChat(ctx, seed, "bob")
	defer bob.in.Close()
	alice.waitFor(t, ctx, `(?m)^\* bob joined \(view \d+: alice, bob\)$`)
	bob.waitFor(t, ctx, `(?m)^\* bob joined \(view \d+: alice, bob\)$`)

	if _, err := io.WriteString(alice.in, "hello bob\n\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(bob.in, "hi alice\n"); err != nil {
		t.Fatal(err)
	}
	for _, u := range []*user{alice, bob} {
		u.waitFor(t, ctx, `(?m)^\[view \d+\] alice: hello bob$`)
		u.waitFor(t, ctx, `(?m)^\[view \d+\] bob: hi alice$`)
	}

	bob.in.Close() // end of input: bob leaves
	bob.wait(t, ctx)
	alice.waitFor(t, ctx, `(?m)^\* bob left \(view \d+: alice\)$`)
	alice.cancel() // Ctrl-C
	alice.wait(t, ctx)

	// Both saw the same messages in the same order.
	msgs := regexp.MustCompile(`(?m)^\[view \d+\] .*$`)
	a, b := msgs.FindAllString(alice.out.String(), -1), msgs.FindAllString(bob.out.String(), -1)
	if len(a) != 2 || len(b) != 2 || a[0] != b[0] || a[1] != b[1] {
		t.Errorf("different messages:\nalice: %q\nbob: %q", a, b)
	}
}

// 'chat alice' ignored its argument and joined as $USER; a stray argument
// must be refused.
func TestParseFlagsRefusesArguments(t *testing.T) {
	if _, err := parseFlags([]string{"alice"}, io.Discard); err == nil || !strings.Contains(err.Error(), `unexpected argument "alice"`) {
		t.Fatalf("chat alice: %v", err)
	}
	cfg, err := parseFlags([]string{"--name", "bob", "--group", "room"}, io.Discard)
	if err != nil || cfg.name != "bob" || cfg.group != "room" {
		t.Fatalf("chat --name bob --group room: %+v %v", cfg, err)
	}
}
