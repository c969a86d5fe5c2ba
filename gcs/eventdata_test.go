package gcs_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/gcs"
)

// Members that did not send deliver from the data the watch events carry
// instead of reading the order log, inline batches and queued ones (whose
// blobs they still read) alike, in the same order as the sender.
func TestDeliveryFromWatchData(t *testing.T) {
	testDeliveryWatch(t, true)
}

// Without data in the events, the same exchange is delivered by reading
// the order log after each notification.
func TestDeliveryWithoutWatchData(t *testing.T) {
	t.Cleanup(gcs.SetWatchData(false))
	testDeliveryWatch(t, false)
}

func testDeliveryWatch(t *testing.T, withData bool) {
	e := newEnv(t)
	const members, per = 3, 30
	var ms []*member
	for i := 0; i < members; i++ {
		ms = append(ms, e.join(e.node(fmt.Sprintf("p%d", i)), "g"))
	}
	waitUntil(t, 20*time.Second, "everyone in the 3-member view", func() bool {
		for _, m := range ms {
			if v := m.lastView(); v == nil || len(v.Members) != members {
				return false
			}
		}
		return true
	})
	before, beforeRd := make([]int64, members), make([]int64, members)
	for i, m := range ms {
		before[i], beforeRd[i] = gcs.DeliveryCounts(m.g)
	}
	// One sender at a time, one message per link: the others learn of
	// each link from a watch event.
	if err := ms[0].send(per/2, 64); err != nil {
		t.Fatal(err)
	}
	if err := ms[1].send(per/2, 3000); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "all messages delivered", func() bool {
		for _, m := range ms {
			if m.delivered() < per {
				return false
			}
		}
		return true
	})
	for _, m := range ms[1:] {
		sameOrder(t, ms[0], m)
	}
	for i, m := range ms {
		ev, rd := gcs.DeliveryCounts(m.g)
		t.Logf("%s: %d deliveries from watch data, %d log reads", m.name, ev-before[i], rd-beforeRd[i])
	}
	// ms[2] sent nothing: it learns of every link from a watch event (or
	// from the 100 ms backup poll, if it fires first).
	ev, rd := gcs.DeliveryCounts(ms[2].g)
	switch {
	case withData && ev-before[2] < per/2:
		t.Fatalf("%s delivered %d times from watch data, want most of %d links", ms[2].name, ev-before[2], per)
	case !withData && (ev != 0 || rd-beforeRd[2] == 0):
		t.Fatalf("%s without data: %d deliveries from watch data, %d reads", ms[2].name, ev, rd-beforeRd[2])
	}
	for _, m := range ms {
		m.leave()
	}
	e.check()
}
