// Command chat is a terminal group chat on a tutti group: it joins the group,
// multicasts each line typed on standard input, and prints every message
// and membership change in the group's total order, the same at every
// participant:
//
//	[view 3] alice: hello
//	* bob joined (view 4: alice, bob)
//	* alice left (view 5: bob)
//
// Ctrl-C or end of input leaves the group gracefully. With --gossip (the
// gossip address of a cluster host, 127.0.0.1:8400 for `tutti up`) the
// process also joins the membership service, so a chat that crashes is
// removed from the others' view instead of staying in it.
//
//	go run ./examples/chat --name alice --group lobby
//
// See README.md. It uses only public tutti packages.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/membership"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return
	case errors.Is(err, errUsage):
		os.Exit(2) // the flag package printed what is wrong
	case err != nil:
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// errUsage: the command line is wrong and the flag package said why.
var errUsage = errors.New("usage")

// parseFlags reads the command line; usage messages go to stderr.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	seed := os.Getenv("TUTTI_SEED")
	if seed == "" {
		seed = "127.0.0.1:7400"
	}
	name := os.Getenv("USER")
	if name == "" {
		name = "anonymous"
	}
	var cfg config
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.seed, "seed", seed, "address of any host of the tutti cluster (env TUTTI_SEED)")
	fs.StringVar(&cfg.name, "name", name, "your name (the process id in the group: unique among running chats)")
	fs.StringVar(&cfg.group, "group", "lobby", "chat room (group) to join")
	fs.StringVar(&cfg.gossip, "gossip", "", "gossip seeds (127.0.0.1:8400 for 'tutti up'): crashed chats are then removed from the view")
	fs.StringVar(&cfg.gossipBind, "gossip-bind", "127.0.0.1:0", "gossip listen address with --gossip")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, err
		}
		return config{}, errUsage
	}
	// 'chat alice' would otherwise join as $USER.
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q: chat takes only flags (your name is --name %s)", fs.Arg(0), fs.Arg(0))
	}
	return cfg, nil
}

type config struct {
	seed, name, group  string
	gossip, gossipBind string
}

// run chats until ctx ends or in is exhausted, then leaves the group.
func run(ctx context.Context, cfg config, in io.Reader, out io.Writer) error {
	jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl, err := client.New(jctx, client.Config{Seeds: strings.Split(cfg.seed, ",")})
	if err != nil {
		return err
	}
	defer cl.Close()
	var mn *membership.Node
	if cfg.gossip != "" {
		mn, err = membership.Start(jctx, membership.Config{ID: cfg.name, Client: cl, Bind: cfg.gossipBind,
			Seeds: strings.Split(cfg.gossip, ",")})
		if err != nil {
			return err
		}
		defer func() {
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			mn.Leave(lctx) // best effort: others declare us dead otherwise
		}()
	}
	n, err := gcs.Open(jctx, gcs.Config{Client: cl, ID: cfg.name, Membership: mn})
	if err != nil {
		return err
	}
	defer n.Close()
	g, err := n.Join(jctx, cfg.group, gcs.JoinOptions{})
	if err != nil {
		return err
	}

	// Typing: each line is one message, sent in order.
	typed := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			if strings.TrimSpace(line) == "" {
				continue
			}
			if err := g.Multicast(ctx, []byte(line)); err != nil {
				typed <- err
				return
			}
		}
		typed <- sc.Err()
	}()

	// Events must be consumed promptly (the channel is unbuffered), also
	// while leaving: Leave returns once everything before our leave view
	// has been delivered here.
	left := make(chan error, 1)
	leaving := false
	leave := func() {
		if !leaving {
			leaving = true
			go func() {
				lctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				left <- g.Leave(lctx)
			}()
		}
	}
	var runErr error
	events := g.Events()
	for events != nil {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if e, isEv := ev.(*gcs.Evicted); isEv {
				runErr = fmt.Errorf("%w in view %d: %s", gcs.ErrEvicted, e.View, e.Reason)
			}
			fmt.Fprint(out, format(ev))
		case err := <-typed:
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, gcs.ErrNotMember) {
				runErr = err
			}
			leave()
		case <-ctx.Done():
			leave()
		}
	}
	if leaving {
		runErr = errors.Join(runErr, <-left)
	}
	return runErr
}

// display is a member name without its "#incarnation".
func display(member string) string {
	name, _, _ := strings.Cut(member, "#")
	return name
}

// format renders one event as the lines the chat prints.
func format(ev gcs.Event) string {
	switch ev := ev.(type) {
	case *gcs.Message:
		return fmt.Sprintf("[view %d] %s: %s\n", ev.View, display(ev.Sender), ev.Payload)
	case *gcs.View:
		names := make([]string, len(ev.Members))
		for i, m := range ev.Members {
			names[i] = display(m)
		}
		tail := fmt.Sprintf("(view %d: %s)", ev.ID, strings.Join(names, ", "))
		var b strings.Builder
		for _, m := range ev.Joined {
			fmt.Fprintf(&b, "* %s joined %s\n", display(m), tail)
		}
		// Departures: "left", "removed by NAME", or members found dead
		// ("failed", also removed by a "join").
		how := "failed"
		switch {
		case ev.Reason == "left":
			how = "left"
		case strings.HasPrefix(ev.Reason, "removed by "):
			how = "was removed by " + display(strings.TrimPrefix(ev.Reason, "removed by "))
		}
		for _, m := range ev.Left {
			fmt.Fprintf(&b, "* %s %s %s\n", display(m), how, tail)
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "* %s %s\n", ev.Reason, tail)
		}
		return b.String()
	case *gcs.Evicted:
		return fmt.Sprintf("* you were removed from the group in view %d: %s\n", ev.View, ev.Reason)
	}
	return ""
}
