package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/client"
)

// adminOpts are the flags every directory command shares.
type adminOpts struct {
	seed    string
	asJSON  bool
	timeout time.Duration
	wait    bool
	tls     tlsFlags
}

func (o *adminOpts) register(cmd *cobra.Command, wait bool) {
	f := cmd.Flags()
	seedFlag(f, &o.seed)
	f.BoolVar(&o.asJSON, "json", false, "print the result as JSON")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
	o.tls.register(f)
	if wait {
		f.BoolVar(&o.wait, "wait", false, "wait until the memnode's Raft replicas match the directory")
	}
}

// connect returns a client and a context bounded by --timeout.
func (o *adminOpts) connect(cmd *cobra.Command, g *globals) (*client.Client, context.Context, context.CancelFunc, error) {
	log, err := g.logger()
	if err != nil {
		return nil, nil, nil, err
	}
	tm, err := o.tls.load()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	c, err := client.New(ctx, client.Config{Seeds: splitSeeds(o.seed), Logger: log, DialOptions: tm.dialOptions()})
	if err != nil {
		cancel()
		return nil, nil, nil, &exitError{2, explainConnErr(err, tm != nil)}
	}
	return c, ctx, cancel, nil
}

func newMemnodes(g *globals) *cobra.Command {
	var o adminOpts
	cmd := &cobra.Command{
		Use:   "memnodes",
		Short: "List the memnodes, their replicas, leaders and replica health",
		Long: `List every memnode of the directory (memnode 0) with the hosts holding its
replicas, the Raft leader, and each replica's health as the leader sees it:

  up       replicating and within a few entries of the leader
  lagging  reachable but behind (catching up, receiving a snapshot, no leader)
  down     unreachable or not answering the leader

Roles: leader, voter, learner (a new replica catching up before it votes),
pending (in the directory, not yet in the Raft configuration). A replica the
directory no longer lists is shown until its removal completes. "converged"
says whether the Raft voters match the directory. The hosts follow, each
in service or drained (see 'tutti host drain') with the number of replicas
the directory places on it; 'tutti hosts' also asks which answer.`,
		Example: `  tutti memnodes
  tutti memnodes --seed 10.0.0.1:7400 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := o.connect(cmd, g)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			d, states, err := c.MemnodeStatus(ctx)
			if err != nil {
				return &exitError{2, err}
			}
			return printMemnodes(cmd.OutOrStdout(), d, states, o.asJSON)
		},
	}
	o.register(cmd, false)
	return cmd
}

// memnodesJSON is the --json output of `tutti memnodes`.
type memnodesJSON struct {
	Version  uint64                 `json:"directory_version"`
	Config   client.DirectoryConfig `json:"config"`
	Hosts    []client.DirectoryHost `json:"hosts"`
	Memnodes []client.MemnodeState  `json:"memnodes"`
}

func printMemnodes(out io.Writer, d *client.Directory, states []client.MemnodeState, asJSON bool) error {
	if asJSON {
		if states == nil {
			states = []client.MemnodeState{}
		}
		b, err := json.MarshalIndent(memnodesJSON{Version: d.Version, Config: d.Config, Hosts: d.Hosts, Memnodes: states}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, string(b))
		return err
	}
	fmt.Fprintf(out, "directory version %d, %d hosts, %d memnodes\n\n", d.Version, len(d.Hosts), len(states))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMNODE\tLEADER\tCONVERGED\tREPLICAS (host:role:health)")
	for _, m := range states {
		var reps []string
		for _, r := range m.Replicas {
			s := fmt.Sprintf("%d:%s:%s", r.Host, r.Role, r.Health)
			if !r.InDirectory {
				s += "(leaving)"
			}
			reps = append(reps, s)
		}
		leader := "-"
		if m.Leader != 0 {
			leader = strconv.FormatUint(m.Leader, 10)
		}
		fmt.Fprintf(tw, "%d\t%s\t%v\t%s\n", m.ID, leader, m.Converged, strings.Join(reps, " "))
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tADDRESS\tSTATE\tREPLICAS")
	for _, h := range d.Hosts {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\n", h.ID, h.Addr, hostState(h.Drained), len(d.HostMemnodes(h.ID)))
	}
	return tw.Flush()
}

func newMemnodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "memnode",
		Short: "Change the set of memnodes (see also: tutti memnodes, tutti replica)",
	}
	var (
		o        adminOpts
		replicas string
	)
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a memnode to the running cluster",
		Long: `Add a memnode with the next free id. Its replicas go on the hosts given with
--replicas, or on the least-loaded hosts that answer (as many as the
directory's default replica count; every host is asked for at most 2 s, and
one that does not answer, e.g. stopped or decommissioned, is never picked).
The change is one minitransaction on the directory in memnode 0; the hosts
start the new Raft group within their poll interval. With --wait, the command
waits until the group has a leader and its voters match the directory, and
fails (exit status 2) if that does not happen within --timeout.

Exit status 0 when the directory changed; 1 when it refused the change (a
host id it does not list, a host given twice); 2 on bad arguments, an
unreachable cluster, fewer answering hosts than replicas without --replicas
(nothing changed), a --wait that timed out, or a lost answer after which the
directory changed again, so whether the memnode was added is unknown (see
'tutti memnodes').`,
		Example: `  tutti memnode add
  tutti memnode add --replicas 2,3,4 --wait
  tutti memnode add --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var hosts []uint64
			if strings.TrimSpace(replicas) != "" {
				for _, p := range strings.Split(replicas, ",") {
					h, err := strconv.ParseUint(strings.TrimSpace(p), 10, 64)
					if err != nil || h == 0 {
						return &exitError{2, fmt.Errorf("--replicas: %q is not a host id", p)}
					}
					hosts = append(hosts, h)
				}
			}
			c, ctx, cancel, err := o.connect(cmd, g)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			var up map[uint64]bool
			if len(hosts) == 0 {
				d, err := c.Directory(ctx)
				if err != nil {
					return &exitError{2, err}
				}
				up = c.AnsweringHosts(ctx, d)
			}
			var id uint64
			d, err := c.UpdateDirectory(ctx, func(d *client.Directory) error {
				reps := hosts
				if len(reps) == 0 {
					var err error
					if reps, err = d.PlaceMemnode(up); err != nil {
						return err
					}
				}
				var err error
				id, err = d.AddMemnode(reps)
				return err
			})
			if err != nil {
				return adminErr(err)
			}
			return finish(cmd, ctx, c, &o, d, id, fmt.Sprintf("memnode %d added on hosts %v", id, d.Memnode(id).Replicas))
		},
	}
	o.register(add, true)
	add.Flags().StringVar(&replicas, "replicas", "", "comma-separated host ids for the replicas (default: least-loaded hosts that answer)")
	cmd.AddCommand(add)
	return commandGroup(cmd)
}

func newReplicaCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Add, remove or move a memnode's replicas online",
		Long: `Change where a memnode's replicas live while the cluster runs. Each command
is one minitransaction on the directory (memnode 0); the leader of the
memnode's Raft group then changes the group one step at a time (a new replica
joins as a learner, catches up from a snapshot, and becomes a voter before any
old replica leaves), never leaving fewer than a healthy majority.

Exit status 0 when the directory changed; 1 when it refused the change (a
memnode or host id it does not list, a host that already holds or does not
hold the replica, the last replica); 2 on bad arguments, an unreachable
cluster, or a lost answer after which the directory changed again, so
whether the change is in it is unknown (see 'tutti memnodes').`,
	}
	var o adminOpts
	parse := func(args []string) ([]uint64, error) {
		out := make([]uint64, len(args))
		for i, a := range args {
			v, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				return nil, &exitError{2, fmt.Errorf("%q is not an id", a)}
			}
			out[i] = v
		}
		return out, nil
	}
	mk := func(use, short, example string, nargs int, apply func(d *client.Directory, a []uint64) error, done func(a []uint64) string) *cobra.Command {
		c := &cobra.Command{
			Use:     use,
			Short:   short,
			Example: example,
			Args:    cobra.ExactArgs(nargs),
			RunE: func(cmd *cobra.Command, args []string) error {
				a, err := parse(args)
				if err != nil {
					return err
				}
				cl, ctx, cancel, err := o.connect(cmd, g)
				if err != nil {
					return err
				}
				defer cancel()
				defer cl.Close()
				d, err := cl.UpdateDirectory(ctx, func(d *client.Directory) error { return apply(d, a) })
				if err != nil {
					return adminErr(err)
				}
				return finish(cmd, ctx, cl, &o, d, a[0], done(a))
			},
		}
		o.register(c, true)
		return c
	}
	cmd.AddCommand(
		mk("add MEMNODE HOST", "Add a replica of MEMNODE on HOST", "  tutti replica add 1 4 --wait", 2,
			func(d *client.Directory, a []uint64) error { return d.AddReplica(a[0], a[1]) },
			func(a []uint64) string { return fmt.Sprintf("replica of memnode %d added on host %d", a[0], a[1]) }),
		mk("remove MEMNODE HOST", "Remove MEMNODE's replica on HOST (not the last one)", "  tutti replica remove 1 4", 2,
			func(d *client.Directory, a []uint64) error { return d.RemoveReplica(a[0], a[1]) },
			func(a []uint64) string { return fmt.Sprintf("replica of memnode %d on host %d removed", a[0], a[1]) }),
		mk("move MEMNODE HOST TOHOST", "Move MEMNODE's replica from HOST to TOHOST (add, catch up, then remove)",
			"  tutti replica move 1 1 4 --wait\n  tutti replica move 0 3 5 --seed 10.0.0.1:7400 --json", 3,
			func(d *client.Directory, a []uint64) error { return d.MoveReplica(a[0], a[1], a[2]) },
			func(a []uint64) string {
				return fmt.Sprintf("replica of memnode %d moving from host %d to host %d", a[0], a[1], a[2])
			}),
	)
	return commandGroup(cmd)
}

func adminErr(err error) error {
	if errors.Is(err, client.ErrDirectoryChange) {
		return &exitError{1, err}
	}
	return &exitError{2, err}
}

// finish optionally waits for the memnode's Raft replicas to match the
// directory, then prints what happened.
func finish(cmd *cobra.Command, ctx context.Context, c *client.Client, o *adminOpts, d *client.Directory, mn uint64, msg string) error {
	converged := false
	if o.wait {
		if err := waitConverged(ctx, c, d, mn); err != nil {
			return &exitError{2, fmt.Errorf("%s, but %w", msg, err)}
		}
		converged = true
	}
	out := cmd.OutOrStdout()
	if o.asJSON {
		m := d.Memnode(mn)
		b, _ := json.Marshal(struct {
			Version   uint64                   `json:"directory_version"`
			Memnode   *client.DirectoryMemnode `json:"memnode"`
			Converged *bool                    `json:"converged,omitempty"`
		}{d.Version, m, map[bool]*bool{true: &converged}[o.wait]})
		fmt.Fprintln(out, string(b))
		return nil
	}
	fmt.Fprintf(out, "%s (directory version %d)\n", msg, d.Version)
	if o.wait {
		fmt.Fprintln(out, "replicas converged")
	} else {
		fmt.Fprintln(out, "the hosts apply it within their poll interval; watch with 'tutti memnodes'")
	}
	return nil
}

// waitConverged waits until memnode mn's Raft voters are the replicas d
// (the directory as written) gives it; the error says what it last saw.
func waitConverged(ctx context.Context, c *client.Client, d *client.Directory, mn uint64) error {
	last := "its state could not be read"
	for {
		_, states, err := c.MemnodeStatus(ctx)
		if err == nil {
			for _, s := range states {
				if s.ID != mn {
					continue
				}
				switch {
				case s.Converged:
					return nil
				case s.Leader == 0:
					last = "it has no Raft leader (are its hosts up? see 'tutti memnodes')"
				default:
					last = fmt.Sprintf("its Raft voters are %v, the directory's replicas %v", s.Voters, d.Memnode(mn).Replicas)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the replicas did not converge before --timeout (%s): %w", last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
