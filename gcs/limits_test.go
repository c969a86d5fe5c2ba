package gcs_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// nodeWith opens a Node on e's cluster with cfg's tunables, and with
// cfg.Client if set (else a client of its own).
func (e *env) nodeWith(id string, cfg gcs.Config) *gcs.Node {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cfg.Client == nil {
		cfg.Client = e.client() // closed after the Node (cleanups run last first)
	}
	cfg.ID = id
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel)
	n, err := gcs.Open(ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { n.Close() })
	return n
}

// blast multicasts payloads from one goroutine each (all pending at
// once) and checks that every Multicast returns nil and the member
// delivers every payload, in FIFO order of the returned Seq, within
// limit. It returns the first problem.
func blast(t *testing.T, g *gcs.Group, payloads [][]byte, limit time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	want := map[uint64][]byte{} // by the index in the payload's first 8 bytes
	for i, p := range payloads {
		binary.LittleEndian.PutUint64(p, uint64(i))
		want[uint64(i)] = p
	}
	got := make(chan error, 1)
	go func() {
		defer close(got)
		seen := 0
		for seen < len(payloads) {
			select {
			case ev, ok := <-g.Events():
				if !ok {
					got <- errors.New("events closed")
					return
				}
				switch e := ev.(type) {
				case *gcs.Message:
					w, ok := want[binary.LittleEndian.Uint64(e.Payload)]
					if !ok || !bytes.Equal(w, e.Payload) {
						got <- fmt.Errorf("message seq %d: unexpected payload of %d bytes", e.Seq, len(e.Payload))
						return
					}
					seen++
				case *gcs.Evicted:
					got <- fmt.Errorf("evicted: %s", e.Reason)
					return
				}
			case <-ctx.Done():
				got <- fmt.Errorf("delivered %d of %d messages: %w", seen, len(payloads), ctx.Err())
				return
			}
		}
	}()
	errs := make(chan error, len(payloads))
	var wg sync.WaitGroup
	for _, p := range payloads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.Multicast(ctx, p); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n == 0 {
			t.Errorf("multicast: %v", err)
		}
		n++
	}
	if n > 0 {
		t.Errorf("%d of %d multicasts failed", n, len(payloads))
		cancel()
	}
	if err := <-got; err != nil {
		t.Error(err)
	}
}

// TestDeepBacklog: thousands of Multicasts pending at once with a queue
// larger than one request may carry. The sender used to put up to 64
// batches into one queue write (16 MiB here), which the memnodes reject
// (a request is at most 4 MiB): the group failed, and every Multicast
// with it.
func TestDeepBacklog(t *testing.T) {
	e := newEnv(t)
	n := e.nodeWith("a", gcs.Config{MaxBatch: 900, MaxBatchBytes: 1000000, QueueCapacity: 16 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g, err := n.Join(ctx, "backlog", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := (<-g.Events()).(*gcs.View); !ok {
		t.Fatal("first event is not a view")
	}
	payloads := make([][]byte, 8192)
	for i := range payloads {
		payloads[i] = make([]byte, 1024)
	}
	blast(t, g, payloads, 90*time.Second)
}

// TestLargeBlobs: batches and single messages larger than the cluster's
// item limit (1 MiB) are written and read in several items. Delivery
// used to read a blob in one item: with MaxBatchBytes 1 MiB, or one
// message of 1.5 MiB, every member was evicted ("read item 0: length
// ... exceeds the limit").
func TestLargeBlobs(t *testing.T) {
	e := newEnv(t)
	n := e.nodeWith("a", gcs.Config{MaxBatch: 4096, MaxBatchBytes: 1 << 20, QueueCapacity: 8 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g, err := n.Join(ctx, "large", gcs.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := (<-g.Events()).(*gcs.View); !ok {
		t.Fatal("first event is not a view")
	}
	var payloads [][]byte
	for range 3000 {
		payloads = append(payloads, bytes.Repeat([]byte{'x'}, 1024))
	}
	payloads = append(payloads, bytes.Repeat([]byte{'y'}, 1500<<10), bytes.Repeat([]byte{'z'}, gcs.MaxBatchBytesLimit-4))
	blast(t, g, payloads, 60*time.Second)
	if err := g.Multicast(ctx, make([]byte, gcs.MaxBatchBytesLimit-3)); !errors.Is(err, gcs.ErrTooLarge) {
		t.Errorf("multicast of %d bytes: %v, want ErrTooLarge", gcs.MaxBatchBytesLimit-3, err)
	}

	cfg := gcs.Config{Client: &client.Client{}, ID: "b", MaxBatchBytes: gcs.MaxBatchBytesLimit + 1, QueueCapacity: 64 << 20}
	if _, err := gcs.Open(ctx, cfg); !errors.Is(err, gcs.ErrInvalid) {
		t.Errorf("Open with MaxBatchBytes %d: %v, want ErrInvalid", cfg.MaxBatchBytes, err)
	}
}
