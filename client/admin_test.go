package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// lostAnswer is a client stream interceptor that lets the first directory
// write through to the memnode and loses its answer: the stream breaks
// when the answer arrives (a host that crashed after committing, a broken
// connection), after running before, so the caller hears an unknown
// outcome of a write that landed.
type lostAnswer struct {
	mu     sync.Mutex
	armed  bool
	id     uint64 // the directory write sent, 0 if none yet
	lost   bool
	before func()
}

func (l *lostAnswer) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &lostAnswerStream{ClientStream: s, l: l}, nil
}

type lostAnswerStream struct {
	grpc.ClientStream
	l *lostAnswer
}

func (s *lostAnswerStream) SendMsg(m any) error {
	if b, ok := m.(*tuttipb.RequestBatch); ok {
		s.l.mu.Lock()
		for _, r := range b.GetRequests() {
			if s.l.armed && s.l.id == 0 && r.GetMemnode() == client.DirectoryMemnodeID && r.GetKind() == tuttipb.Kind_KIND_EXEC &&
				len(r.GetWrites()) > 0 && r.GetWrites()[0].GetAddr() == client.DirectoryAddr {
				s.l.id = r.GetId()
			}
		}
		s.l.mu.Unlock()
	}
	return s.ClientStream.SendMsg(m)
}

func (s *lostAnswerStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	b, ok := m.(*tuttipb.ResponseBatch)
	if err != nil || !ok {
		return err
	}
	s.l.mu.Lock()
	hit := false
	for _, r := range b.GetResponses() {
		if s.l.id != 0 && !s.l.lost && r.GetId() == s.l.id {
			hit, s.l.lost = true, true
		}
	}
	s.l.mu.Unlock()
	if !hit {
		return nil
	}
	s.l.before()
	return status.Error(codes.Unavailable, "test: connection lost with the directory write's answer")
}

// A directory update whose answer is lost (unknown outcome) settles it by
// reading the header back. When the directory changed again before that
// read (here: the hosts clear the new memnode's bootstrap voters, a write
// of their own, as they do within a poll of AddMemnode), the header is
// neither the old one nor the update's: the update may well have landed.
// It used to be taken as "did not land" and applied again: AddMemnode
// created a second memnode.
func TestUpdateDirectoryLostAnswerIsNotAppliedTwice(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true, Hosts: 3, Memnodes: 2, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}
	other := newClient(t, c.Seeds())
	before, err := other.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := &lostAnswer{}
	l.before = func() {
		// The write landed (its answer is here); the hosts write the
		// directory next (clearing the new memnode's Bootstrap).
		err := cluster.Eventually(ctx, "the hosts write the directory after the update", func() error {
			d, err := other.Directory(ctx)
			if err != nil {
				return err
			}
			if d.Version < before.Version+2 {
				return fmt.Errorf("directory version %d", d.Version)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	admin := newClient(t, c.Seeds(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithStreamInterceptor(l.intercept))
	l.mu.Lock()
	l.armed = true
	l.mu.Unlock()
	id, err := admin.AddMemnode(ctx, nil)
	l.mu.Lock()
	lost := l.lost
	l.mu.Unlock()
	if !lost {
		t.Fatalf("the directory write's answer was not lost (AddMemnode: %d, %v)", id, err)
	}
	after, derr := other.Directory(ctx)
	if derr != nil {
		t.Fatal(derr)
	}
	t.Logf("AddMemnode: id %d, err %v; memnodes before %d, after %d", id, err, len(before.Memnodes), len(after.Memnodes))
	if n := len(after.Memnodes) - len(before.Memnodes); n != 1 {
		t.Fatalf("one AddMemnode added %d memnodes (directory version %d -> %d): %+v", n, before.Version, after.Version, after.Memnodes)
	}
	if err != nil && !errors.Is(err, client.ErrUnknownOutcome) {
		t.Fatalf("AddMemnode whose answer was lost: %v, want success or ErrUnknownOutcome", err)
	}
}
