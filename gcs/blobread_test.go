package gcs_test

import (
	"testing"

	"github.com/tutti-gcs/tutti/gcs"
)

// TestBlobReadsWaitOutAnUnavailableQueue: a receiver that cannot read a
// batch from its sender's queue for a while (the queue's memnode
// unavailable: an election, a partition) delivers it once the memnode
// answers again. Delivery used to give up after 20 tries, about three
// seconds, and evicted the member from a group that still had it.
func TestBlobReadsWaitOutAnUnavailableQueue(t *testing.T) {
	waitOutFailures(t, gcs.SiteBlob)
}

// TestQueueWritesWaitOutAnUnavailableQueue: a sender whose queue writes
// fail for a while (its queue's memnode unavailable) sends once the
// memnode answers again. The sender used to give up after 20 tries and
// end: Multicast failed, then and for the rest of the membership.
func TestQueueWritesWaitOutAnUnavailableQueue(t *testing.T) {
	waitOutFailures(t, gcs.SiteQueue)
}

// waitOutFailures has p0 multicast to p1 while the next 30 steps at site
// fail as unavailable (more than retry's 20), and checks that both
// deliver it, nobody is evicted, and the group goes on.
func waitOutFailures(t *testing.T, site string) {
	e := newEnv(t)
	ms := e.joinAllWith(2, "g", gcs.Config{InlineBytes: -1}) // every batch through a queue
	const fails = 30
	failed, restore := gcs.FailAt(site, fails)
	defer restore()
	sendAll(t, ms[:1], 1, 100)
	deliveredInOrder(t, ms, 1)
	if n := failed(); n != fails {
		t.Fatalf("%d steps at %s failed, want %d: the failpoint missed them", n, site, fails)
	}
	for _, m := range ms {
		m.mu.Lock()
		ev := m.evicted
		m.mu.Unlock()
		if ev != nil {
			t.Fatalf("%s evicted: %+v", m.name, ev)
		}
	}
	sendAll(t, ms, 2, 100)
	deliveredInOrder(t, ms, 5)
}
