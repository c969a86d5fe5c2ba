package client

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// deadStream is a Session stream whose server is already gone, but whose
// receiving side has not noticed yet: Send fails, Recv blocks until the
// stream's context ends.
type deadStream struct{ ctx context.Context }

func (s deadStream) Send(*tuttipb.RequestBatch) error { return io.EOF }
func (s deadStream) Recv() (*tuttipb.ResponseBatch, error) {
	<-s.ctx.Done()
	return nil, io.EOF
}
func (s deadStream) Header() (metadata.MD, error) { return nil, nil }
func (s deadStream) Trailer() metadata.MD         { return nil }
func (s deadStream) CloseSend() error             { return nil }
func (s deadStream) Context() context.Context     { return s.ctx }
func (s deadStream) SendMsg(any) error            { return io.EOF }
func (s deadStream) RecvMsg(any) error            { <-s.ctx.Done(); return io.EOF }

type deadServer struct{ tuttipb.MemnodeClient }

// execOn sends one Exec request through a conn to rpc and returns the conn
// and the answer.
func execOn(t *testing.T, rpc tuttipb.MemnodeClient) (*conn, *tuttipb.Response) {
	t.Helper()
	c := &conn{addr: "test", rpc: rpc, hooks: &decisionHooks{
		answered: func(*tuttipb.Response, uint64, []*tuttipb.Tid, []*tuttipb.Tid) {},
		stats:    &decisionStats{},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.do(ctx, &tuttipb.Request{Memnode: 0, Kind: tuttipb.Kind_KIND_EXEC})
	if err != nil {
		t.Fatal(err)
	}
	return c, r
}

func (deadServer) Session(ctx context.Context, _ ...grpc.CallOption) (grpc.BidiStreamingClient[tuttipb.RequestBatch, tuttipb.ResponseBatch], error) {
	return deadStream{ctx}, nil
}

// A request whose Send failed never left this process: it must be reported
// as not applied (retry-safe), not as an unknown outcome. Before, a leader
// that had just stopped turned a plain write into ErrUnknownOutcome when the
// client sent before noticing (TestLeaderCrashKeepsAcknowledgedWrites
// flaked so under load).
func TestFailedSendIsNotAnUnknownOutcome(t *testing.T) {
	c, r := execOn(t, deadServer{})
	if r.GetStatus() != tuttipb.Status_STATUS_UNAVAILABLE {
		t.Fatalf("status %v (%s), want STATUS_UNAVAILABLE: the request was never sent", r.GetStatus(), r.GetError())
	}
	c.mu.Lock()
	s := c.mu.stream
	c.mu.Unlock()
	<-s.done
}

// breakingStream loses its connection while a batch is being sent: Recv
// fails once Send has started, and Send returns (the batch handed to the
// transport) only after the session noticed the failure.
type breakingStream struct {
	deadStream
	sendStarted chan struct{}
}

func (s breakingStream) Send(*tuttipb.RequestBatch) error {
	close(s.sendStarted)
	<-s.ctx.Done() // the session's failure cancels the stream
	return nil
}
func (s breakingStream) Recv() (*tuttipb.ResponseBatch, error) {
	<-s.sendStarted
	return nil, io.EOF
}

type breakingServer struct{ tuttipb.MemnodeClient }

func (breakingServer) Session(ctx context.Context, _ ...grpc.CallOption) (grpc.BidiStreamingClient[tuttipb.RequestBatch, tuttipb.ResponseBatch], error) {
	return breakingStream{deadStream{ctx}, make(chan struct{})}, nil
}

// A batch handed to the transport just as the session failed may have left:
// its requests are answered with an unknown outcome once Send returns, not
// left waiting and not reported as unsent.
func TestSessionFailureDuringSendIsUnknown(t *testing.T) {
	_, r := execOn(t, breakingServer{})
	if r.GetStatus() != tuttipb.Status_STATUS_UNKNOWN_OUTCOME {
		t.Fatalf("status %v (%s), want STATUS_UNKNOWN_OUTCOME", r.GetStatus(), r.GetError())
	}
}
