package main

import (
	"errors"
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
		{"bench", "mtxx"},
	} {
		_, err := run(t, args...)
		wantExit2(t, strings.Join(args, " "), err, "unknown command", args[1])
	}
	for _, args := range [][]string{{"memnode"}, {"replica"}, {"bench"}} {
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
