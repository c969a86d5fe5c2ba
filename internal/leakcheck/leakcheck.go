package leakcheck

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Wait bounds how long Main waits for goroutines to end after the tests.
const Wait = 15 * time.Second

// Main runs the tests, then fails the binary if goroutines other than the
// test framework's still run Wait later.
func Main(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	if code != 0 {
		os.Exit(code)
	}
	deadline := time.Now().Add(Wait)
	for {
		err := goleak.Find(opts...)
		if err == nil {
			os.Exit(0)
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "leakcheck: goroutines still running %v after the tests: %v\n", Wait, err)
			os.Exit(1)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
