// Command tutti runs and talks to a tutti cluster: `tutti up` starts a local
// cluster in one process, `tutti server` runs one host of a real cluster,
// `tutti mtx` executes a minitransaction, `tutti bench` measures.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// DefaultSeed is where `tutti up` serves clients, and where every client
// command looks unless --seed or TUTTI_SEED says otherwise.
const DefaultSeed = "127.0.0.1:7400"

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		var ee *exitError
		code := 2
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintln(os.Stderr, errorLine(err))
		os.Exit(code)
	}
}

// errorLine is how main reports err: one line, prefixed "tutti: " once,
// though the client's errors begin with "tutti: " themselves (also where
// another error wraps them). Errors of several lines (errors.Join,
// memberlist's "N errors occurred:" lists) are joined with "; ".
func errorLine(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimPrefix(strings.TrimSpace(l), "* ")
		if l == "" {
			continue
		}
		if n := len(parts); n > 0 && strings.HasSuffix(parts[n-1], ":") {
			parts[n-1] += " " + l
		} else {
			parts = append(parts, l)
		}
	}
	msg := strings.Join(parts, "; ")
	msg = strings.NewReplacer(": tutti: ", ": ", "; tutti: ", "; ").Replace(msg)
	return "tutti: " + strings.TrimPrefix(msg, "tutti: ")
}

type globals struct {
	logLevel  string
	logFormat string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "tutti",
		Short: "Group communication on Sinfonia memnodes replicated with Raft",
		Long: `tutti keeps shared state in memnodes (byte address spaces, each a Raft group)
changed only by Sinfonia minitransactions, and builds group membership and
totally ordered multicast on top.

Start a local cluster with 'tutti up' (or one 'tutti server' per host), list
its processes with 'tutti members' and its memnodes with 'tutti memnodes',
run minitransactions with 'tutti mtx', take a host out of service with
'tutti host drain' and 'tutti host remove' ('tutti hosts' lists the
hosts), multicast to a group with 'tutti send' and follow it with 'tutti
tail' ('tutti groups' lists the groups), and measure it with 'tutti bench
mtx', 'tutti bench mcast' and 'tutti bench members'.

Exit status: 0 on success; 1 when the cluster answered no: a compare
failed (mtx), a decision was refused (decide), no such group ('tutti
group NAME', with or without --delete), evicted from the group (tail),
the gossip seeds refused the agent or its membership ended (agent), the
directory refused the change (memnode add, replica add/remove/move, host
drain/undrain/remove: unknown memnode or host, last replica, a drained
host...); 2 on any other error: bad usage, the cluster unreachable, a
timeout.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// A --timeout of 0 or less expired before the first request, and the
		// command then blamed the cluster ("no seed answered").
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if f := cmd.Flags().Lookup("timeout"); f != nil && f.Value.Type() == "duration" {
				if d, err := time.ParseDuration(f.Value.String()); err == nil && d <= 0 {
					return &exitError{2, fmt.Errorf("--timeout %v: must be positive (e.g. --timeout 10s)", d)}
				}
			}
			// gRPC dials an address without a port at 443, and the error
			// then names an address the operator never gave.
			if f := cmd.Flags().Lookup("seed"); f != nil {
				for _, a := range splitSeeds(f.Value.String()) {
					if err := checkHostPort(a); err != nil {
						return &exitError{2, fmt.Errorf("--seed %q: %v (env TUTTI_SEED; e.g. 10.0.0.1:7400)", a, err)}
					}
				}
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "console", "log format: console or json")
	root.AddCommand(newUp(g), newServer(g), newMtx(g), newBench(g))
	root.AddCommand(newMemnodes(g), newMemnodeCmd(g), newReplicaCmd(g), newDecide(g))
	root.AddCommand(newHosts(g), newHostCmd(g))
	root.AddCommand(newMembers(g), newAgent(g))
	root.AddCommand(newSend(g), newTail(g), newGroupInfo(g), newGroups(g))
	showUsageOnArgErrors(root)
	return root
}

// showUsageOnArgErrors makes cmd and its subcommands name the command and
// its usage line when their arguments are wrong: cobra alone says
// "accepts 2 arg(s), received 1".
func showUsageOnArgErrors(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			err := check(c, args)
			if err != nil && !strings.Contains(err.Error(), c.CommandPath()) {
				return fmt.Errorf("%s: %v (usage: %s)", c.CommandPath(), err, c.UseLine())
			}
			return err
		}
	}
	for _, sub := range cmd.Commands() {
		showUsageOnArgErrors(sub)
	}
}

func (g *globals) logger() (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(g.logLevel)
	if err != nil || g.logLevel == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	var l zerolog.Logger
	switch g.logFormat {
	case "json":
		l = zerolog.New(os.Stderr)
	case "console":
		// Colors only for a terminal: a file or a journal would keep the
		// escape sequences.
		fi, err := os.Stderr.Stat()
		tty := err == nil && fi.Mode()&os.ModeCharDevice != 0
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly, NoColor: !tty})
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format must be console or json, not %q", g.logFormat)
	}
	return l.Level(lvl).With().Timestamp().Logger(), nil
}

// commandGroup makes cmd, a command that only holds subcommands, refuse
// anything that is not one of them: without a Run, cobra prints the help
// and exits 0 for 'tutti memnode remove 1', which a script would take for
// success. With no argument it still prints the help.
func commandGroup(cmd *cobra.Command) *cobra.Command {
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for %q; its commands: %s (see '%s --help')",
				args[0], c.CommandPath(), strings.Join(subcommandNames(c), ", "), c.CommandPath())
		}
		return nil
	}
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	return cmd
}

// subcommandNames lists cmd's visible subcommands.
func subcommandNames(cmd *cobra.Command) []string {
	var out []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			out = append(out, c.Name())
		}
	}
	return out
}

// seedFlag registers --seed with TUTTI_SEED and DefaultSeed as fallbacks.
func seedFlag(fs *pflag.FlagSet, p *string) {
	def := DefaultSeed
	if v := os.Getenv("TUTTI_SEED"); v != "" {
		def = v
	}
	fs.StringVar(p, "seed", def, "address of any host of the cluster (env TUTTI_SEED)")
}

// benchSeedFlag registers --seed for the benchmarks, whose default is not
// DefaultSeed but a cluster of their own: empty unless TUTTI_SEED is set.
func benchSeedFlag(fs *pflag.FlagSet, p *string, writes string) {
	fs.StringVar(p, "seed", os.Getenv("TUTTI_SEED"),
		"drive the cluster at this address (env TUTTI_SEED) instead of starting one in this process; "+writes+" (default: a cluster of its own)")
}

// checkHostPort says what is wrong with addr as a host:port to dial.
func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("want host:port with a port in 1..65535, not %q", port)
	}
	return nil
}

func splitSeeds(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// stopSignals is what stops 'tutti up' and 'tutti server' cleanly.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

// notifyStop returns a context that ends at SIGINT or SIGTERM. Call it
// before starting what must be stopped cleanly: until then the signal
// kills the process as it stands (a temporary data directory left behind,
// agents not leaving).
func notifyStop(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, stopSignals...)
}
