package service_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
)

// A restarted host routes by its configured placement until it reads the
// directory. When memnode 0 has moved to a host that placement does not
// name, the host must still find it (through the other hosts).
func TestRestartFindsMovedDirectory(t *testing.T) {
	c := startOnline(t, cluster.Config{Hosts: 3, Spares: 1, Replicas: 1, Memnodes: 3, DirectoryPoll: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	if err := cl.MoveReplica(ctx, 0, 1, 3); err != nil { // memnode 0: host 1 -> the spare
		t.Fatal(err)
	}
	if err := c.WaitReplicas(ctx, 0, []uint64{3}); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Directory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StopHost(0); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartHost(0); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := cluster.Eventually(wctx, "host 1 reads the directory", func() error {
		if v := c.Host(1).DirectoryVersion(); v < d.Version {
			return fmt.Errorf("host 1 has directory version %d, the cluster %d", v, d.Version)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A directory region that no longer decodes (someone wrote over it with a
// plain minitransaction) is not a passing read failure: every host logs
// it at error level, once a minute rather than every poll, and keeps its
// last known layout. It used to go to the debug log only, every poll.
func TestCorruptDirectoryIsLoggedAsAnError(t *testing.T) {
	var logs syncbuf.Buffer
	c := startClusterWith(t, cluster.Config{DirectoryPoll: 20 * time.Millisecond, Logger: zerolog.New(&logs).Level(zerolog.InfoLevel)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := newClient(t, c, nil)
	if _, err := cl.Exec(ctx, client.NewTx().Write(0, client.DirectoryAddr, []byte("XXXX"))); err != nil {
		t.Fatal(err)
	}
	const what = "the cluster directory in memnode 0 does not decode"
	for deadline := time.Now().Add(20 * time.Second); logs.Lines(`"level":"error"`, what) < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("%d hosts logged the corrupt directory at error level within 20 s, want 3", logs.Lines(`"level":"error"`, what))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// 25 polls later, still once per host (an absence needs a window; it
	// cannot make the test fail falsely).
	time.Sleep(500 * time.Millisecond)
	if n := logs.Lines(what); n != 3 {
		t.Fatalf("%d log lines about the corrupt directory, want 3 (one per host, not one per poll)", n)
	}
}
