package service_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/internal/cluster"
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
