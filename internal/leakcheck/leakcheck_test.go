package leakcheck

import (
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"
)

// The child mode: this binary run again with LEAKCHECK_CHILD set runs
// TestChild under Main, which leaves a goroutine running for the given
// duration ("forever": never ends).
func TestMain(m *testing.M) {
	if os.Getenv("LEAKCHECK_CHILD") == "" {
		os.Exit(m.Run())
	}
	Main(m)
}

var stopForever = make(chan struct{})

func TestChild(t *testing.T) {
	switch d := os.Getenv("LEAKCHECK_CHILD"); d {
	case "":
		t.Skip("only run as the child of TestMainWaitsForGoroutinesThatEnd")
	case "forever":
		go func() { <-stopForever }()
	default:
		dur, err := time.ParseDuration(d)
		if err != nil {
			t.Fatal(err)
		}
		go func() { time.Sleep(dur) }()
	}
}

func runChild(t *testing.T, lingers string) error {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChild$")
	cmd.Env = append(os.Environ(), "LEAKCHECK_CHILD="+lingers)
	out, err := cmd.CombinedOutput()
	t.Logf("child with a goroutine lingering %s: %v\n%s", lingers, err, out)
	return err
}

// A goroutine that ends after goleak's own retries (which give up within
// half a second: goleak.VerifyTestMain fails this child) but within Wait
// passes; one that never ends fails the binary.
func TestMainWaitsForGoroutinesThatEnd(t *testing.T) {
	if err := runChild(t, "4s"); err != nil {
		t.Fatalf("a goroutine ending 4 s after the tests failed the binary: %v", err)
	}
	if testing.Short() {
		return
	}
	var exit *exec.ExitError
	if err := runChild(t, "forever"); !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("a goroutine that never ends: child returned %v, want exit status 1", err)
	}
}
