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

// hostJSON is one host of `tutti hosts --json`.
type hostJSON struct {
	ID        uint64   `json:"id"`
	Addr      string   `json:"addr"`
	Drained   bool     `json:"drained"`
	Answering bool     `json:"answering"`
	Replicas  int      `json:"replicas"`
	Memnodes  []uint64 `json:"memnodes"`
}

// hostsJSON is the --json output of `tutti hosts`.
type hostsJSON struct {
	Version uint64     `json:"directory_version"`
	Hosts   []hostJSON `json:"hosts"`
}

func newHosts(g *globals) *cobra.Command {
	var o adminOpts
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "List the hosts, whether they are drained and the replicas they hold",
		Long: `List every host of the directory (memnode 0): its address, whether it is in
service or drained (being taken out of service: no new replica goes on it),
whether it answers (every host is asked for at most 2 s), and the memnodes
it holds a replica of in the directory. See 'tutti host' to drain, undrain
or remove a host.`,
		Example: `  tutti hosts
  tutti hosts --seed 10.0.0.1:7400 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := o.connect(cmd, g)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			d, err := c.Directory(ctx)
			if err != nil {
				return &exitError{2, err}
			}
			return printHosts(cmd.OutOrStdout(), d, c.AnsweringHosts(ctx, d), o.asJSON)
		},
	}
	o.register(cmd, false)
	return cmd
}

func printHosts(out io.Writer, d *client.Directory, up map[uint64]bool, asJSON bool) error {
	res := hostsJSON{Version: d.Version, Hosts: []hostJSON{}}
	for _, h := range d.Hosts {
		mns := d.HostMemnodes(h.ID)
		if mns == nil {
			mns = []uint64{}
		}
		res.Hosts = append(res.Hosts, hostJSON{ID: h.ID, Addr: h.Addr, Drained: h.Drained, Answering: up[h.ID], Replicas: len(mns), Memnodes: mns})
	}
	if asJSON {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, string(b))
		return err
	}
	fmt.Fprintf(out, "directory version %d, %d hosts\n\n", d.Version, len(d.Hosts))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tADDRESS\tSTATE\tANSWERS\tREPLICAS\tMEMNODES")
	for _, h := range res.Hosts {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", h.ID, h.Addr, hostState(h.Drained), yesNo(h.Answering), h.Replicas, idList(h.Memnodes))
	}
	return tw.Flush()
}

func hostState(drained bool) string {
	if drained {
		return "drained"
	}
	return "in-service"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func idList(ids []uint64) string {
	if len(ids) == 0 {
		return "-"
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(id, 10)
	}
	return strings.Join(s, ",")
}

// parseHostID parses a HOST argument.
func parseHostID(a string) (uint64, error) {
	v, err := strconv.ParseUint(a, 10, 64)
	if err != nil || v == 0 {
		return 0, &exitError{2, fmt.Errorf("%q is not a host id (a positive integer, as 'tutti hosts' lists them)", a)}
	}
	return v, nil
}

func newHostCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Take a host out of service: drain, undrain, remove (see also: tutti hosts)",
		Long: `Take a host out of service while the cluster runs:

  1. tutti host drain HOST --move   mark it drained and move each of its
                                     replicas to another host, one at a time
  2. stop the host's process         (e.g. systemctl stop tutti)
  3. tutti host remove HOST          take it out of the directory

'tutti hosts' shows each host's state and replicas along the way.

A drained host gets no new replica: 'tutti memnode add' does not place
memnodes on it, and 'tutti replica add/move' to it are refused. Its replicas
stay where they are until moved. 'tutti host undrain' puts it back in
service. Each change is one minitransaction on the directory (memnode 0).

Exit status 0 when the directory changed; 1 when it refused the change (a
host id it does not list, removing a host that is not drained, still holds
replicas or still answers); 2 on bad arguments, an unreachable cluster, no
host to move a replica to, a move that did not converge within --timeout,
or a lost answer after which the directory changed again.`,
	}
	cmd.AddCommand(newHostDrain(g), newHostUndrain(g), newHostRemove(g))
	return commandGroup(cmd)
}

// drainMove is one replica moved off a drained host.
type drainMove struct {
	Memnode uint64 `json:"memnode"`
	To      uint64 `json:"to"`
}

func newHostDrain(g *globals) *cobra.Command {
	var (
		o          adminOpts
		move, wait bool
	)
	cmd := &cobra.Command{
		Use:   "drain HOST",
		Short: "Mark HOST drained; with --move, move its replicas to other hosts",
		Long: `Mark HOST drained: from now on no new replica goes on it ('tutti memnode add'
skips it, 'tutti replica add/move' to it are refused). The replicas it holds
stay until moved. Draining a drained host changes nothing, so the command
can be run again after a failure.

With --move, each memnode with a replica on HOST (in id order) has that
replica moved to the least-loaded host that answers, is not drained and
holds no replica of that memnode yet: one move at a time, each waited for
until the memnode's Raft voters match the directory (as 'tutti replica move
--wait'). The first failure stops the command (nonzero exit) with an error
saying what was moved and what is left on HOST; HOST stays drained.

Then, with --move or --wait, the command waits until no memnode's Raft
configuration still includes HOST (as the memnodes' leaders report it): the
host's process can then be stopped. Without --move that happens only once
its replicas are moved some other way ('tutti replica move').

--timeout bounds each step: the drain, each move with its wait, the final
--wait.`,
		Example: `  tutti host drain 3 --move
  tutti host drain 3 --move --wait --timeout 2m
  tutti host drain 3 --seed 10.0.0.1:7400 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			host, err := parseHostID(args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := o.connect(cmd, g)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			d, err := c.DrainHost(ctx, host)
			if err != nil {
				return adminErr(err)
			}
			out := cmd.OutOrStdout()
			if !o.asJSON {
				fmt.Fprintf(out, "host %d drained (directory version %d): no new replica goes on it\n", host, d.Version)
			}
			moved := []drainMove{}
			if move {
				if moved, d, err = moveOff(cmd, c, &o, d, host); err != nil {
					return err
				}
			}
			if wait || move {
				wctx, wcancel := context.WithTimeout(cmd.Context(), o.timeout)
				err := waitHostEmpty(wctx, c, host)
				wcancel()
				if err != nil {
					return &exitError{2, fmt.Errorf("host %d is drained, but %w", host, err)}
				}
			}
			left := d.HostMemnodes(host)
			if o.asJSON {
				if left == nil {
					left = []uint64{}
				}
				b, _ := json.Marshal(struct {
					Version uint64                `json:"directory_version"`
					Host    *client.DirectoryHost `json:"host"`
					Moved   []drainMove           `json:"moved"`
					Holds   []uint64              `json:"holds"`
				}{d.Version, d.Host(host), moved, left})
				fmt.Fprintln(out, string(b))
				return nil
			}
			switch {
			case len(left) > 0:
				fmt.Fprintf(out, "host %d still holds replicas of memnodes %v: move them with --move or 'tutti replica move'\n", host, left)
			case wait || move:
				fmt.Fprintf(out, "host %d holds no replica: stop its process, then 'tutti host remove %d'\n", host, host)
			default:
				fmt.Fprintf(out, "the directory places no replica on host %d: once its replicas have left (--wait, or 'tutti memnodes'), stop its process, then 'tutti host remove %d'\n", host, host)
			}
			return nil
		},
	}
	o.register(cmd, false)
	cmd.Flags().Lookup("timeout").Usage = "give up on a step (the drain, each move, the final wait) after this long"
	cmd.Flags().BoolVar(&move, "move", false, "move each of the host's replicas to another host, one at a time, each waited for (implies --wait)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until no memnode's Raft configuration includes the host")
	return cmd
}

// moveOff moves every replica the directory d places on host elsewhere
// (Directory.MoveTarget), one at a time, each waited for. It returns the
// moves and the directory as last written; its error says what was moved
// and what is left.
func moveOff(cmd *cobra.Command, c *client.Client, o *adminOpts, d *client.Directory, host uint64) ([]drainMove, *client.Directory, error) {
	out := cmd.OutOrStdout()
	todo := d.HostMemnodes(host)
	moved := []drainMove{}
	fail := func(i int, to uint64, err error) error {
		done := "none"
		if len(moved) > 0 {
			var s []string
			for _, m := range moved {
				s = append(s, fmt.Sprintf("memnode %d to host %d", m.Memnode, m.To))
			}
			done = strings.Join(s, ", ")
		}
		msg := fmt.Sprintf("host %d is drained; moved: %s; moving memnode %d's replica off it failed: %v", host, done, todo[i], err)
		left := todo[i:]
		if to != 0 {
			msg += fmt.Sprintf("; memnode %d is moving to host %d (in the directory, not converged)", todo[i], to)
			left = todo[i+1:]
		}
		msg += fmt.Sprintf("; still on host %d: memnodes %v; run 'tutti host drain %d --move' again to continue", host, left, host)
		code := 2
		if errors.Is(err, client.ErrDirectoryChange) {
			code = 1
		}
		return &exitError{code, errors.New(msg)}
	}
	for i, mn := range todo {
		ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
		to, nd, err := moveOne(ctx, c, mn, host)
		if err == nil {
			d = nd
			err = waitConverged(ctx, c, d, mn)
		}
		cancel()
		if err != nil {
			return nil, nil, fail(i, to, err)
		}
		moved = append(moved, drainMove{Memnode: mn, To: to})
		if !o.asJSON {
			fmt.Fprintf(out, "memnode %d: replica moved from host %d to host %d (directory version %d), replicas converged\n", mn, host, to, d.Version)
		}
	}
	return moved, d, nil
}

// moveOne moves memnode mn's replica off host to the host MoveTarget picks
// among those answering now. It returns that host (0 if the directory did
// not change) and the directory as written.
func moveOne(ctx context.Context, c *client.Client, mn, host uint64) (uint64, *client.Directory, error) {
	cur, err := c.Directory(ctx)
	if err != nil {
		return 0, nil, err
	}
	up := c.AnsweringHosts(ctx, cur)
	var to uint64
	d, err := c.UpdateDirectory(ctx, func(d *client.Directory) error {
		var err error
		if to, err = d.MoveTarget(mn, host, up); err != nil {
			return err
		}
		return d.MoveReplica(mn, host, to)
	})
	if err != nil {
		return 0, nil, err
	}
	return to, d, nil
}

// waitHostEmpty waits until no memnode has a replica on host, in the
// directory or in the Raft configuration its leader reports.
func waitHostEmpty(ctx context.Context, c *client.Client, host uint64) error {
	last := "the memnodes' state could not be read"
	for {
		_, states, err := c.MemnodeStatus(ctx)
		if err == nil {
			last = ""
			for _, s := range states {
				for _, r := range s.Replicas {
					if r.Host == host && last == "" {
						last = fmt.Sprintf("memnode %d still has a replica on it (%s)", s.ID, r.Role)
					}
				}
				if s.Leader == 0 && last == "" {
					last = fmt.Sprintf("memnode %d has no Raft leader, so whether its configuration still includes host %d is unknown", s.ID, host)
				}
			}
			if last == "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("its replicas did not leave before --timeout (%s): %w", last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func newHostUndrain(g *globals) *cobra.Command {
	var o adminOpts
	cmd := &cobra.Command{
		Use:   "undrain HOST",
		Short: "Put a drained HOST back in service",
		Long: `Put a drained HOST back in service: new memnodes and replicas may be placed on
it again. Replicas moved off it stay where they are. Undraining a host that
is not drained changes nothing.`,
		Example: `  tutti host undrain 3`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runHostChange(cmd, g, &o, args[0], (*client.Client).UndrainHost, "host %d is in service")
		},
	}
	o.register(cmd, false)
	return cmd
}

func newHostRemove(g *globals) *cobra.Command {
	var o adminOpts
	cmd := &cobra.Command{
		Use:   "remove HOST",
		Short: "Take a drained, empty, stopped HOST out of the directory",
		Long: `Remove HOST from the directory. Refused (exit status 1, nothing changed)
unless HOST is drained, holds no replica, and does not answer at its address
(stop its process first: 'tutti host drain HOST --move', stop it, then
remove it). A host removed while running anyway (it did not answer the
check) does not register itself again; it logs an error until stopped. A
removed host whose process is started again registers itself as a new host
in service, with no replicas.`,
		Example: `  tutti host remove 3
  tutti host remove 3 --seed 10.0.0.1:7400 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runHostChange(cmd, g, &o, args[0], (*client.Client).RemoveHost, "host %d removed from the directory")
		},
	}
	o.register(cmd, false)
	return cmd
}

// runHostChange runs undrain or remove: change applied to the host named
// by arg, then the outcome printed (msg formats the host id).
func runHostChange(cmd *cobra.Command, g *globals, o *adminOpts, arg string,
	change func(*client.Client, context.Context, uint64) (*client.Directory, error), msg string) error {
	host, err := parseHostID(arg)
	if err != nil {
		return err
	}
	c, ctx, cancel, err := o.connect(cmd, g)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.Close()
	d, err := change(c, ctx, host)
	if err != nil {
		return adminErr(err)
	}
	return printHostChange(cmd.OutOrStdout(), o, d, host, fmt.Sprintf(msg, host))
}

// printHostChange prints the outcome of undrain or remove.
func printHostChange(out io.Writer, o *adminOpts, d *client.Directory, host uint64, msg string) error {
	if o.asJSON {
		b, _ := json.Marshal(struct {
			Version uint64                `json:"directory_version"`
			Host    *client.DirectoryHost `json:"host"`
		}{d.Version, d.Host(host)})
		_, err := fmt.Fprintln(out, string(b))
		return err
	}
	_, err := fmt.Fprintf(out, "%s (directory version %d)\n", msg, d.Version)
	return err
}
