package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// defaultID is "<prefix>-<hostname>-<pid>", cut to gcs.MaxIDLen.
func defaultID(prefix string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	id := strings.ReplaceAll(fmt.Sprintf("%s-%s-%d", prefix, host, os.Getpid()), "#", "-")
	if len(id) > gcs.MaxIDLen {
		id = id[:gcs.MaxIDLen]
	}
	return id
}

// groupConn is a transient membership: client, gcs node, one group.
type groupConn struct {
	cl *client.Client
	n  *gcs.Node
	g  *gcs.Group
}

// joinGroup connects to the cluster and joins group as id, asking for no
// state.
func joinGroup(ctx context.Context, seed, id, group string, log zerolog.Logger, tf *tlsFlags) (*groupConn, error) {
	dial, err := tf.loadDial()
	if err != nil {
		return nil, err
	}
	cl, err := client.New(ctx, client.Config{Seeds: splitSeeds(seed), Logger: log, DialOptions: dial})
	if err != nil {
		return nil, explainConnErr(err, dial != nil)
	}
	n, err := gcs.Open(ctx, gcs.Config{Client: cl, ID: id, Logger: log})
	if err != nil {
		return nil, errors.Join(err, cl.Close())
	}
	g, err := n.Join(ctx, group, gcs.JoinOptions{})
	if err != nil {
		return nil, errors.Join(err, n.Close(), cl.Close())
	}
	return &groupConn{cl: cl, n: n, g: g}, nil
}

// leave leaves the group (the caller drains Events meanwhile) and closes.
func (c *groupConn) leave(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return errors.Join(c.g.Leave(ctx), c.n.Close(), c.cl.Close())
}

// maxSendLine is the longest line 'tutti send' reads from standard input:
// the largest message Multicast accepts.
const maxSendLine = gcs.MaxBatchBytesLimit - 4

func newSend(g *globals) *cobra.Command {
	var (
		seed    string
		id      string
		timeout time.Duration
		tf      tlsFlags
	)
	cmd := &cobra.Command{
		Use:   "send GROUP [MESSAGE...]",
		Short: "Multicast messages to a group",
		Long: `Join GROUP as a transient member, multicast each MESSAGE argument (or, with
none, each line of standard input, until its end or Ctrl-C) in order, and
leave. Each message is delivered to every member of the group in the
group's total order; send returns once all of them are ordered (durable),
and after leaving. Ctrl-C stops the input: the message being sent is still
sent (within --timeout), the rest is not; a second Ctrl-C kills send.

The member's process id is --id (default send-<hostname>-<pid>); members see
it in views as ID#N. The group is created if it does not exist.`,
		Example: `  tutti send lobby "hello, world"
  tutti send lobby one two three        # three messages, in this order
  printf 'a\nb\n' | tutti send lobby    # one message per line
  tutti tail lobby &  tutti send lobby hi`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			jctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			c, err := joinGroup(jctx, seed, id, args[0], log, &tf)
			if err != nil {
				return &exitError{2, err}
			}
			// Events must be consumed: this member delivers the group's
			// traffic (its own messages included) until it left.
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				for range c.g.Events() {
				}
			}()
			// An interrupt stops the input, not the message being sent:
			// its Multicast runs to its end (at most --timeout), so a line
			// is either sent and reported or not sent, never left in
			// doubt by the interrupt; a second interrupt kills as usual.
			go func() {
				<-ctx.Done()
				stop()
			}()
			send := func(m string) error {
				mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
				defer cancel()
				if err := c.g.Multicast(mctx, []byte(m)); err != nil {
					return fmt.Errorf("multicast: %w", err)
				}
				return nil
			}
			if len(args) > 1 {
				for _, m := range args[1:] {
					if ctx.Err() != nil {
						break // interrupted
					}
					if err = send(m); err != nil {
						break
					}
				}
			} else {
				err = sendLines(ctx, cmd.InOrStdin(), send)
			}
			err = errors.Join(err, c.leave(timeout))
			<-drained
			if err != nil {
				return &exitError{2, err}
			}
			return nil
		},
	}
	f := cmd.Flags()
	seedFlag(f, &seed)
	tf.register(f)
	f.StringVar(&id, "id", defaultID("send"), "process id of the transient member")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up joining, sending one message or leaving after this long")
	return cmd
}

// sendLines sends each line of in until its end or until ctx ends (an
// interrupt while waiting for a line ends the input as its end does; the
// read blocked on in is abandoned).
func sendLines(ctx context.Context, in io.Reader, send func(string) error) error {
	lines := make(chan string)
	readErr := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(lines)
		// A line may be as long as the largest message gcs takes.
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), maxSendLine+1)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-stop:
				return
			}
		}
		readErr <- sc.Err()
	}()
	n := 0
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				err := <-readErr
				if errors.Is(err, bufio.ErrTooLong) {
					err = fmt.Errorf("line %d of standard input is longer than %d bytes, the largest message a group takes; the %d lines before it were sent",
						n+1, maxSendLine, n)
				}
				return err
			}
			n++
			if err := send(l); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// tailEvent is one line of `tutti tail --json`; field names are the JSON
// contract.
type tailEvent struct {
	Type string `json:"type"` // "message", "view" or "evicted"
	View uint64 `json:"view"`
	// message
	Pos     uint64 `json:"pos,omitempty"`
	Sender  string `json:"sender,omitempty"`
	Seq     uint64 `json:"seq,omitempty"`
	Payload string `json:"payload,omitempty"` // the bytes if valid UTF-8
	// PayloadBase64 replaces Payload for bytes that are not UTF-8.
	PayloadBase64 string `json:"payload_base64,omitempty"`
	// view
	Members []string `json:"members,omitempty"`
	Joined  []string `json:"joined,omitempty"`
	Left    []string `json:"left,omitempty"`
	// view and evicted
	Reason string `json:"reason,omitempty"`
}

// printEvent writes ev as text or as one JSON line.
func printEvent(w io.Writer, ev gcs.Event, asJSON bool) {
	var te tailEvent
	switch ev := ev.(type) {
	case *gcs.Message:
		te = tailEvent{Type: "message", View: ev.View, Pos: ev.Pos, Sender: ev.Sender, Seq: ev.Seq}
		if utf8.Valid(ev.Payload) {
			te.Payload = string(ev.Payload)
		} else {
			te.PayloadBase64 = base64.StdEncoding.EncodeToString(ev.Payload)
		}
		if !asJSON {
			p := te.Payload
			if te.PayloadBase64 != "" {
				p = "base64:" + te.PayloadBase64
			}
			fmt.Fprintf(w, "[view %d #%d] %s: %s\n", ev.View, ev.Pos, ev.Sender, p)
			return
		}
	case *gcs.View:
		te = tailEvent{Type: "view", View: ev.ID, Members: ev.Members, Joined: ev.Joined, Left: ev.Left, Reason: ev.Reason}
		if !asJSON {
			var ch []string
			for _, m := range ev.Joined {
				ch = append(ch, "+"+m)
			}
			for _, m := range ev.Left {
				ch = append(ch, "-"+m)
			}
			fmt.Fprintf(w, "* view %d: %s (%s: %s)\n", ev.ID, strings.Join(ev.Members, ", "), ev.Reason, strings.Join(ch, " "))
			return
		}
	case *gcs.Evicted:
		te = tailEvent{Type: "evicted", View: ev.View, Reason: ev.Reason}
		if !asJSON {
			fmt.Fprintf(w, "* evicted in view %d: %s\n", ev.View, ev.Reason)
			return
		}
	default:
		return
	}
	b, _ := json.Marshal(te)
	fmt.Fprintln(w, string(b))
}

func newTail(g *globals) *cobra.Command {
	var (
		tf      tlsFlags
		seed    string
		id      string
		asJSON  bool
		fromNow bool
		count   int
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "tail GROUP",
		Short: "Print a group's views and messages as they are delivered",
		Long: `Join GROUP as a member and print every view and message it delivers, in the
group's total order, until interrupted (then it leaves gracefully) or, with
--count, until that many messages arrived.

A member delivers from the view that admits it on: messages ordered before
tail joined are not shown (--from-now, the only mode: gcs offers no replay
of the order log). The first line is that view. The group is created if
it does not exist.

Text: '[view V #POS] SENDER: PAYLOAD' and '* view V: MEMBERS (REASON: +joined
-left)'. --json prints one object per line:
  {"type":"message","view":V,"pos":P,"sender":"ID#N","seq":S,"payload":"..."}
  {"type":"view","view":V,"members":[...],"joined":[...],"left":[...],"reason":"join"}
  {"type":"evicted","view":V,"reason":"..."}
pos is the message's position in the group's total order (the same at every
member), seq the sender's sequence number; a payload that is not UTF-8 is
given as payload_base64 instead.`,
		Example: `  tutti tail lobby
  tutti tail lobby --json | jq -r 'select(.type=="message") | .payload'
  tutti tail lobby --count 10     # exit after ten messages`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !fromNow {
				return &exitError{2, errors.New("--from-now=false: replay of messages ordered before joining is not supported")}
			}
			if count < 0 {
				return &exitError{2, fmt.Errorf("--count %d: want a number of messages, or 0 to print until interrupted", count)}
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			jctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			c, err := joinGroup(jctx, seed, id, args[0], log, &tf)
			if err != nil {
				return &exitError{2, err}
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			left := make(chan error, 1)
			leaving := false
			leave := func() {
				if !leaving {
					leaving = true
					go func() { left <- c.leave(timeout) }()
				}
			}
			var evicted error
			msgs := 0
			for {
				var ev gcs.Event
				var ok bool
				select {
				case ev, ok = <-c.g.Events():
				case <-ctx.Done():
					leave()
					ev, ok = <-c.g.Events()
				}
				if !ok {
					break
				}
				if count > 0 && msgs >= count {
					continue // --count reached: drain until the leave is done
				}
				printEvent(out, ev, asJSON)
				if err := out.Flush(); err != nil { // stdout closed: stop
					leave()
				}
				switch ev := ev.(type) {
				case *gcs.Message:
					if msgs++; count > 0 && msgs >= count {
						leave()
					}
				case *gcs.Evicted:
					evicted = fmt.Errorf("%w in view %d: %s", gcs.ErrEvicted, ev.View, ev.Reason)
				}
			}
			var err2 error
			if leaving {
				err2 = <-left
			} else { // evicted or closed under us
				err2 = errors.Join(c.n.Close(), c.cl.Close())
			}
			if err := errors.Join(evicted, err2); err != nil && !errors.Is(err, gcs.ErrEvicted) {
				return &exitError{2, err}
			} else if evicted != nil {
				return &exitError{1, evicted}
			}
			return nil
		},
	}
	f := cmd.Flags()
	seedFlag(f, &seed)
	tf.register(f)
	f.StringVar(&id, "id", defaultID("tail"), "process id of the member")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	f.BoolVar(&fromNow, "from-now", true, "start at the view that admits tail (the only mode; see above)")
	f.IntVar(&count, "count", 0, "exit after this many messages (0: until interrupted)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up joining or leaving after this long")
	return cmd
}
