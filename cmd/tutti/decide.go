package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/client"
)

// newDecide is the operator's way out for a minitransaction recovery
// cannot decide (client.ErrExpired).
func newDecide(g *globals) *cobra.Command {
	var (
		o            adminOpts
		participants string
		commit       bool
		abort        bool
	)
	cmd := &cobra.Command{
		Use:   "decide TID --participants LIST (--commit | --abort)",
		Short: "Decide an in-doubt minitransaction that recovery cannot (past the memnode horizon)",
		Long: `Commit or abort a two-phase minitransaction that stays in doubt because a
participant has forgotten it: its recovery came later than the memnodes'
horizon (a memnode cut off for longer, or a coordinator clock far behind), so
recovery cannot tell whether it committed and leaves it in doubt, its locks
held, rather than risk committing it at one participant and aborting it at
another. Hosts log it at error level ("in-doubt minitransaction past the
memnode horizon", with the tid and its participants) and count it
(tutti_recovery_expired_total, tutti_recovery_stuck).

Only decide what you know: the application's own records, or the data at a
participant that applied the commit, tell whether it committed. A wrong
decision leaves the participants disagreeing. tutti decide first asks every
participant what it knows and refuses a decision that contradicts one of them
(a participant that reports the tid decided the other way or, for --commit,
one that never voted OK); then every participant still holding the tid in
doubt applies the decision. Asking is recovery's first phase, which fences a
participant that has not voted yet: decide only tids that are stuck.

TID and the participants are as logged (TID is CLIENT.SEQ@TIME). Exit
status 0 when every participant ends with the decision, including when
their answers already settle it that way (--abort of a tid no participant
voted OK for: asking fenced it, and it is aborted); 1 when refused (a
participant contradicts the decision, or the tid is forgotten everywhere
and none holds it in doubt); 2 on bad arguments, requests the memnodes
reject, or an unreachable cluster.`,
		Example: `  tutti decide 4711.42@1764553200123456789 --participants 1,2 --commit
  tutti decide 4711.43@1764553200223456789 --participants 0,2,3 --abort --seed 10.0.0.1:7400`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tid, err := parseTID(args[0])
			if err != nil {
				return &exitError{2, err}
			}
			mns, err := parseIDList(participants)
			if err != nil {
				return &exitError{2, err}
			}
			if commit == abort {
				return &exitError{2, errors.New("give exactly one of --commit and --abort")}
			}
			cl, ctx, cancel, err := o.connect(cmd, g)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			if err := cl.Decide(ctx, tid, mns, commit); err != nil {
				if errors.Is(err, client.ErrRefused) {
					return &exitError{1, err}
				}
				return &exitError{2, err}
			}
			what := "aborted"
			if commit {
				what = "committed"
			}
			if o.asJSON {
				b, _ := json.Marshal(map[string]any{"tid": tid.String(), "participants": mns, "outcome": what})
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %v at memnodes %v\n", what, tid, mns)
			return nil
		},
	}
	o.register(cmd, false)
	f := cmd.Flags()
	f.StringVar(&participants, "participants", "", "the tid's participants, comma-separated memnode ids (as logged)")
	f.BoolVar(&commit, "commit", false, "commit the tid")
	f.BoolVar(&abort, "abort", false, "abort the tid")
	return cmd
}

// parseTID parses CLIENT.SEQ@TIME (client.TID.String).
func parseTID(s string) (client.TID, error) {
	bad := fmt.Errorf("tid %q: want CLIENT.SEQ@TIME, as logged (e.g. 4711.42@1764553200123456789)", s)
	cs, tm, ok := strings.Cut(s, "@")
	if !ok {
		return client.TID{}, bad
	}
	c, seq, ok := strings.Cut(cs, ".")
	if !ok {
		return client.TID{}, bad
	}
	var t client.TID
	var err1, err2, err3 error
	t.Client, err1 = strconv.ParseUint(c, 10, 64)
	t.Seq, err2 = strconv.ParseUint(seq, 10, 64)
	t.Time, err3 = strconv.ParseInt(tm, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return client.TID{}, bad
	}
	return t, nil
}

// parseIDList parses comma-separated memnode ids, none twice.
func parseIDList(s string) ([]uint64, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("--participants: required (comma-separated memnode ids)")
	}
	ns, err := parseList("--participants", s, 0, math.MaxInt)
	if err != nil {
		return nil, err
	}
	out := make([]uint64, len(ns))
	for i, v := range ns {
		if slices.Contains(ns[:i], v) {
			return nil, fmt.Errorf("--participants: memnode %d named twice", v)
		}
		out[i] = uint64(v)
	}
	return out, nil
}
