package gcs_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// transitHold is a client's transport that takes one request aside on its
// way to the memnode (as a socket buffer or a slow server would hold it)
// and sends it when told: an attempt still in transit.
type transitHold struct {
	mu       sync.Mutex
	armed    bool
	memnode  uint64
	held     *tuttipb.Request
	stream   *holdStream
	captured chan struct{} // closed when a request was taken aside
	answered chan struct{} // closed when the held request was answered
}

func newTransitHold() *transitHold {
	return &transitHold{captured: make(chan struct{}), answered: make(chan struct{})}
}

// arm takes the next one-phase request with writes on memnode aside.
func (h *transitHold) arm(memnode uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.armed, h.memnode = true, memnode
}

// tid returns the held request's tid, once there is one.
func (h *transitHold) tid() (client.TID, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		return client.TID{}, false
	}
	t := h.held.GetTid()
	return client.TID{Client: t.GetClient(), Seq: t.GetSeq(), Time: t.GetTime()}, true
}

// release sends the held request and waits for its answer.
func (h *transitHold) release(t *testing.T) {
	h.mu.Lock()
	held, s := h.held, h.stream
	h.mu.Unlock()
	if held == nil {
		t.Error("release: nothing held")
		return
	}
	s.send.Lock()
	err := s.ClientStream.SendMsg(&tuttipb.RequestBatch{Requests: []*tuttipb.Request{held}})
	s.send.Unlock()
	if err != nil {
		t.Errorf("sending the held request: %v", err)
		return
	}
	select {
	case <-h.answered:
	case <-time.After(10 * time.Second):
		t.Error("the held request was not answered within 10 s")
	}
}

func (h *transitHold) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &holdStream{ClientStream: s, h: h}, nil
}

type holdStream struct {
	grpc.ClientStream
	h    *transitHold
	send sync.Mutex // SendMsg is not safe for concurrent use
}

func (s *holdStream) SendMsg(m any) error {
	if b, ok := m.(*tuttipb.RequestBatch); ok {
		h := s.h
		h.mu.Lock()
		if h.armed {
			for i, r := range b.GetRequests() {
				if r.GetKind() == tuttipb.Kind_KIND_EXEC && r.GetMemnode() == h.memnode && len(r.GetWrites()) > 0 {
					h.armed, h.held, h.stream = false, proto.Clone(r).(*tuttipb.Request), s
					close(h.captured)
					m = &tuttipb.RequestBatch{Requests: slices.Delete(slices.Clone(b.GetRequests()), i, i+1)}
					break
				}
			}
		}
		h.mu.Unlock()
		if len(m.(*tuttipb.RequestBatch).GetRequests()) == 0 {
			return nil
		}
	}
	s.send.Lock()
	defer s.send.Unlock()
	return s.ClientStream.SendMsg(m)
}

func (s *holdStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if b, ok := m.(*tuttipb.ResponseBatch); ok && err == nil {
		h := s.h
		h.mu.Lock()
		for _, r := range b.GetResponses() {
			if h.held != nil && h.stream == s && r.GetId() == h.held.GetId() {
				select {
				case <-h.answered:
				default:
					close(h.answered)
				}
			}
		}
		h.mu.Unlock()
	}
	return err
}

// TestLinkInTransitWhenSettledIsOrderedOnce: a link's answer is lost while
// the request is still on its way to the home memnode's leader. The
// settling read, though logged, is then ordered before the link: it sees
// "not committed", the link arrives and commits right after it (nothing
// else moved the tail), and the sender, told "not committed", links the
// batch again: every member delivered it twice. The settling read now
// fences the attempt, which the memnode then refuses.
func TestLinkInTransitWhenSettledIsOrderedOnce(t *testing.T) {
	e := newEnv(t)
	hold := newTransitHold()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Seeds: e.c.Seeds(), DialOptions: []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(hold.intercept),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	// No housekeeping (it writes to the home memnode too): the request
	// taken aside is the link's.
	cfg := gcs.Config{GCInterval: time.Hour}
	m0 := e.join(e.nodeWith("p0", gcs.Config{GCInterval: time.Hour, Client: cl}), "g")
	m1 := e.join(e.nodeWith("p1", cfg), "g")
	ms := []*member{m0, m1}
	waitUntil(t, 20*time.Second, "both in the view", func() bool {
		v0, v1 := m0.lastView(), m1.lastView()
		return v0 != nil && v1 != nil && len(v0.Members) == 2 && len(v1.Members) == 2
	})
	gi := describe(t, e.node("obs"), "g", "the group", func(gcs.GroupInfo) bool { return true })
	hold.arm(gi.Home)
	fired, restore := gcs.UnknownWhen("link", func() error {
		if tid, ok := hold.tid(); ok {
			return &client.Error{Memnode: gi.Home, Err: client.ErrUnknownOutcome, Detail: "taken aside", TID: tid}
		}
		return nil
	})
	defer restore()
	var once sync.Once
	restoreRead := gcs.AfterSettleRead(func() { once.Do(func() { hold.release(t) }) })
	defer restoreRead()
	e.linkOnceThrough(ms, fired, restore)
	select {
	case <-hold.captured:
	default:
		t.Fatal("no link was taken aside")
	}
}
