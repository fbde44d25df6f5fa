// Command connsyncctl is the operator CLI of connsync: it reports a site's
// status and membership, changes its Raft configuration, and claims, looks up
// and locks connections, all through the Go client of package client.
//
//	connsyncctl [--addr H:P,...] [-o table|json] [--timeout 10s] COMMAND ...
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/connsync/connsync/client"
)

const (
	// envAddr names the environment variable that gives the default --addr.
	envAddr = "CONNSYNC_ADDR"
	// defaultAddr is where `connsyncd -dev` listens.
	defaultAddr = "127.0.0.1:7420"

	outputTable = "table"
	outputJSON  = "json"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the process exit code: 0, or 1
// with "Error: ..." on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	return 0
}

// globalFlags are the root's persistent flags.
type globalFlags struct {
	addr    string
	output  string
	timeout time.Duration
}

// flagNames of the globals, read back by subcommands through cmd.Flags().
const (
	flagAddr    = "addr"
	flagOutput  = "output"
	flagTimeout = "timeout"
)

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	addr := os.Getenv(envAddr)
	if addr == "" {
		addr = defaultAddr
	}
	root := &cobra.Command{
		Use:   "connsyncctl",
		Short: "Operate a connsync site",
		Long: `connsyncctl talks to the connsyncd members of one site over gRPC: it reports
status and membership, changes the Raft configuration, and claims, looks up and
locks connections.

A connection is given as PROTO SRC DST, e.g. "tcp 10.0.0.1:1234 192.0.2.1:80";
PROTO is a name (tcp, udp, sctp, icmp, icmpv6, gre, esp) or a number 0-255, and
IPv6 endpoints are written [IP]:PORT.`,
		SilenceUsage:  true, // errors are ours to print, once, as "Error: ..."
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.validate()
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w\nRun '%s --help' for usage.", err, cmd.CommandPath())
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.addr, flagAddr, addr, "comma-separated gRPC addresses (host:port) of members of the site; default from $"+envAddr)
	pf.StringVarP(&g.output, flagOutput, "o", outputTable, "output format: table or json")
	pf.DurationVar(&g.timeout, flagTimeout, 10*time.Second, "deadline of each call, retries included")

	root.AddCommand(
		newStatusCommand(),
		newMembersCommand(),
		newRaftCommand(),
		newJoinCommand(),
		newRemoveCommand(),
		newTransferLeaderCommand(),
		newBucketsCommand(),
		newRebalanceCommand(),
		newDrainCommand(),
		newSyncCommand(),
		newSitesCommand(),
		newSiteCommand(),
		newClaimCommand(),
		newReleaseCommand(),
		newLookupCommand(),
		newLockCommand(),
		newUnlockCommand(),
	)
	return root
}

func (g *globalFlags) validate() error {
	switch g.output {
	case outputTable, outputJSON:
	default:
		return fmt.Errorf("invalid --output %q: valid values are %q and %q", g.output, outputTable, outputJSON)
	}
	if g.timeout <= 0 {
		return fmt.Errorf("invalid --timeout %v: must be > 0", g.timeout)
	}
	if _, err := parseAddrs(g.addr); err != nil {
		return err
	}
	return nil
}

// globals reads the root's persistent flags as seen by cmd.
func globals(cmd *cobra.Command) (*globalFlags, error) {
	f := cmd.Flags()
	var g globalFlags
	var err error
	if g.addr, err = f.GetString(flagAddr); err != nil {
		return nil, err
	}
	if g.output, err = f.GetString(flagOutput); err != nil {
		return nil, err
	}
	if g.timeout, err = f.GetDuration(flagTimeout); err != nil {
		return nil, err
	}
	return &g, g.validate()
}

// parseAddrs splits a comma-separated address list, ignoring blanks.
func parseAddrs(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no member address: set --addr or %s (host:port, comma-separated)", envAddr)
	}
	return out, nil
}

// withClient runs fn with a client of the site named by the global flags, a
// context bounded by --timeout, and a printer for cmd's output, and turns
// gRPC errors into readable ones.
func withClient(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client, p *printer) error) error {
	g, err := globals(cmd)
	if err != nil {
		return err
	}
	addrs, _ := parseAddrs(g.addr) // validated above
	return withAddrs(cmd, g, addrs, fn)
}

// withAddr is withClient talking to the one member at addr.
func withAddr(cmd *cobra.Command, addr string, fn func(ctx context.Context, c *client.Client, p *printer) error) error {
	g, err := globals(cmd)
	if err != nil {
		return err
	}
	return withAddrs(cmd, g, []string{addr}, fn)
}

func withAddrs(cmd *cobra.Command, g *globalFlags, addrs []string, fn func(ctx context.Context, c *client.Client, p *printer) error) error {
	c, err := client.New(client.Config{Addrs: addrs, Timeout: g.timeout})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
	defer cancel()
	return readableError(fn(ctx, c, newPrinter(cmd.OutOrStdout(), g.output)), addrs, g.timeout)
}

// readableError formats a gRPC status as "Code: message" and adds a hint
// when no member could be reached. Other errors pass unchanged.
func readableError(err error, addrs []string, timeout time.Duration) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w (no answer within --timeout %v)", err, timeout)
		}
		return err
	}
	msg := fmt.Sprintf("%v: %s", st.Code(), st.Message())
	switch st.Code() {
	case codes.Unavailable:
		if m := st.Message(); strings.Contains(m, "connection refused") || strings.Contains(m, "while dialing") {
			msg += fmt.Sprintf("\nis connsyncd running at %s? (set --addr or %s)", strings.Join(addrs, ","), envAddr)
		}
	case codes.DeadlineExceeded:
		msg += fmt.Sprintf(" (no answer within --timeout %v)", timeout)
	}
	return errors.New(msg)
}

// exactArgs is cobra.ExactArgs with a message that says what is expected.
func exactArgs(n int, want string) cobra.PositionalArgs {
	return rangeArgs(n, n, want)
}

// rangeArgs is cobra.RangeArgs with a message that says what is expected.
func rangeArgs(lo, hi int, want string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return fmt.Errorf("%s (got %d argument%s)\nRun '%s --help' for usage.",
				want, len(args), plural(len(args)), cmd.CommandPath())
		}
		return nil
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
