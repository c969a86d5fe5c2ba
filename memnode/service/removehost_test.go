package service_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
)

// A host removed from the directory while its process still runs used to
// register itself again at its next poll: the removal was undone within
// 50 ms, and the host was back in service, undrained, for default
// placement. Client.RemoveHost refuses a host that answers; removed anyway
// (the check could not reach it), the host stays out and says so. Its
// process started afresh registers, as any new host does.
func TestRemovedRunningHostDoesNotRegisterAgain(t *testing.T) {
	var logs syncbuf.Buffer
	c := startOnline(t, cluster.Config{Hosts: 4, Spares: 1, Memnodes: 1, DirectoryPoll: 50 * time.Millisecond,
		Logger: zerolog.New(&logs).Level(zerolog.InfoLevel)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := oneSeedClient(t, c)
	if _, err := cl.DrainHost(ctx, 4); err != nil {
		t.Fatal(err)
	}
	_, err := cl.RemoveHost(ctx, 4)
	if !errors.Is(err, client.ErrDirectoryChange) || !strings.Contains(err.Error(), "still answers") {
		t.Fatalf("RemoveHost of a running host: %v", err)
	}
	d, err := cl.UpdateDirectory(ctx, func(d *client.Directory) error { return d.RemoveHost(4) })
	if err != nil {
		t.Fatal(err)
	}
	const removed = "removed from the cluster directory while running"
	var back *client.Directory
	if err := cluster.Eventually(ctx, "host 4 to notice its removal", func() error {
		seen := logs.Lines(removed, `"host":4`) > 0
		cur, err := cl.Directory(ctx)
		if err != nil {
			return err
		}
		if cur.Host(4) != nil {
			back = cur
			return nil
		}
		if !seen {
			return fmt.Errorf("no log line %q yet (directory version %d)", removed, cur.Version)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if back != nil {
		t.Fatalf("host 4 is back in directory version %d (removed in version %d): %+v", back.Version, d.Version, back.Hosts)
	}
	// Started afresh, it rejoins: a new host in service.
	if err := c.StopHost(3); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartHost(3); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Eventually(ctx, "host 4 to register again after its restart", func() error {
		cur, err := cl.Directory(ctx)
		if err != nil {
			return err
		}
		if h := cur.Host(4); h == nil || h.Drained {
			return fmt.Errorf("host 4 in version %d: %+v", cur.Version, h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
