package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
)

// Transit is a client transport for tests that takes one request aside on
// its way to the memnodes (as a socket buffer or a slow server would hold
// it) and sends it when told: an attempt still in transit when its caller
// gave up on it. Pass DialOption in client.Config.DialOptions (with the
// transport credentials, which a non-empty list must then name), Arm it,
// and Release what it took.
type Transit struct {
	mu       sync.Mutex
	armed    bool
	pass     bool // Watch: record the request, send it on
	memnode  uint64
	match    func(*tuttipb.Request) bool // if set, which request to take
	held     *tuttipb.Request
	stream   *transitStream
	answered chan struct{}  // closed when the held request was answered
	fences   map[uint64]int // requests with fences sent, per memnode
}

// NewTransit returns a Transit that holds nothing until armed.
func NewTransit() *Transit {
	return &Transit{answered: make(chan struct{}), fences: map[uint64]int{}}
}

// Fences returns how many requests carrying fences (client.Tx.Fence: the
// steps that settle attempts) the client sent to memnode through t.
func (t *Transit) Fences(memnode uint64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fences[memnode]
}

// DialOption installs t on a client's connections.
func (t *Transit) DialOption() grpc.DialOption { return grpc.WithStreamInterceptor(t.intercept) }

// Arm takes the next one-phase request with writes or appends on memnode aside (once).
func (t *Transit) Arm(memnode uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.armed, t.memnode = true, memnode
}

// Watch records the next one-phase request with writes or appends on memnode (once)
// and lets it go on: Held then names it, so a test that makes its caller
// hear an unknown outcome can name the attempt as the client would.
// Release has nothing to send.
func (t *Transit) Watch(memnode uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.armed, t.pass, t.memnode = true, true, memnode
}

// ArmFunc takes the next one-phase request with writes or appends on memnode for
// which match reports true aside (once).
func (t *Transit) ArmFunc(memnode uint64, match func(*tuttipb.Request) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.armed, t.memnode, t.match = true, memnode, match
}

// HeldRequest returns a copy of the held request, nil if none.
func (t *Transit) HeldRequest() *tuttipb.Request {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.held == nil {
		return nil
	}
	return proto.Clone(t.held).(*tuttipb.Request)
}

// Held returns the held request's tid, once a request was taken aside (or
// recorded: Watch).
func (t *Transit) Held() (client.TID, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.held == nil {
		return client.TID{}, false
	}
	w := t.held.GetTid()
	return client.TID{Client: w.GetClient(), Seq: w.GetSeq(), Time: w.GetTime()}, true
}

// Release sends the held request and waits (at most 10 s) for the
// memnode's answer to it, which goes to the request's caller, if it still
// waits.
func (t *Transit) Release() error {
	t.mu.Lock()
	held, s := t.held, t.stream
	t.mu.Unlock()
	if held == nil || s == nil {
		return errors.New("transit: nothing held")
	}
	s.send.Lock()
	err := s.ClientStream.SendMsg(&tuttipb.RequestBatch{Requests: []*tuttipb.Request{held}})
	s.send.Unlock()
	if err != nil {
		return fmt.Errorf("transit: sending the held request: %w", err)
	}
	select {
	case <-t.answered:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("transit: the held request was not answered within 10 s")
	}
}

func (t *Transit) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &transitStream{ClientStream: s, t: t}, nil
}

type transitStream struct {
	grpc.ClientStream
	t    *Transit
	send sync.Mutex // SendMsg is not safe for concurrent use
}

func (s *transitStream) SendMsg(m any) error {
	if b, ok := m.(*tuttipb.RequestBatch); ok {
		t := s.t
		t.mu.Lock()
		for _, r := range b.GetRequests() {
			if len(r.GetFenceTids()) > 0 {
				t.fences[r.GetMemnode()]++
			}
		}
		if t.armed {
			for i, r := range b.GetRequests() {
				if (r.GetKind() == tuttipb.Kind_KIND_EXEC || r.GetKind() == tuttipb.Kind_KIND_EXEC_APPEND) && r.GetMemnode() == t.memnode && len(r.GetWrites())+len(r.GetAppends()) > 0 &&
					(t.match == nil || t.match(r)) {
					t.armed, t.held = false, proto.Clone(r).(*tuttipb.Request)
					if !t.pass {
						t.stream = s
						m = &tuttipb.RequestBatch{Requests: slices.Delete(slices.Clone(b.GetRequests()), i, i+1)}
					}
					break
				}
			}
		}
		t.mu.Unlock()
		if len(m.(*tuttipb.RequestBatch).GetRequests()) == 0 {
			return nil
		}
	}
	s.send.Lock()
	defer s.send.Unlock()
	return s.ClientStream.SendMsg(m)
}

func (s *transitStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if b, ok := m.(*tuttipb.ResponseBatch); ok && err == nil {
		t := s.t
		t.mu.Lock()
		for _, r := range b.GetResponses() {
			if t.held != nil && t.stream == s && r.GetId() == t.held.GetId() {
				select {
				case <-t.answered:
				default:
					close(t.answered)
				}
			}
		}
		t.mu.Unlock()
	}
	return err
}
