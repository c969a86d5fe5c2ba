package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
)

// TestSendTail: `tail --json --count` receives, in order, what two `send`
// runs sent (arguments, then stdin lines), after its own join view.
func TestSendTail(t *testing.T) {
	c := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	seed := "--seed=" + c.Seeds()[0]

	var tailOut syncbuf.Buffer
	tailDone := make(chan error, 1)
	go func() {
		root := newRoot()
		root.SetOut(&tailOut)
		root.SetErr(&tailOut)
		root.SetArgs([]string{"tail", "lobby", seed, "--json", "--count", "6", "--id", "tailer", "--log-level", "warn"})
		tailDone <- root.ExecuteContext(ctx)
	}()
	// Wait for tail's join view before sending: a member delivers only what
	// is ordered after it joined.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(tailOut.String(), `"type":"view"`) {
		select {
		case err := <-tailDone:
			t.Fatalf("tail ended before joining: %v\n%s", err, tailOut.String())
		case <-ctx.Done():
			t.Fatalf("tail did not join: %s", tailOut.String())
		case <-tick.C:
		}
	}

	if out, err := run(t, "send", "lobby", "one", "two", "three", seed, "--id", "alice", "--log-level", "warn"); err != nil {
		t.Fatalf("send args: %v\n%s", err, out)
	}
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader("four\n\nfive\n"))
	root.SetArgs([]string{"send", "lobby", seed, "--id", "bob", "--log-level", "warn"})
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("send stdin: %v\n%s", err, out.String())
	}

	select {
	case err := <-tailDone:
		if err != nil {
			t.Fatalf("tail: %v\n%s", err, tailOut.String())
		}
	case <-ctx.Done():
		t.Fatalf("tail did not end after 6 messages:\n%s", tailOut.String())
	}

	var msgs []tailEvent
	var views int
	for i, line := range strings.Split(strings.TrimSpace(tailOut.String()), "\n") {
		var ev tailEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %d %q: %v", i, line, err)
		}
		switch ev.Type {
		case "view":
			if i == 0 && (ev.Reason != "join" || len(ev.Members) == 0 || !strings.HasPrefix(ev.Members[len(ev.Members)-1], "tailer#")) {
				t.Errorf("first line is not tail's join view: %s", line)
			}
			views++
		case "message":
			msgs = append(msgs, ev)
		default:
			t.Errorf("unexpected line %s", line)
		}
	}
	want := []struct{ payload, sender string }{{"one", "alice#"}, {"two", "alice#"}, {"three", "alice#"}, {"four", "bob#"}, {"", "bob#"}, {"five", "bob#"}}
	if len(msgs) != len(want) {
		t.Fatalf("got %d messages, want %d:\n%s", len(msgs), len(want), tailOut.String())
	}
	for i, m := range msgs {
		if m.Payload != want[i].payload || !strings.HasPrefix(m.Sender, want[i].sender) {
			t.Errorf("message %d: %q from %s, want %q from %s*", i, m.Payload, m.Sender, want[i].payload, want[i].sender)
		}
		if i > 0 && m.Pos <= msgs[i-1].Pos {
			t.Errorf("message %d: pos %d after %d", i, m.Pos, msgs[i-1].Pos)
		}
	}
	// alice joined, sent, left; bob joined: views between the messages.
	if views < 3 {
		t.Errorf("%d views, want tail's join, alice's join and leave, bob's join:\n%s", views, tailOut.String())
	}
}

func TestPrintEventText(t *testing.T) {
	var b bytes.Buffer
	printEvent(&b, &gcs.View{ID: 2, Members: []string{"a#1", "b#2"}, Joined: []string{"b#2"}, Reason: "join"}, false)
	printEvent(&b, &gcs.Message{View: 2, Pos: 7, Sender: "b#2", Seq: 1, Payload: []byte("hi")}, false)
	printEvent(&b, &gcs.Message{View: 2, Pos: 8, Sender: "b#2", Seq: 2, Payload: []byte{0xff}}, false)
	printEvent(&b, &gcs.Message{View: 2, Pos: 8, Sender: "b#2", Seq: 2, Payload: []byte{0xff}}, true)
	want := "* view 2: a#1, b#2 (join: +b#2)\n" +
		"[view 2 #7] b#2: hi\n" +
		"[view 2 #8] b#2: base64:/w==\n" +
		`{"type":"message","view":2,"pos":8,"sender":"b#2","seq":2,"payload_base64":"/w=="}` + "\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// TestGroupCommand: `tutti group` reports a missing group with exit status
// 1 and without creating it, and shows a group's members, messages and log
// (after `tutti send` left an otherwise empty group, nothing is left to
// reclaim).
func TestGroupCommand(t *testing.T) {
	c := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	seed := "--seed=" + c.Seeds()[0]
	for range 2 { // the first run must not have created it
		out, err := run(t, "group", "lobby", seed, "--log-level", "warn")
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), `no group "lobby"`) {
			t.Fatalf("group of a missing group: %q %v", out, err)
		}
	}
	if out, err := run(t, "send", "lobby", "one", "two", seed, "--log-level", "warn"); err != nil {
		t.Fatalf("send: %q %v", out, err)
	}
	out, err := run(t, "group", "lobby", seed, "--json", "--log-level", "warn")
	if err != nil {
		t.Fatalf("group --json: %q %v", out, err)
	}
	var gi groupInfoJSON
	if err := json.Unmarshal([]byte(out), &gi); err != nil {
		t.Fatalf("group --json output %q: %v", out, err)
	}
	if gi.Name != "lobby" || gi.Msgs != 2 || gi.View == 0 || len(gi.Members) != 0 || len(gi.Retired) != 0 || gi.Head != gi.Tail {
		t.Fatalf("group --json after a send left: %+v", gi)
	}

	out, err = run(t, "groups", seed, "--json", "--log-level", "warn")
	var all []groupInfoJSON
	if err != nil || json.Unmarshal([]byte(out), &all) != nil || len(all) != 1 || all[0].Name != "lobby" || all[0].Msgs != 2 {
		t.Fatalf("groups --json: %q %v", out, err)
	}

	// With a member in the view: the text forms list it.
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: "watcher"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g, err := n.Join(ctx, "lobby", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range g.Events() {
		}
	}()
	out, err = run(t, "group", "lobby", seed, "--log-level", "warn")
	if err != nil || !strings.Contains(out, "view 3, 2 messages ordered") || !strings.Contains(out, g.Name()) || !strings.Contains(out, "members, oldest first:") {
		t.Fatalf("group with a member: %q %v", out, err)
	}
	out, err = run(t, "groups", seed, "--log-level", "warn")
	if err != nil || !regexp.MustCompile(`(?m)^lobby +\d+ +3 +1 +2 `).MatchString(out) {
		t.Fatalf("groups: %q %v", out, err)
	}
	out, err = run(t, "group", "lobby", "--delete", seed, "--log-level", "warn")
	if ee := (*exitError)(nil); !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "not empty") || !strings.Contains(err.Error(), g.Name()) {
		t.Fatalf("group --delete with a member: %q %v", out, err)
	}
	if err := g.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err = run(t, "group", "lobby", "--delete", seed, "--log-level", "warn"); err != nil || out != "deleted group lobby\n" {
		t.Fatalf("group --delete: %q %v", out, err)
	}
	for _, args := range [][]string{{"group", "lobby"}, {"group", "lobby", "--delete"}} {
		out, err = run(t, append(args, seed, "--log-level", "warn")...)
		if ee := (*exitError)(nil); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), `no group "lobby"`) {
			t.Fatalf("%v after the delete: %q %v", args, out, err)
		}
	}
	if out, err = run(t, "groups", seed, "--json", "--log-level", "warn"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("groups after the delete: %q %v", out, err)
	}
}

// 'tutti send' reading standard input caught SIGINT/SIGTERM but went on
// waiting for the next line: Ctrl-C did not stop it, only end of input
// did. An interrupt while it waits for input ends it as end of input
// does: it leaves the group and exits 0, like tail.
func TestSendStopsOnInterruptWhileReading(t *testing.T) {
	c := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
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

	in, typing := io.Pipe()
	defer typing.Close()
	sctx, interrupt := context.WithCancel(ctx) // what a signal does to send's context
	defer interrupt()
	done := make(chan error, 1)
	var out syncbuf.Buffer
	go func() {
		root := newRoot()
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetIn(in)
		root.SetArgs([]string{"send", "typed", "--seed=" + c.Seeds()[0], "--id", "typist", "--log-level", "warn"})
		done <- root.ExecuteContext(sctx)
	}()
	if _, err := io.WriteString(typing, "one\n"); err != nil {
		t.Fatal(err)
	}
	// Interrupt once "one" is ordered: send then waits for the next line.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		gi, err := n.Describe(ctx, "typed")
		if err == nil && gi.Msgs == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the line was not sent: %+v %v\n%s", gi, err, out.String())
		case <-tick.C:
		}
	}
	interrupt()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("interrupted send: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("send still waits for input 20 s after the interrupt")
	}
	gi, err := n.Describe(ctx, "typed")
	if err != nil || gi.Msgs != 1 || len(gi.Members) != 0 {
		t.Fatalf("after the interrupt: %+v %v, want the one message sent and no member left", gi, err)
	}
}
