package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/gcs"
)

func newGroupInfo(g *globals) *cobra.Command {
	var o adminOpts
	var del bool
	cmd := &cobra.Command{
		Use:   "group GROUP",
		Short: "Show a group's view, order log and members, or delete an empty group",
		Long: `Read GROUP's metadata from its home memnode and print it: the current view,
the messages ordered so far, the part of the order log still kept (head to
tail, in bytes), every member of the view with the position it last
published as delivered (every GCInterval) and how many bytes of the log
that position is behind the tail, and the members removed from the
view whose slot and queue are not reclaimed yet. It does not join the group
and changes nothing.

A member whose delivered position stays behind holds the log's head (and,
once the log is full, every sender). Removed members are reclaimed by the
oldest member once the log is trimmed past their removal, or by the last
member to leave.

--delete deletes GROUP instead. It must be empty: no member, and no removed
member whose slot and queue are not reclaimed yet (the last member's Leave
reclaims them, in the background for a moment when other leavers were
still delivering). Its name and its metadata (the order log included) are
then free for new groups; a group created again under that name starts a
new history, its view ids and positions going on from the old numbers.
Each memnode's index holds 1024 group names: programs that make up names
(one group per session, say) delete their groups when done.

Exit status: 0, 1 if the group does not exist, 2 on other errors (with
--delete, a group that is not empty).`,
		Example: `  tutti group lobby
  tutti group lobby --json | jq '.members[].name'
  tutti group session-4711 --delete`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, ctx, done, err := o.openGCS(cmd, g, "group")
			if err != nil {
				return err
			}
			defer done()
			if del {
				err := n.Delete(ctx, args[0])
				switch {
				case errors.Is(err, gcs.ErrNoGroup):
					return &exitError{1, fmt.Errorf("no group %q", args[0])}
				case err != nil:
					return &exitError{2, err}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted group %s\n", args[0])
				return nil
			}
			gi, err := n.Describe(ctx, args[0])
			switch {
			case errors.Is(err, gcs.ErrNoGroup):
				return &exitError{1, fmt.Errorf("no group %q", args[0])}
			case err != nil:
				return &exitError{2, err}
			}
			if o.asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(groupJSON(gi))
			}
			printGroupInfo(cmd.OutOrStdout(), gi)
			return nil
		},
	}
	o.register(cmd, false)
	cmd.Flags().BoolVar(&del, "delete", false, "delete the group (it must be empty) instead of showing it")
	return cmd
}

type groupMemberJSON struct {
	Name         string `json:"name"`
	JoinedView   uint64 `json:"joined_view"`
	Delivered    uint64 `json:"delivered"`
	DeliveredLog uint64 `json:"delivered_log"`
	QueueMemnode uint64 `json:"queue_memnode"`
	QueueAddr    uint64 `json:"queue_addr"`
	QueueBytes   uint64 `json:"queue_bytes"`
	RemovedAt    uint64 `json:"removed_at,omitempty"`
	Left         bool   `json:"left,omitempty"`
}

type groupInfoJSON struct {
	Name        string            `json:"name"`
	Home        uint64            `json:"home_memnode"`
	View        uint64            `json:"view"`
	Msgs        uint64            `json:"messages"`
	Head        uint64            `json:"log_head"`
	Tail        uint64            `json:"log_tail"`
	LogCapacity uint64            `json:"log_capacity"`
	Members     []groupMemberJSON `json:"members"`
	Retired     []groupMemberJSON `json:"removed_not_reclaimed"`
}

func groupJSON(gi gcs.GroupInfo) groupInfoJSON {
	conv := func(ms []gcs.MemberInfo) []groupMemberJSON {
		out := []groupMemberJSON{}
		for _, m := range ms {
			out = append(out, groupMemberJSON{Name: m.Name, JoinedView: m.JoinedView, Delivered: m.Delivered, DeliveredLog: m.DeliveredLog,
				QueueMemnode: m.Queue.Memnode, QueueAddr: m.Queue.Addr, QueueBytes: m.Queue.Len, RemovedAt: m.RemovedAt, Left: m.Left})
		}
		return out
	}
	return groupInfoJSON{Name: gi.Name, Home: gi.Home, View: gi.View, Msgs: gi.Msgs, Head: gi.Head, Tail: gi.Tail,
		LogCapacity: gi.LogCapacity, Members: conv(gi.Members), Retired: conv(gi.Retired)}
}

func printGroupInfo(out io.Writer, gi gcs.GroupInfo) {
	fmt.Fprintf(out, "group %s on memnode %d: view %d, %d messages ordered\n", gi.Name, gi.Home, gi.View, gi.Msgs)
	fmt.Fprintf(out, "order log: positions %d to %d kept (%d of %d bytes)\n", gi.Head, gi.Tail, gi.Tail-gi.Head, gi.LogCapacity)
	if len(gi.Members) == 0 {
		fmt.Fprintln(out, "members: none")
	} else {
		fmt.Fprintln(out, "members, oldest first:")
		w := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
		fmt.Fprintln(w, "  NAME\tJOINED VIEW\tDELIVERED\tDELIVERED LOG\tBEHIND (LOG BYTES)\tQUEUE")
		for _, m := range gi.Members {
			fmt.Fprintf(w, "  %s\t%d\t%d\t%d\t%d\tmemnode %d, %d bytes\n", m.Name, m.JoinedView, m.Delivered, m.DeliveredLog,
				gi.Tail-min(gi.Tail, m.DeliveredLog), m.Queue.Memnode, m.Queue.Len)
		}
		w.Flush()
	}
	if len(gi.Retired) > 0 {
		fmt.Fprintln(out, "removed, not reclaimed yet:")
		w := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
		fmt.Fprintln(w, "  NAME\tREMOVED AT\tBY\tDELIVERED LOG")
		for _, m := range gi.Retired {
			by := "removal"
			if m.Left {
				by = "leave"
			}
			fmt.Fprintf(w, "  %s\t%d\t%s\t%d\n", m.Name, m.RemovedAt, by, m.DeliveredLog)
		}
		w.Flush()
	}
}

// printGroups prints one line per group.
func printGroups(out io.Writer, gis []gcs.GroupInfo) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tHOME\tVIEW\tMEMBERS\tMESSAGES\tLOG KEPT\tREMOVED, NOT RECLAIMED")
	for _, gi := range gis {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d of %d B\t%d\n", gi.Name, gi.Home, gi.View, len(gi.Members), gi.Msgs,
			gi.Tail-gi.Head, gi.LogCapacity, len(gi.Retired))
	}
	return tw.Flush()
}

func newGroups(g *globals) *cobra.Command {
	var o adminOpts
	cmd := &cobra.Command{
		Use:   "groups",
		Short: "List the groups with their views, members and order logs",
		Long: `List every group in the memnodes' group indexes with its home memnode,
current view, number of members, messages ordered so far, the bytes of
order log still kept and the removed members whose slot and queue are not
reclaimed yet. tutti group GROUP shows one group in full. Nothing is
joined or changed.`,
		Example: `  tutti groups
  tutti groups --json | jq -r '.[] | select(.members | length == 0) | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, ctx, done, err := o.openGCS(cmd, g, "groups")
			if err != nil {
				return err
			}
			defer done()
			gis, err := n.Groups(ctx)
			if err != nil {
				return &exitError{2, err}
			}
			if o.asJSON {
				out := []groupInfoJSON{}
				for _, gi := range gis {
					out = append(out, groupJSON(gi))
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
			}
			return printGroups(cmd.OutOrStdout(), gis)
		},
	}
	o.register(cmd, false)
	return cmd
}

// openGCS connects as the directory commands do and opens a gcs Node that
// only reads group metadata (it joins nothing); done closes both.
func (o *adminOpts) openGCS(cmd *cobra.Command, g *globals, idPrefix string) (n *gcs.Node, ctx context.Context, done func(), err error) {
	c, ctx, cancel, err := o.connect(cmd, g)
	if err != nil {
		return nil, nil, nil, err
	}
	log, _ := g.logger()
	if n, err = gcs.Open(ctx, gcs.Config{Client: c, ID: defaultID(idPrefix), Logger: log}); err != nil {
		c.Close()
		cancel()
		return nil, nil, nil, &exitError{2, err}
	}
	return n, ctx, func() { n.Close(); c.Close(); cancel() }, nil
}
