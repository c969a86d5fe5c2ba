package gcs_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

func Example() {
	c, err := cluster.Start(cluster.Config{NoSync: true})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		panic(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: "alice"})
	if err != nil {
		panic(err)
	}
	defer n.Close()

	g, err := n.Join(ctx, "chat", gcs.JoinOptions{})
	if err != nil {
		panic(err)
	}
	for _, s := range []string{"hello", "world"} {
		if err := g.Multicast(ctx, []byte(s)); err != nil {
			panic(err)
		}
	}
	for ev := range g.Events() {
		switch ev := ev.(type) {
		case *gcs.View:
			fmt.Println("view", ev.ID, ev.Members, ev.Reason)
		case *gcs.Message:
			fmt.Printf("%s #%d from %s: %s\n", "message", ev.Pos, ev.Sender, ev.Payload)
			if ev.Pos == 2 {
				go g.Leave(ctx) // Events closes once the leave is ordered
			}
		}
	}
	// Output:
	// view 1 [alice#1] join
	// message #1 from alice#1: hello
	// message #2 from alice#1: world
}

// Describe reads a group's metadata without joining: the view, the
// members and what the order log keeps. When the last member leaves, it
// reclaims every removed member's slot and queue, so nothing is left.
func ExampleNode_Describe() {
	c, err := cluster.Start(cluster.Config{NoSync: true})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		panic(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: "alice"})
	if err != nil {
		panic(err)
	}
	defer n.Close()

	g, err := n.Join(ctx, "jobs", gcs.JoinOptions{})
	if err != nil {
		panic(err)
	}
	go func() {
		for range g.Events() {
		}
	}()
	if err := g.Multicast(ctx, []byte("job 1")); err != nil {
		panic(err)
	}
	gi, err := n.Describe(ctx, "jobs")
	if err != nil {
		panic(err)
	}
	fmt.Println("view", gi.View, "members", len(gi.Members), gi.Members[0].Name, "messages", gi.Msgs)
	if err := g.Leave(ctx); err != nil {
		panic(err)
	}
	gi, err = n.Describe(ctx, "jobs")
	if err != nil {
		panic(err)
	}
	fmt.Println("view", gi.View, "members", len(gi.Members), "removed, not reclaimed", len(gi.Retired))
	// Empty now: delete it, freeing its name and metadata for new groups.
	if err := n.Delete(ctx, "jobs"); err != nil {
		panic(err)
	}
	_, err = n.Describe(ctx, "jobs")
	fmt.Println(errors.Is(err, gcs.ErrNoGroup))
	// Output:
	// view 1 members 1 alice#1 messages 1
	// view 2 members 0 removed, not reclaimed 0
	// true
}

// MulticastAsync keeps many messages in flight from one goroutine: here at
// most 64, bounded by a semaphore whose slots the done callbacks give back
// (done must not block: it runs on the group's sending goroutine).
func ExampleGroup_MulticastAsync() {
	c, err := cluster.Start(cluster.Config{NoSync: true})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		panic(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: "bob"})
	if err != nil {
		panic(err)
	}
	defer n.Close()
	g, err := n.Join(ctx, "ticks", gcs.JoinOptions{})
	if err != nil {
		panic(err)
	}

	const total = 1000
	slots := make(chan struct{}, 64)
	failed := make(chan error, total)
	go func() {
		for i := range total {
			slots <- struct{}{}
			g.MulticastAsync(fmt.Appendf(nil, "tick %d", i), func(err error) {
				if err != nil {
					failed <- err
				}
				<-slots
			})
		}
	}()
	delivered := 0
	for ev := range g.Events() {
		if _, ok := ev.(*gcs.Message); ok {
			if delivered++; delivered == total {
				go g.Leave(ctx)
			}
		}
	}
	fmt.Println("delivered", delivered, "failed", len(failed))
	// Output:
	// delivered 1000 failed 0
}
