package gcs_test

import (
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// TestLinkInTransitWhenSettledIsOrderedOnce: a link's answer is lost while
// the request is still on its way to the home memnode's leader. The
// settling read, though logged, is then ordered before the link: it sees
// "not committed", the link arrives and commits right after it (nothing
// else moved the tail), and the sender, told "not committed", links the
// batch again: every member delivered it twice. The settling read now
// fences the attempt, which the memnode then refuses.
func TestLinkInTransitWhenSettledIsOrderedOnce(t *testing.T) {
	e := newEnv(t)
	// No housekeeping (it writes to the home memnode too): the request
	// taken aside is the link's.
	ms, transit := e.joinPairThroughTransit("g", gcs.Config{GCInterval: time.Hour})
	gi := describe(t, e.node("obs"), "g", "the group", func(gcs.GroupInfo) bool { return true })
	transit.Arm(gi.Home)
	fired, restore := gcs.UnknownWhen("link", func() error {
		if tid, ok := transit.Held(); ok {
			return &client.Error{Memnode: gi.Home, Err: client.ErrUnknownOutcome, Detail: "taken aside", TID: tid}
		}
		return nil
	})
	defer restore()
	var once sync.Once
	restoreRead := gcs.AfterSettleRead(func() {
		once.Do(func() {
			if err := transit.Release(); err != nil {
				t.Error(err)
			}
		})
	})
	defer restoreRead()
	e.linkOnceThrough(ms, fired, restore)
	if _, ok := transit.Held(); !ok {
		t.Fatal("no link was taken aside")
	}
}
