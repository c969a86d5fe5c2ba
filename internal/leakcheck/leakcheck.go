// Package leakcheck is goleak.VerifyTestMain with a longer wait, for test
// binaries that run memberlist.
//
// memberlist's Shutdown does not wait for a probe in flight: the probing
// goroutine (Memberlist.probeNode) ends by itself once its ack timer fires,
// up to the probe interval times the awareness multiplier later (1.6 s with
// membership's defaults, more on a loaded machine). goleak's own retries
// give up within half a second (0.45 s here), so a probe that was in flight when the last test
// shut its node down was now and then reported as a leak (the gcs
// virtual-synchrony test, 2026-12-03). Main waits up to Wait for such
// goroutines to end and reports what is still running after it: a goroutine
// that never ends still fails the binary.
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
