// Package leakcheck is goleak.VerifyTestMain with a longer wait, for test
// binaries that run memberlist. It owns only that check: it runs the
// tests, then looks for goroutines still running; it must not hide a
// goroutine that never ends.
//
// memberlist's Shutdown does not wait for a probe in flight: the probing
// goroutine (Memberlist.probeNode) ends by itself once its ack timer fires,
// up to the probe interval times the awareness multiplier later (1.6 s with
// membership's defaults, more on a loaded machine). goleak's own retries
// give up within half a second (0.45 s here), so a probe that was in
// flight when the last test shut its node down was now and then reported
// as a leak (the gcs virtual-synchrony test, 2026-12-03). Main waits up to
// Wait for such goroutines to end and reports what is still running after
// it: a goroutine that never ends still fails the binary.
//
// Use it as a test binary's TestMain:
//
//	func TestMain(m *testing.M) { leakcheck.Main(m) }
package leakcheck
