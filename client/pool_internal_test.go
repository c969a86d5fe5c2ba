package client

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// echoServer answers every request OK with its own id, each after a
// random delay of up to 200 µs, so that answers often arrive just as
// their callers give up.
type echoServer struct{ tuttipb.MemnodeClient }

type echoStream struct {
	deadStream
	mu  sync.Mutex
	rng *rand.Rand
	out chan *tuttipb.ResponseBatch
}

func (echoServer) Session(ctx context.Context, _ ...grpc.CallOption) (grpc.BidiStreamingClient[tuttipb.RequestBatch, tuttipb.ResponseBatch], error) {
	return &echoStream{deadStream: deadStream{ctx}, rng: rand.New(rand.NewPCG(1, 2)), out: make(chan *tuttipb.ResponseBatch, 1024)}, nil
}

func (s *echoStream) Send(b *tuttipb.RequestBatch) error {
	for _, req := range b.GetRequests() {
		s.mu.Lock()
		d := time.Duration(s.rng.IntN(200)) * time.Microsecond
		s.mu.Unlock()
		id := req.GetId()
		time.AfterFunc(d, func() {
			s.out <- &tuttipb.ResponseBatch{Responses: []*tuttipb.Response{{Id: id, Status: tuttipb.Status_STATUS_OK}}}
		})
	}
	return nil
}

func (s *echoStream) Recv() (*tuttipb.ResponseBatch, error) {
	select {
	case b := <-s.out:
		return b, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// Answers that come after their caller gave up must reach no later
// call: conn.do's waiters and callMany's manyCalls are reused only once
// their answer is in. Each answer must be its own request's.
func TestLateAnswersReachNoReusedCall(t *testing.T) {
	cn := &conn{addr: "echo", rpc: echoServer{}, hooks: &decisionHooks{
		answered: func(*tuttipb.Response, uint64, []*tuttipb.Tid, []*tuttipb.Tid) {},
		stats:    &decisionStats{},
	}}
	c := &Client{cfg: Config{Retry: DefaultRetryPolicy, Now: time.Now}}
	c.mu.hosts = map[uint64]string{1: "echo"}
	c.mu.memnodes = map[uint64][]uint64{0: {1}, 1: {1}}
	c.mu.leader = map[uint64]uint64{0: 1, 1: 1}
	c.mu.conns = map[string]*conn{"echo": cn}
	c.mu.rng = rand.New(rand.NewPCG(3, 4))
	defer func() { // cn has no gRPC connection to close
		cn.mu.Lock()
		st := cn.mu.stream
		cn.mu.Unlock()
		st.mu.Lock()
		st.failLocked(ErrClosed)
		st.mu.Unlock()
		<-st.done
	}()

	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 5))
			for range 300 {
				// Half the calls give up at about the time their
				// answers come.
				timeout := time.Second
				if rng.IntN(2) == 0 {
					timeout = time.Duration(rng.IntN(250)) * time.Microsecond
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				req := &tuttipb.Request{Memnode: 0, Kind: tuttipb.Kind_KIND_EXEC}
				if r, err := cn.do(ctx, req); err == nil && r.GetId() != req.Id {
					t.Errorf("do: request %d got the answer of %d", req.Id, r.GetId())
				}
				reqs := []*tuttipb.Request{
					{Memnode: 0, Kind: tuttipb.Kind_KIND_PREPARE},
					{Memnode: 1, Kind: tuttipb.Kind_KIND_PREPARE},
				}
				var out [2]vote
				c.callMany(ctx, reqs, out[:])
				for i, v := range out {
					if v.r != nil && v.r.GetId() != reqs[i].Id {
						t.Errorf("callMany: request %d got the answer of %d", reqs[i].Id, v.r.GetId())
					}
				}
				cancel()
			}
		}()
	}
	wg.Wait()
}
