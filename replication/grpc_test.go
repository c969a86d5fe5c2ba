package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
)

// grpcNode is a GRPCTransport served by its own loopback gRPC server.
type grpcNode struct {
	id     uint64
	tr     *GRPCTransport
	h      *trHandler
	srv    *grpc.Server
	addr   string
	served chan struct{} // closed when Serve returns
	chunks atomic.Int64  // snapshot chunks received
	once   sync.Once
}

// startGRPCNode starts a transport for id listening on addr ("127.0.0.1:0"
// for any port). It is stopped when the test ends.
func startGRPCNode(tb testing.TB, id uint64, addr string, tweak func(*GRPCConfig)) *grpcNode {
	tb.Helper()
	n, err := tryStartGRPCNode(tb, id, addr, tweak)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func tryStartGRPCNode(tb testing.TB, id uint64, addr string, tweak func(*GRPCConfig)) (*grpcNode, error) {
	cfg := GRPCConfig{ID: id}
	if tweak != nil {
		tweak(&cfg)
	}
	tr, err := NewGRPCTransport(cfg)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	n := &grpcNode{id: id, tr: tr, h: newTrHandler(), addr: lis.Addr().String(), served: make(chan struct{})}
	n.srv = grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == tuttipb.Raft_Snapshot_FullMethodName {
			ss = &chunkCounter{ServerStream: ss, n: &n.chunks}
		}
		return handler(srv, ss)
	}))
	tr.Register(n.srv)
	if err := tr.Start(n.h); err != nil {
		return nil, err
	}
	go func() {
		defer close(n.served)
		if err := n.srv.Serve(lis); err != nil {
			tb.Errorf("serve: %v", err)
		}
	}()
	tb.Cleanup(n.stop)
	return n, nil
}

// stop closes the transport and then the server.
func (n *grpcNode) stop() {
	n.once.Do(func() {
		if err := n.tr.Close(); err != nil {
			panic(err)
		}
		n.srv.Stop()
		<-n.served
	})
}

type chunkCounter struct {
	grpc.ServerStream
	n *atomic.Int64
}

func (c *chunkCounter) RecvMsg(m any) error {
	err := c.ServerStream.RecvMsg(m)
	if err == nil {
		c.n.Add(1)
	}
	return err
}

// connectAll makes every node know every other.
func connectAll(nodes ...*grpcNode) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.tr.SetPeer(b.id, b.addr)
			}
		}
	}
}

func TestGRPCTransportExchangeBatches(t *testing.T) {
	for _, hosts := range []int{2, 3} {
		t.Run(fmt.Sprintf("hosts=%d", hosts), func(t *testing.T) {
			nodes := make([]*grpcNode, hosts)
			for i := range nodes {
				nodes[i] = startGRPCNode(t, uint64(i+1), "127.0.0.1:0", nil)
			}
			connectAll(nodes...)
			const groups, per = 8, 300
			for i := uint64(1); i <= per; i++ {
				for _, from := range nodes {
					var msgs []GroupMessage
					for _, to := range nodes {
						if to == from {
							continue
						}
						for g := uint64(1); g <= groups; g++ {
							m := trMsg(g, from.id, to.id, raftpb.MsgApp, i)
							m.Msg.Entries = []*raftpb.Entry{{Index: proto.Uint64(i), Data: fmt.Appendf(nil, "%d/%d/%d", from.id, g, i)}}
							msgs = append(msgs, m)
						}
					}
					from.tr.Send(msgs)
				}
			}
			want := make([]uint64, per)
			for i := range want {
				want[i] = uint64(i + 1)
			}
			for _, to := range nodes {
				total := (hosts - 1) * groups * per
				trEventually(t, 10*time.Second, fmt.Sprintf("%d messages at host %d", total, to.id), func() bool { return to.h.count() >= total })
				got := to.h.received()
				if len(got) != total {
					t.Fatalf("host %d got %d messages, want %d", to.id, len(got), total)
				}
				for _, from := range nodes {
					if from == to {
						continue
					}
					for g := uint64(1); g <= groups; g++ {
						if idx := indexesFrom(got, g, from.id); !slices.Equal(idx, want) {
							t.Fatalf("host %d group %d from %d: %d messages, order broken or lost", to.id, g, from.id, len(idx))
						}
					}
				}
				for _, m := range got {
					wantData := fmt.Sprintf("%d/%d/%d", m.Msg.GetFrom(), m.Group, m.Msg.GetIndex())
					if m.Msg.GetTo() != to.id || string(m.Msg.GetEntries()[0].GetData()) != wantData {
						t.Fatalf("host %d got a corrupt message %v", to.id, m.Msg)
					}
				}
				to.h.mu.Lock()
				calls := to.h.calls
				to.h.mu.Unlock()
				t.Logf("host %d: %d messages in %d HandleMessages calls", to.id, total, calls)
			}
			for _, n := range nodes {
				n.h.mu.Lock()
				unreachable := len(n.h.unreachable)
				n.h.mu.Unlock()
				if unreachable != 0 {
					t.Fatalf("host %d saw %d unreachable reports", n.id, unreachable)
				}
			}
		})
	}
}

func TestGRPCTransportLargeSnapshot(t *testing.T) {
	a := startGRPCNode(t, 1, "127.0.0.1:0", nil)
	b := startGRPCNode(t, 2, "127.0.0.1:0", nil)
	connectAll(a, b)
	data := make([]byte, 5<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	snap := trSnap(9, 1, 2, data)
	a.tr.Send([]GroupMessage{snap, trMsg(9, 1, 2, raftpb.MsgHeartbeat, 1)})
	trEventually(t, 10*time.Second, "snapshot report", func() bool { return len(a.h.snapReports()) == 1 })
	if r := a.h.snapReports()[0]; r != (trSnapReport{group: 9, to: 2, ok: true}) {
		t.Fatalf("report %+v", r)
	}
	var got *raftpb.Message
	for _, m := range b.h.received() {
		if m.Msg.GetType() == raftpb.MsgSnap {
			if m.Group != 9 {
				t.Fatalf("snapshot delivered for group %d", m.Group)
			}
			got = m.Msg
		}
	}
	if got == nil {
		t.Fatal("ReportSnapshot(ok) fired but the receiver has no MsgSnap")
	}
	if !bytes.Equal(got.GetSnapshot().GetData(), data) {
		t.Fatalf("snapshot data differs: got %d bytes, want %d", len(got.GetSnapshot().GetData()), len(data))
	}
	got.Snapshot.Data = nil
	snap.Msg.Snapshot.Data = nil
	if !proto.Equal(got, snap.Msg) {
		t.Fatalf("snapshot message differs:\n got %v\nwant %v", got, snap.Msg)
	}
	// One chunk of metadata, then 1 MiB chunks.
	if c, want := b.chunks.Load(), int64(1+(len(data)+DefaultGRPCChunkSize-1)/DefaultGRPCChunkSize); c != want {
		t.Fatalf("snapshot came in %d chunks, want %d", c, want)
	}

	// An empty snapshot is one chunk.
	a.tr.Send([]GroupMessage{trSnap(10, 1, 2, nil)})
	trEventually(t, 10*time.Second, "second report", func() bool { return len(a.h.snapReports()) == 2 })
	if r := a.h.snapReports()[1]; r != (trSnapReport{group: 10, to: 2, ok: true}) {
		t.Fatalf("report %+v", r)
	}
}

func TestGRPCTransportSnapshotTooLarge(t *testing.T) {
	a := startGRPCNode(t, 1, "127.0.0.1:0", func(c *GRPCConfig) { c.ChunkSize = 1000 })
	b := startGRPCNode(t, 2, "127.0.0.1:0", func(c *GRPCConfig) { c.MaxSnapshotBytes = 10_000 })
	connectAll(a, b)
	a.tr.Send([]GroupMessage{trSnap(1, 1, 2, make([]byte, 10_001))})
	trEventually(t, 10*time.Second, "snapshot report", func() bool { return len(a.h.snapReports()) == 1 })
	if r := a.h.snapReports()[0]; r.ok {
		t.Fatal("oversized snapshot reported delivered")
	}
	a.tr.Send([]GroupMessage{trSnap(2, 1, 2, make([]byte, 10_000))})
	trEventually(t, 10*time.Second, "snapshot report", func() bool { return len(a.h.snapReports()) == 2 })
	if r := a.h.snapReports()[1]; !r.ok {
		t.Fatal("snapshot at the limit refused")
	}
	if c := b.h.count(); c != 1 {
		t.Fatalf("receiver got %d messages, want 1", c)
	}
}

// deadAddr returns a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestGRPCTransportDeadPeer(t *testing.T) {
	a := startGRPCNode(t, 1, "127.0.0.1:0", func(c *GRPCConfig) { c.QueueSize = 64 })
	a.tr.SetPeer(2, deadAddr(t))
	start := time.Now()
	for i := uint64(1); i <= 1000; i++ {
		a.tr.Send([]GroupMessage{trMsg(i%4, 1, 2, raftpb.MsgApp, i), trMsg(1, 1, 3, raftpb.MsgApp, i)})
	}
	a.tr.Send([]GroupMessage{trSnap(7, 1, 2, make([]byte, 100))})
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Send to a dead peer took %v", d)
	}
	trEventually(t, 10*time.Second, "unreachable reports", func() bool {
		for g := uint64(0); g < 4; g++ {
			if a.h.unreachableCount(g, 2) == 0 {
				return false
			}
		}
		return a.h.unreachableCount(1, 3) > 0 // 3 is unknown
	})
	trEventually(t, 10*time.Second, "snapshot failure report", func() bool { return len(a.h.snapReports()) == 1 })
	if r := a.h.snapReports()[0]; r != (trSnapReport{group: 7, to: 2, ok: false}) {
		t.Fatalf("report %+v", r)
	}
	// Reports are rate-limited, not one per message.
	if c := a.h.unreachableCount(1, 3); c > 1+int(time.Since(start)/grpcUnreachableInterval) {
		t.Fatalf("%d unreachable reports for host 3 in %v", c, time.Since(start))
	}
	closed := make(chan struct{})
	go func() {
		a.stop()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs with a dead peer")
	}
}

// A peer that cannot be reached is reported at warn level once sends to it
// have failed for grpcWarnAfter, not at the first failure: a peer that is
// restarting, or a local cluster shutting down host by host, is not worth
// a warning.
func TestGRPCTransportWarnsOnlyAfterGrace(t *testing.T) {
	var logs syncbuf.Buffer
	a := startGRPCNode(t, 1, "127.0.0.1:0", func(c *GRPCConfig) {
		c.Logger = zerolog.New(&logs).Level(zerolog.DebugLevel)
	})
	defer a.stop()
	a.tr.SetPeer(2, deadAddr(t))
	start := time.Now()
	warned := func() bool { return strings.Contains(logs.String(), `"level":"warn"`) }
	// Raft keeps sending heartbeats to an unreachable peer; so does this.
	for i := uint64(1); !warned(); i++ {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no warning after 10 s of failures:\n%s", logs.String())
		}
		a.tr.Send([]GroupMessage{trMsg(1, 1, 2, raftpb.MsgHeartbeat, i)})
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(start); d < grpcWarnAfter {
		t.Fatalf("warned after %v, before the %v grace", d, grpcWarnAfter)
	}
	if n := strings.Count(logs.String(), `"level":"warn"`); n != 1 {
		t.Fatalf("%d warnings for one outage:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"level":"debug"`) {
		t.Fatalf("failures before the grace were not logged at debug level:\n%s", logs.String())
	}
}

// keepSending sends a heartbeat from from to host to every few milliseconds
// until h has received one, as Raft would.
func keepSending(t *testing.T, from *grpcNode, to uint64, h *trHandler) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := uint64(1); h.count() == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("host %d never reached host %d", from.id, to)
		}
		from.tr.Send([]GroupMessage{trMsg(1, from.id, to, raftpb.MsgHeartbeat, i)})
		time.Sleep(5 * time.Millisecond)
	}
}

func TestGRPCTransportReconnect(t *testing.T) {
	a := startGRPCNode(t, 1, "127.0.0.1:0", nil)
	b := startGRPCNode(t, 2, "127.0.0.1:0", nil)
	connectAll(a, b)
	keepSending(t, a, 2, b.h)

	// Host 2 dies; host 1 notices.
	b.stop()
	trEventually(t, 10*time.Second, "unreachable report", func() bool {
		a.tr.Send([]GroupMessage{trMsg(1, 1, 2, raftpb.MsgHeartbeat, 0)})
		return a.h.unreachableCount(1, 2) > 0
	})

	// It comes back on a new address.
	b2 := startGRPCNode(t, 2, "127.0.0.1:0", nil)
	b2.tr.SetPeer(1, a.addr) // it hears only from its peers
	a.tr.SetPeer(2, b2.addr)
	keepSending(t, a, 2, b2.h)

	// It dies and comes back on the same address: the sender reconnects by
	// itself.
	b2.stop()
	var b3 *grpcNode
	var err error
	for range 50 {
		if b3, err = tryStartGRPCNode(t, 2, b2.addr, nil); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Skipf("cannot listen again on %s: %v", b2.addr, err)
	}
	b3.tr.SetPeer(1, a.addr)
	keepSending(t, a, 2, b3.h)
}

// rawClient returns a Raft client for addr that bypasses any transport.
func rawClient(t *testing.T, addr string) tuttipb.RaftClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cc.Close(); err != nil {
			t.Error(err)
		}
	})
	return tuttipb.NewRaftClient(cc)
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantCode checks err is a status with code c whose message contains sub.
func wantCode(t *testing.T, what string, err error, c codes.Code, sub string) {
	t.Helper()
	if status.Code(err) != c || !strings.Contains(status.Convert(err).Message(), sub) {
		t.Fatalf("%s: got %v, want %v containing %q", what, err, c, sub)
	}
}

// unreachableAddr is a peer address nothing listens on (port 1).
const unreachableAddr = "127.0.0.1:1"

func TestGRPCTransportRefusesBadBatches(t *testing.T) {
	var unknown atomic.Uint64 // the last sender UnknownPeer reported
	b := startGRPCNode(t, 2, "127.0.0.1:0", func(c *GRPCConfig) { c.UnknownPeer = unknown.Store })
	b.tr.SetPeer(1, unreachableAddr)
	c := rawClient(t, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	good := mustMarshal(t, trMsg(1, 1, 2, raftpb.MsgApp, 1).Msg)
	cases := []struct {
		name  string
		batch *tuttipb.RaftBatch
		code  codes.Code
		sub   string
	}{
		{"wrong host", &tuttipb.RaftBatch{From: 1, To: 3, Messages: []*tuttipb.GroupMessage{{Group: 1, Message: good}}},
			codes.InvalidArgument, "addressed to host 3 but this is host 2"},
		{"not a peer", &tuttipb.RaftBatch{From: 5, To: 2, Messages: []*tuttipb.GroupMessage{
			{Group: 1, Message: mustMarshal(t, trMsg(1, 5, 2, raftpb.MsgApp, 1).Msg)}}},
			codes.PermissionDenied, "from host 5, which is not a peer of host 2"},
		// Messages are decoded with the batch (RaftBatchMessages): gRPC
		// refuses the frame.
		{"undecodable", &tuttipb.RaftBatch{From: 1, To: 2, Messages: []*tuttipb.GroupMessage{{Group: 1, Message: []byte{0xff, 0xff, 0xff}}}},
			codes.Internal, "failed to unmarshal"},
		{"empty message", &tuttipb.RaftBatch{From: 1, To: 2, Messages: []*tuttipb.GroupMessage{{Group: 1}}},
			codes.InvalidArgument, "is empty"},
		{"message for another host", &tuttipb.RaftBatch{From: 1, To: 2, Messages: []*tuttipb.GroupMessage{
			{Group: 1, Message: mustMarshal(t, trMsg(1, 1, 3, raftpb.MsgApp, 1).Msg)}}}, codes.InvalidArgument, "from host 1 to host 3"},
	}
	for _, tc := range cases {
		s, err := c.Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(tc.batch); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		_, err = s.CloseAndRecv()
		wantCode(t, tc.name, err, tc.code, tc.sub)
	}
	if n := b.h.count(); n != 0 {
		t.Fatalf("refused batches delivered %d messages", n)
	}
	if got := unknown.Load(); got != 5 {
		t.Fatalf("UnknownPeer reported host %d, want 5 (the sender that is not a peer)", got)
	}

	// A good batch still passes.
	s, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&tuttipb.RaftBatch{From: 1, To: 2, Messages: []*tuttipb.GroupMessage{{Group: 1, Message: good}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if n := b.h.count(); n != 1 {
		t.Fatalf("got %d messages, want 1", n)
	}

	// A transport that believes host 3 lives at host 2's address is refused
	// and reports host 3 unreachable.
	a := startGRPCNode(t, 1, "127.0.0.1:0", nil)
	a.tr.SetPeer(3, b.addr)
	trEventually(t, 10*time.Second, "unreachable report", func() bool {
		a.tr.Send([]GroupMessage{trMsg(4, 1, 3, raftpb.MsgHeartbeat, 1)})
		return a.h.unreachableCount(4, 3) > 0
	})
	if n := b.h.count(); n != 1 {
		t.Fatalf("misaddressed batch delivered: %d messages", n)
	}
}

func TestGRPCTransportRefusesBadSnapshots(t *testing.T) {
	b := startGRPCNode(t, 2, "127.0.0.1:0", func(c *GRPCConfig) { c.MaxSnapshotBytes = 100 })
	b.tr.SetPeer(1, unreachableAddr)
	c := rawClient(t, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	head := mustMarshal(t, trSnap(1, 1, 2, nil).Msg)
	cases := []struct {
		name   string
		chunks []*tuttipb.SnapshotChunk
		code   codes.Code
		sub    string
	}{
		{"empty", nil, codes.InvalidArgument, "empty snapshot stream"},
		{"wrong host", []*tuttipb.SnapshotChunk{{From: 1, To: 3, Group: 1, Message: head, Last: true}}, codes.InvalidArgument, "addressed to host 3"},
		{"not a peer", []*tuttipb.SnapshotChunk{{From: 5, To: 2, Group: 1, Message: mustMarshal(t, trSnap(1, 5, 2, nil).Msg), Last: true}},
			codes.PermissionDenied, "from host 5, which is not a peer"},
		{"no message", []*tuttipb.SnapshotChunk{{From: 1, To: 2, Group: 1, Data: []byte("x"), Last: true}}, codes.InvalidArgument, "must carry a MsgSnap"},
		{"not a snapshot", []*tuttipb.SnapshotChunk{{From: 1, To: 2, Group: 1, Message: mustMarshal(t, trMsg(1, 1, 2, raftpb.MsgApp, 1).Msg), Last: true}}, codes.InvalidArgument, "must carry a MsgSnap"},
		{"no last chunk", []*tuttipb.SnapshotChunk{{From: 1, To: 2, Group: 1, Message: head}, {Data: []byte("abc")}}, codes.InvalidArgument, "without its last chunk"},
		{"second message", []*tuttipb.SnapshotChunk{{From: 1, To: 2, Group: 1, Message: head}, {Message: head, Last: true}}, codes.InvalidArgument, "inconsistent chunk"},
		{"after last", []*tuttipb.SnapshotChunk{{From: 1, To: 2, Group: 1, Message: head, Last: true}, {Data: []byte("abc")}}, codes.InvalidArgument, "after the last"},
		{"too large", []*tuttipb.SnapshotChunk{{From: 1, To: 2, Group: 1, Message: head}, {Data: make([]byte, 60)}, {Data: make([]byte, 60), Last: true}}, codes.ResourceExhausted, "exceeds 100 bytes"},
	}
	for _, tc := range cases {
		s, err := c.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range tc.chunks {
			if err := s.Send(ch); err != nil {
				break // the server gave up; CloseAndRecv says why
			}
		}
		_, err = s.CloseAndRecv()
		wantCode(t, tc.name, err, tc.code, tc.sub)
	}
	if n := b.h.count(); n != 0 {
		t.Fatalf("refused snapshots delivered %d messages", n)
	}
}

func TestGRPCTransportLifecycle(t *testing.T) {
	if _, err := NewGRPCTransport(GRPCConfig{QueueSize: -1, ChunkSize: -1}); err == nil ||
		!strings.Contains(err.Error(), "ID") || !strings.Contains(err.Error(), "QueueSize") || !strings.Contains(err.Error(), "ChunkSize") {
		t.Fatalf("Validate should report every problem, got %v", err)
	}

	a := startGRPCNode(t, 1, "127.0.0.1:0", nil)
	b := startGRPCNode(t, 2, "127.0.0.1:0", nil)
	connectAll(a, b)
	if err := a.tr.Start(newTrHandler()); err == nil {
		t.Fatal("second Start succeeded")
	}
	keepSending(t, a, 2, b.h)
	a.tr.Send([]GroupMessage{trSnap(3, 1, 2, make([]byte, 3<<20))})
	a.tr.RemovePeer(2)
	a.tr.Send([]GroupMessage{trMsg(5, 1, 2, raftpb.MsgApp, 1)})
	trEventually(t, 10*time.Second, "unreachable after RemovePeer", func() bool { return a.h.unreachableCount(5, 2) > 0 })
	a.tr.SetPeer(2, b.addr)

	for _, n := range []*grpcNode{a, b} {
		if err := n.tr.Close(); err != nil {
			t.Fatal(err)
		}
		if err := n.tr.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	// Everything after Close is a no-op.
	a.tr.Send([]GroupMessage{trMsg(1, 1, 2, raftpb.MsgApp, 1), trSnap(1, 1, 2, []byte("x"))})
	a.tr.SetPeer(3, b.addr)
	a.tr.RemovePeer(2)
	if err := a.tr.Start(newTrHandler()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Close: %v", err)
	}
	a.stop()
	b.stop()
	// Reports the handler got stay, but nothing is called after Close.
	before := len(a.h.snapReports())
	goleak.VerifyNone(t, goleak.IgnoreCurrent())
	if after := len(a.h.snapReports()); after != before {
		t.Fatal("handler called after Close")
	}
}

func TestGRPCTransportNoLeaks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a := startGRPCNode(t, 1, "127.0.0.1:0", nil)
	b := startGRPCNode(t, 2, "127.0.0.1:0", nil)
	connectAll(a, b)
	keepSending(t, a, 2, b.h)
	keepSending(t, b, 1, a.h)
	a.tr.Send([]GroupMessage{trSnap(3, 1, 2, make([]byte, 2<<20))})
	a.tr.SetPeer(3, deadAddr(t))
	a.tr.Send([]GroupMessage{trMsg(1, 1, 3, raftpb.MsgApp, 1)})
	a.stop()
	b.stop()
}

// BenchmarkGRPCTransport measures small MsgApp-like messages per second from
// one transport to another on loopback, for several numbers of messages
// handed to one Send call.
func BenchmarkGRPCTransport(b *testing.B) {
	for _, batch := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			src := startGRPCNode(b, 1, "127.0.0.1:0", nil)
			dst := startGRPCNode(b, 2, "127.0.0.1:0", nil)
			src.tr.SetPeer(2, dst.addr)
			var received atomic.Int64
			progress := make(chan struct{}, 1)
			dst.h.mu.Lock()
			dst.h.onMsgs = func(msgs []GroupMessage) {
				received.Add(int64(len(msgs)))
				select {
				case progress <- struct{}{}:
				default:
				}
			}
			dst.h.mu.Unlock()
			// Keep the handler from accumulating everything.
			dst.h = newTrHandler()

			const window = DefaultGRPCQueueSize / 2
			msgs := make([]GroupMessage, batch)
			for i := range msgs {
				m := trMsg(uint64(i%64+1), 1, 2, raftpb.MsgApp, uint64(i))
				m.Msg.Commit = proto.Uint64(uint64(i))
				m.Msg.LogTerm = proto.Uint64(1)
				m.Msg.Entries = []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(uint64(i + 1)), Data: make([]byte, 64)}}
				msgs[i] = m
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			sent := 0
			for sent < b.N {
				for int64(sent)-received.Load() >= window {
					select {
					case <-progress:
					case <-time.After(10 * time.Second):
						b.Fatalf("stalled: sent %d received %d", sent, received.Load())
					}
				}
				n := min(batch, b.N-sent)
				src.tr.Send(msgs[:n])
				sent += n
			}
			for received.Load() < int64(b.N) {
				select {
				case <-progress:
				case <-time.After(10 * time.Second):
					b.Fatalf("stalled: sent %d received %d", sent, received.Load())
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// RaftBatchMessages, which hosts send and decode, is RaftBatch on the wire:
// hosts running a build that still sends and expects RaftBatch (each
// message as bytes) interoperate.
func TestRaftBatchMessagesIsRaftBatchOnTheWire(t *testing.T) {
	msgs := []GroupMessage{trMsg(1, 1, 2, raftpb.MsgApp, 7), trMsg(9, 1, 2, raftpb.MsgHeartbeat, 3)}
	msgs[0].Msg.Entries = []*raftpb.Entry{{Term: proto.Uint64(2), Index: proto.Uint64(7), Data: []byte("payload")}}
	old := &tuttipb.RaftBatch{From: 1, To: 2}
	now := &tuttipb.RaftBatchMessages{From: 1, To: 2}
	for _, m := range msgs {
		old.Messages = append(old.Messages, &tuttipb.GroupMessage{Group: m.Group, Message: mustMarshal(t, m.Msg)})
		now.Messages = append(now.Messages, &tuttipb.GroupRaftMessage{Group: m.Group, Message: m.Msg})
	}
	det := proto.MarshalOptions{Deterministic: true}
	a, err := det.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	b, err := det.Marshal(now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("RaftBatch %x\nRaftBatchMessages %x", a, b)
	}
	back := &tuttipb.RaftBatchMessages{}
	if err := proto.Unmarshal(a, back); err != nil || !proto.Equal(back, now) {
		t.Fatalf("RaftBatch decoded as RaftBatchMessages: %v %v", back, err)
	}
}

// AuthorizePeer decides, per stream and sender, whether Raft traffic is
// taken: refused batches and snapshots deliver nothing, and it is asked
// once per stream and sender, with the sender's address.
func TestGRPCTransportAuthorizePeer(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	b := startGRPCNode(t, 2, "127.0.0.1:0", func(c *GRPCConfig) {
		c.AuthorizePeer = func(ctx context.Context, host uint64, addr string) error {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, fmt.Sprintf("%d@%s", host, addr))
			if host == 3 {
				return errors.New("host 3 is not welcome")
			}
			return nil
		}
	})
	b.tr.SetPeer(1, unreachableAddr)
	b.tr.SetPeer(3, "127.0.0.3:1")
	c := rawClient(t, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	send := func(from uint64, n int) error {
		s, err := c.Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			b := &tuttipb.RaftBatch{From: from, To: 2, Messages: []*tuttipb.GroupMessage{
				{Group: 1, Message: mustMarshal(t, trMsg(1, from, 2, raftpb.MsgApp, 1).Msg)}}}
			if err := s.Send(b); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
		}
		_, err = s.CloseAndRecv()
		return err
	}
	wantCode(t, "refused sender", send(3, 1), codes.PermissionDenied, "host 3 is not welcome")
	snap, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Send(&tuttipb.SnapshotChunk{From: 3, To: 2, Group: 1, Message: mustMarshal(t, trSnap(1, 3, 2, nil).Msg), Last: true}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	_, err = snap.CloseAndRecv()
	wantCode(t, "refused snapshot", err, codes.PermissionDenied, "host 3 is not welcome")
	if n := b.h.count(); n != 0 {
		t.Fatalf("refused traffic delivered %d messages", n)
	}
	if err := send(1, 3); err != nil {
		t.Fatalf("authorized sender: %v", err)
	}
	if n := b.h.count(); n != 3 {
		t.Fatalf("authorized stream delivered %d messages, want 3", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"3@127.0.0.3:1", "3@127.0.0.3:1", "1@" + unreachableAddr}; !slices.Equal(asked, want) {
		t.Fatalf("asked %v, want %v (once per stream and sender)", asked, want)
	}
}
