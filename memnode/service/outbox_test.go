package service

import (
	"context"
	"sync"
	"testing"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// sendRecorder is a session stream whose Send calls send.
type sendRecorder struct {
	tuttipb.Memnode_SessionServer
	ctx  context.Context
	send func(*tuttipb.ResponseBatch) error
}

func (s *sendRecorder) Context() context.Context            { return s.ctx }
func (s *sendRecorder) Send(b *tuttipb.ResponseBatch) error { return s.send(b) }

// A read's answer buffer (from bufpool.Pool, which the response's reads
// alias) goes back only once the response was sent, and then it does.
func TestOutboxReleasesReadBuffersAfterSend(t *testing.T) {
	ob := newOutbox()
	var mu sync.Mutex
	var released [][]byte
	ob.release = func(b []byte) {
		mu.Lock()
		released = append(released, b)
		mu.Unlock()
	}
	var sent []string
	st := &sendRecorder{ctx: context.Background(), send: func(b *tuttipb.ResponseBatch) error {
		mu.Lock()
		defer mu.Unlock()
		if len(released) != 0 {
			t.Errorf("%d buffers released before their responses were sent", len(released))
		}
		for _, r := range b.GetResponses() {
			for _, rd := range r.GetReads() {
				sent = append(sent, string(rd))
			}
		}
		return nil
	}}
	bufA, bufB := []byte("read data A"), []byte("read data B")
	ob.pushOwning(&tuttipb.Response{Id: 1, Reads: [][]byte{bufA}}, bufA)
	ob.push(&tuttipb.Response{Id: 2})
	ob.pushOwning(&tuttipb.Response{Id: 3, Reads: [][]byte{bufB[:6], bufB[6:]}}, bufB)
	ob.close()
	if err := ob.run(st); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 3 || sent[0] != "read data A" || sent[1]+sent[2] != "read data B" {
		t.Fatalf("sent reads %q", sent)
	}
	if len(released) != 2 || &released[0][0] != &bufA[0] || &released[1][0] != &bufB[0] {
		t.Fatalf("released %q, want the two read buffers", released)
	}
}
