// Command connsync-bench measures connsync as it runs in production, one
// process per member: it starts its own site of real connsyncd processes on
// 127.0.0.1 (free ports, data in a temporary directory), drives one
// scenario against it, prints the figures and removes everything it
// started, on success, on errors and on Ctrl-C alike.
//
//	connsync-bench [-members 3] [-json] [-connsyncd PATH] [-keep] [-plot DIR] [-profile DIR] SCENARIO [flags]
//
//	claims    -clients 64 -grpc-conns 0 -duration 10s -batch 1 -via leader|member
//	          figures: claims_per_sec, p50_ms, p99_ms (per RPC)
//	locks     -clients 64 -grpc-conns 0 -duration 10s -batch 1 -via leader|member
//	          figures: locks_per_sec (acquire+release cycles), p50_ms, p99_ms (per cycle)
//	failover  -kill member|leader -trials 10
//	          figures: p50_ms, p99_ms, max_ms (SIGKILL to the last of the
//	          victim's buckets reported active at its new primary)
//	lock-takeover -trials 10
//	          figures: p50_ms, p99_ms, max_ms (SIGKILL of a lock's holder
//	          to a waiter's first granted acquire)
//	replicate -rate 100000 -conns 200000 -duration 10s [-sites 2 -delay 50ms]
//	          figures: deltas_per_sec, lag_p50_ms, lag_p99_ms (publish to
//	          the answer confirming the batch at its local backup), with
//	          -sites 2 also remote_lag_p50_ms, remote_lag_p99_ms (at the
//	          other site's remote backups)
//	persistence -conns 1000000 -failovers 5
//	          figures: synced, checked, lost, persistence (every connection
//	          of a killed member's buckets read at the new primaries)
//	site-failover -trials 5 -delay 50ms
//	          figures: p50_ms, p99_ms, max_ms (SIGKILL of every member of the
//	          active site to the last bucket active at the other site; two
//	          sites of -members each and a witness)
//	selective-sync -delay 1s -rate 50000
//	          figures: cpu_saved_fraction, bytes_saved_fraction (replication
//	          CPU and bytes the delay classes save on a short/long mix)
//	demo      [-conns 20000 -rate 5000 -pause 10s -cycles 0]: two sites under
//	          traffic with a live status line; kills a member, then the
//	          active site, says how long each took, until Ctrl-C
//	all       [-quick]: every scenario above on one site, then each target of
//	          DESIGN section 7 with its figure; -quick runs small sizes and
//	          fails only on a gross regression (3x off a target, 10x
//	          for rates and figures under sustained load)
//	memory    -conns 1000000
//	          figures: bytes_per_conn (a member's live heap growth per
//	          connection it holds as primary or backup), max_bytes_per_conn
//
// The contract of its output: by default a human-readable table on stdout.
// With -json, stdout carries one JSON object per line: events
// ({"event": ...}) while it runs, and as the LAST line the scenario's
// figures ({"scenario": ..., ...}). While a scenario runs, one progress
// line on stderr is rewritten in place (\r) four times a second when stderr
// is a terminal (not in logs). The exit status is 0 on success, 1 with
// "Error: ..." on stderr otherwise.
//
// Without -connsyncd, connsyncd is built with `go build` into a temporary
// directory, which works when run from a connsync checkout
// (`go run ./cmd/connsync-bench claims`). Flags may be written -name or
// --name. Percentiles are nearest-rank over every recorded latency.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/connsync/connsync/internal/proccluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C ends the tool at once (its members get SIGKILL from the kernel)
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(normalizeArgs(args))
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	return 0
}

// normalizeArgs lets Go-style single-dash long flags (-clients 8) through
// cobra, which wants --clients: every argument of the form -name (a letter
// and more) before "--" gets a second dash. No flag has a one-letter form
// but -h, which is left alone.
func normalizeArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' && (a[1] >= 'a' && a[1] <= 'z' || a[1] >= 'A' && a[1] <= 'Z') {
			a = "-" + a
		}
		out = append(out, a)
	}
	return out
}

// globalOpts are the root's persistent flags.
type globalOpts struct {
	members    int
	json       bool
	connsyncd  string
	keep       bool
	metrics    bool     // set by scenarios that read the members' heaps (Config.Metrics)
	args       []string // more connsyncd flags, set by scenarios that start sites of their own
	plot       string   // -plot DIR
	logLevel   string   // the members' -log-level
	profile    string   // -profile DIR: members' CPU profiles
	profileFor time.Duration
	profileAt  string // start: from the scenario's start; kill: from its first SIGKILL
}

// reporter returns the command's reporter.
func (g *globalOpts) reporter(stdout, stderr io.Writer) *reporter {
	r := newReporter(stdout, stderr, g.json, true)
	r.plotDir = g.plot
	return r
}

// maxMembers keeps a mistyped -members from starting hundreds of processes.
const maxMembers = 32

// quorumReason is why the scenarios that kill a member need three.
const quorumReason = "a site of fewer loses its Raft quorum when one member is killed"

// noBackupReason is why the data-plane scenarios need two.
const noBackupReason = "a site of one keeps no local backups"

// validate checks the global flags; a scenario needs at least minMembers
// members, for the reason why.
func (g *globalOpts) validate(minMembers int, scenario, why string) error {
	switch {
	case g.members < 1:
		return fmt.Errorf("-members must be >= 1 (got %d)", g.members)
	case g.members > maxMembers:
		return fmt.Errorf("-members must be <= %d (got %d): every member is a process on this machine", maxMembers, g.members)
	case g.members < minMembers:
		return fmt.Errorf("-members must be >= %d for %s (got %d): %s", minMembers, scenario, g.members, why)
	case g.profileAt != "start" && g.profileAt != "kill":
		return fmt.Errorf("-profile-at must be start or kill (got %q)", g.profileAt)
	}
	if g.connsyncd != "" {
		fi, err := os.Stat(g.connsyncd)
		if err != nil {
			return fmt.Errorf("-connsyncd %s: %w (give the path of a connsyncd binary, or leave -connsyncd out to build one)", g.connsyncd, err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("-connsyncd %s: not an executable file", g.connsyncd)
		}
	}
	return nil
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	g := &globalOpts{}
	root := &cobra.Command{
		Use:   "connsync-bench",
		Short: "Measure connsync on a site of real connsyncd processes it starts itself",
		Long: `connsync-bench starts its own site of real connsyncd processes on 127.0.0.1
(free ports, data in a temporary directory), drives one scenario against it,
prints the figures and removes everything it started, also on Ctrl-C and errors.

Output: a table on stdout, or with -json one JSON object per line whose last
line holds the scenario's figures. A progress line is shown on stderr when it
is a terminal.
Flags may be written -name or --name.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w\nRun '%s --help' for usage.", err, cmd.CommandPath())
	})
	pf := root.PersistentFlags()
	pf.IntVar(&g.members, "members", 3, "connsyncd members in the site")
	pf.BoolVar(&g.json, "json", false, "print one JSON object per line; the last line holds the figures")
	pf.StringVar(&g.connsyncd, "connsyncd", "", "connsyncd binary to run (default: build it with `go build` from this checkout)")
	pf.StringVar(&g.plot, "plot", "", "write an SVG chart per scenario into this directory (failover time distributions, replication lag over time)")
	pf.StringVar(&g.profile, "profile", "", "save every member's CPU profile over the scenario's first -profile-for into this directory (go tool pprof)")
	pf.DurationVar(&g.profileFor, "profile-for", 5*time.Second, "how long -profile profiles")
	pf.StringVar(&g.profileAt, "profile-at", "start", "when -profile starts: start (the scenario's start) or kill (the surviving members, from the scenario's first SIGKILL of a member: failover, persistence)")
	pf.StringVar(&g.logLevel, "member-log-level", "warn", "the members' -log-level (their logs are in the temporary directory; see -keep)")
	pf.BoolVar(&g.keep, "keep", false, "keep the temporary directory (members' data and logs) and print its path")
	root.AddCommand(newClaimsCommand(g, stdout, stderr), newLocksCommand(g, stdout, stderr), newFailoverCommand(g, stdout, stderr),
		newLockTakeoverCommand(g, stdout, stderr), newMemoryCommand(g, stdout, stderr), newReplicateCommand(g, stdout, stderr),
		newPersistenceCommand(g, stdout, stderr), newSiteFailoverCommand(g, stdout, stderr),
		newSelectiveCommand(g, stdout, stderr), newAllCommand(g, stdout, stderr), newDemoCommand(g, stdout, stderr))
	return root
}

// noArgs rejects positional arguments with a message saying what to do.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q: %s takes only flags\nRun '%s --help' for usage.", args[0], cmd.Name(), cmd.CommandPath())
	}
	return nil
}

// site is a started cluster and how to end it.
type site struct {
	c       *proccluster.Cluster
	cleanup func() // stops the members and removes temporary files; idempotent
}

// startSite builds or finds connsyncd, starts g.members members (automatic
// rebalancing off, so no rebalance runs during a measurement; the site is
// balanced by asking for one while it settles), and waits until the site
// is settled. The caller must call cleanup on every path.
func startSite(ctx context.Context, g *globalOpts, rep *reporter) (*site, error) {
	s := &site{}
	var cleanups []func()
	var once sync.Once
	s.cleanup = func() {
		once.Do(func() {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		})
	}
	bin, rm, err := connsyncdBinary(ctx, g, rep)
	cleanups = append(cleanups, rm)
	if err != nil {
		return s, err
	}
	g.connsyncd = bin // scenarios that start more processes (all's site-failover) use it too
	began := time.Now()
	stopProgress := rep.progress(func() string {
		return fmt.Sprintf("starting %d connsyncd members ... %.0fs", g.members, time.Since(began).Seconds())
	})
	c, err := proccluster.Start(ctx, proccluster.Config{Binary: bin, Members: g.members, Keep: g.keep,
		Args: append([]string{"-auto-rebalance=false"}, g.args...), Metrics: g.metrics || g.profile != "", LogLevel: g.logLevel, Stderr: rep.stderrWriter()})
	if err != nil {
		stopProgress()
		return s, err
	}
	s.c = c
	cleanups = append(cleanups, func() {
		if err := c.Stop(); err != nil {
			rep.event("stop_error", field{"error", err.Error()})
		}
		if g.keep {
			rep.event("kept", field{"dir", c.Dir()})
		}
	})
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = c.WaitSettled(sctx, true)
	stopProgress()
	if err != nil {
		return s, err
	}
	rep.event("site_ready", field{"members", g.members}, field{"dir", c.Dir()}, field{"start_s", round(time.Since(began).Seconds(), 2)})
	return s, nil
}

// connsyncdBinary returns -connsyncd, or builds connsyncd into a temporary
// directory that cleanup removes.
func connsyncdBinary(ctx context.Context, g *globalOpts, rep *reporter) (bin string, cleanup func(), err error) {
	if g.connsyncd != "" {
		return g.connsyncd, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "connsync-bench-bin-")
	if err != nil {
		return "", func() {}, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	stopProgress := rep.progress(func() string { return "building connsyncd (go build) ..." })
	bin, err = proccluster.Build(ctx, dir)
	stopProgress()
	if err != nil {
		return "", cleanup, fmt.Errorf("%w\n(connsync-bench takes the binary as -connsyncd PATH)", err)
	}
	rep.event("built", field{"connsyncd", bin})
	return bin, cleanup, nil
}

// scenarioRun starts a site, runs fn on it and reports its figures.
func scenarioRun(cmd *cobra.Command, g *globalOpts, stdout, stderr io.Writer, fn func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error)) error {
	ctx := cmd.Context()
	rep := g.reporter(stdout, stderr)
	s, err := startSite(ctx, g, rep)
	defer s.cleanup()
	if err == nil {
		var fig record
		wait := func() {}
		switch {
		case g.profile == "":
		case g.profileAt == "kill": // the survivors' CPU from the first SIGKILL
			var once sync.Once
			ctx = withBeforeKill(ctx, func(victim string) {
				once.Do(func() { wait = profileMembers(ctx, s.c, g.profile, cmd.Name(), g.profileFor, rep, victim) })
			})
		default: // the members' CPU over the scenario's first seconds
			wait = profileMembers(ctx, s.c, g.profile, cmd.Name(), g.profileFor, rep, "")
		}
		fig, err = fn(ctx, s.c, rep)
		wait() // its events before the figures, which must be the last line
		if err == nil {
			s.cleanup() // before the figures, which must be the last line
			rep.figures(fig)
			return nil
		}
	}
	if errors.Is(err, proccluster.ErrMemberDied) && !g.keep {
		err = fmt.Errorf("%w\n(the members' logs are removed on exit; run again with -keep to keep them)", err)
	}
	return interrupted(ctx, err)
}

// ownSitesRun runs a scenario that starts the sites it needs itself (fn)
// and reports its figures.
func ownSitesRun(cmd *cobra.Command, g *globalOpts, stdout, stderr io.Writer, fn func(ctx context.Context, rep *reporter) (record, error)) error {
	ctx := cmd.Context()
	rep := g.reporter(stdout, stderr)
	fig, err := fn(ctx, rep)
	if err != nil {
		return interrupted(ctx, err)
	}
	rep.figures(fig)
	return nil
}

// interrupted says so when an error came from Ctrl-C.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("interrupted; members stopped and temporary files removed (%v)", err)
	}
	return err
}

// loadFlags are the flags shared by claims and locks.
type loadFlags struct {
	clients   int
	grpcConns int // gRPC connections the clients share; 0: one per client
	duration  time.Duration
	batch     int
	via       string
}

// connCount is how many gRPC connections the clients use.
func (l loadFlags) connCount() int {
	if l.grpcConns == 0 {
		return l.clients
	}
	return l.grpcConns
}

func (l *loadFlags) register(cmd *cobra.Command, batchHelp string) {
	f := cmd.Flags()
	f.IntVar(&l.clients, "clients", 64, "concurrent clients, each with one RPC outstanding")
	f.IntVar(&l.grpcConns, "grpc-conns", 0, "gRPC connections the clients share, client i using connection i mod grpc-conns (3 with 3 members: one per member, as each member's firewall holds one); 0: one per client")
	f.DurationVar(&l.duration, "duration", 10*time.Second, "how long to drive load")
	f.IntVar(&l.batch, "batch", 1, batchHelp)
	f.StringVar(&l.via, "via", viaLeader, "where clients send: leader (straight to the Raft leader) or member (each connection to one member's connsyncd, which forwards to the leader, as a firewall does)")
}

const (
	viaLeader = "leader"
	viaMember = "member"
	// maxBatch is ClaimBatch's limit (ownership.proto).
	maxBatch = 10000
)

func (l *loadFlags) validate() error {
	switch {
	case l.clients < 1:
		return fmt.Errorf("-clients must be >= 1 (got %d)", l.clients)
	case l.clients > 10000:
		return fmt.Errorf("-clients must be <= 10000 (got %d)", l.clients)
	case l.grpcConns < 0 || l.grpcConns > l.clients:
		return fmt.Errorf("-grpc-conns must be between 0 (one per client) and -clients %d (got %d)", l.clients, l.grpcConns)
	case l.duration <= 0:
		return fmt.Errorf("-duration must be > 0, e.g. 10s (got %v)", l.duration)
	case l.batch < 1:
		return fmt.Errorf("-batch must be >= 1 (got %d)", l.batch)
	case l.batch > maxBatch:
		return fmt.Errorf("-batch must be <= %d, the most keys one batch call takes (got %d)", maxBatch, l.batch)
	case l.via != viaLeader && l.via != viaMember:
		return fmt.Errorf("-via must be %q or %q (got %q)", viaLeader, viaMember, l.via)
	}
	return nil
}

func newClaimsCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var l loadFlags
	cmd := &cobra.Command{
		Use:   "claims",
		Short: "Claims per second and per-RPC latency of fresh connection claims",
		Long: `claims drives -clients closed-loop clients for -duration; each claims fresh,
distinct connections (every claim is a real write) on behalf of a member of the
site, -batch per RPC (1: Claim, one RPC per claim; more: ClaimBatch).
Figures: claims_per_sec (successful claims / wall time), p50_ms and p99_ms
(per RPC, nearest rank over every RPC).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(1, "claims", ""); err != nil {
				return err
			}
			return l.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runClaims(ctx, c, l, rep)
			})
		},
	}
	l.register(cmd, "claims per RPC: 1 sends Claim (one RPC per claim), more send ClaimBatch")
	return cmd
}

func newLocksCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var l loadFlags
	cmd := &cobra.Command{
		Use:   "locks",
		Short: "Lock cycles (acquire + release) per second and their latency",
		Long: `locks drives -clients closed-loop clients for -duration; each acquires a lock
on a fresh connection key and releases it with the granted token, one RPC each
(-batch 1: AcquireLock, ReleaseLock), or -batch locks per RPC (AcquireLockBatch
of fresh keys, then ReleaseLockBatch of those granted).
Figures: locks_per_sec (completed cycles / wall time), p50_ms and p99_ms of a
unit (one cycle, or one batch of cycles; nearest rank).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(1, "locks", ""); err != nil {
				return err
			}
			return l.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runLocks(ctx, c, l, rep)
			})
		},
	}
	l.register(cmd, "locks per RPC: 1 sends AcquireLock and ReleaseLock, more send AcquireLockBatch and ReleaseLockBatch")
	return cmd
}

// failoverFlags are the failover scenario's flags.
type failoverFlags struct {
	kill   string
	trials int
	mirror bool
}

func (f *failoverFlags) validate() error {
	if f.kill != "member" && f.kill != "leader" {
		return fmt.Errorf("-kill must be member or leader (got %q)", f.kill)
	}
	if f.trials < 1 {
		return fmt.Errorf("-trials must be >= 1 (got %d)", f.trials)
	}
	return nil
}

func newFailoverCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var f failoverFlags
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Time from SIGKILL of a member to its last bucket active at its new primary",
		Long: `failover runs -trials trials. Each SIGKILLs one connsyncd (-kill member: a
non-leader, round robin; -kill leader: the Raft leader) and measures from the
kill to the moment the LAST bucket the victim was primary of is reported active
by DataPlaneService.WatchActivations on its new primary (a stream is open on
every surviving member before the kill). The victim then restarts from its data
directory and the next trial starts once the site is settled again (every bucket
with a live primary and a synced backup, no move under way, balanced).
With -mirror (the default) the streams are mirror streams: this process keeps
each member's copy of the states it backs up, as a firewall would, every stream
has caught up before the kill, and an activation carries only the epoch; with
-mirror=false each activation carries the bucket's states, and the clock stops
when the last of them has arrived.
Figures: p50_ms, p99_ms, max_ms (nearest rank over the trials).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(3, "failover", quorumReason); err != nil {
				return err
			}
			return f.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runFailover(ctx, c, f, rep)
			})
		},
	}
	cmd.Flags().StringVar(&f.kill, "kill", "member", "whom to SIGKILL: member (a non-leader) or leader")
	cmd.Flags().IntVar(&f.trials, "trials", 10, "number of kills")
	cmd.Flags().BoolVar(&f.mirror, "mirror", true, "keep a mirror of the backed-up states in this process, as a firewall would (WatchActivations mirror): activations carry only the epoch; false: the states travel with each activation")
	return cmd
}

func newLockTakeoverCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var f lockTakeoverFlags
	cmd := &cobra.Command{
		Use:   "lock-takeover",
		Short: "Time from SIGKILL of a lock's holder to a waiter being granted the lock",
		Long: `lock-takeover runs -trials trials. In each, a non-leader member (round robin)
holds a lock (TTL 30 s), a waiter acting for the leader's member asks for the
same lock in a closed loop, and the holder's connsyncd is SIGKILLed; the figure
is from the kill to the waiter's first granted acquire (the site fails the
holder and drops its locks; the TTL plays no part). The holder then restarts
and the site settles before the next trial.
Figures: p50_ms, p99_ms, max_ms (nearest rank over the trials).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(3, "lock-takeover", quorumReason); err != nil {
				return err
			}
			if f.trials < 1 {
				return fmt.Errorf("-trials must be >= 1 (got %d)", f.trials)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runLockTakeover(ctx, c, f, rep)
			})
		},
	}
	cmd.Flags().IntVar(&f.trials, "trials", 10, "number of kills")
	return cmd
}

func newMemoryCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var conns int
	cmd := &cobra.Command{
		Use:   "memory",
		Short: "Heap per connection held in the members' connection tables",
		Long: `memory reads every member's live heap (a garbage collection forced through
its /debug/pprof/heap, served with -metrics-addr and -pprof), publishes -conns
connections (60-byte states) to their primaries, waits until each is confirmed
replicated to its local backup, and reads the heaps again. A member's growth
divided by the connections it now holds, as primary or as local backup, is its
bytes per connection.
Figures: bytes_per_conn (the median member), max_bytes_per_conn.`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(2, "memory", noBackupReason); err != nil {
				return err
			}
			if err := checkConns(conns); err != nil {
				return err
			}
			g.metrics = true
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runMemory(ctx, c, conns, rep)
			})
		},
	}
	cmd.Flags().IntVar(&conns, "conns", 1_000_000, "connections to publish")
	return cmd
}

func newReplicateCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var f replicateFlags
	cmd := &cobra.Command{
		Use:   "replicate",
		Short: "Replication throughput and lag to the local backups",
		Long: `replicate publishes every one of -conns connections once, then has each
member's firewall publish updates of them to the buckets it is primary of:
-rate deltas per second over the site (a batch every 10 ms per member, and an
empty request every millisecond in between while batches are unconfirmed, as
the stream only answers requests; at most 8 requests unanswered per stream;
-rate 0: batches of 1,000 as fast as that window allows) for -duration. A
batch's lag is from its send to the first answer on its stream whose
replicated_through covers it, which is when the firewall knows its update is
at the bucket's local backup (the answer's way back and up to 1 ms of polling
included).
Figures: deltas_per_sec (confirmed), lag_p50_ms, lag_p99_ms, lag_max_ms (over
batches). With -sites 2 the site is the active one of two (and a witness, -delay
between them, as site-failover): remote_lag_p50_ms, remote_lag_p99_ms and
remote_lag_max_ms are to the answer whose site_replicated_through covers the
batch (the standby site's remote backups have it too).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(2, "replicate", noBackupReason); err != nil {
				return err
			}
			if f.rate < 0 {
				return fmt.Errorf("-rate must be >= 0 (got %d; 0 means as fast as possible)", f.rate)
			}
			if err := checkConns(f.conns); err != nil {
				return err
			}
			if f.duration <= 0 {
				return fmt.Errorf("-duration must be > 0 (got %v)", f.duration)
			}
			if f.sites != 1 && f.sites != 2 {
				return fmt.Errorf("-sites must be 1 or 2 (got %d)", f.sites)
			}
			if f.delay < 0 || f.delay > 5*time.Second {
				return fmt.Errorf("-delay must be between 0 and 5s (got %v)", f.delay)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.sites == 2 {
				return replicateTwoSites(cmd, g, f, stdout, stderr)
			}
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runReplicate(ctx, c, f, rep)
			})
		},
	}
	cmd.Flags().IntVar(&f.sites, "sites", 1, "1, or 2: an active and a standby site and a witness, and the lag to the standby site's remote backups too")
	cmd.Flags().DurationVar(&f.delay, "delay", 50*time.Millisecond, "with -sites 2: one-way delay between the sites")
	cmd.Flags().IntVar(&f.rate, "rate", 100_000, "deltas per second over the site (0: as fast as possible)")
	cmd.Flags().BoolVar(&f.mirror, "mirror", false, "keep a mirror stream open on every member while publishing, as a firewall would (what it costs; mirrored_per_sec)")
	cmd.Flags().IntVar(&f.conns, "conns", 200_000, "connections updated round robin")
	cmd.Flags().DurationVar(&f.duration, "duration", 10*time.Second, "how long to publish")
	return cmd
}

func newPersistenceCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var f persistenceFlags
	cmd := &cobra.Command{
		Use:   "persistence",
		Short: "Connections confirmed replicated that survive member failovers",
		Long: `persistence publishes -conns connections (60-byte states), waits until every
one is confirmed replicated, then -failovers times SIGKILLs a non-leader member
(round robin). Once every bucket it was primary of is active at its new primary,
each of those buckets is read there (DataPlaneService.Dump) and every connection
published to it must be there with its state, and with -mirror (the default)
also in the copy this process held of the bucket, as the new primary's
firewall, when the activation came (lost_in_copy counts those missing there).
The member restarts and the site settles before the next failover.
Figures: synced (connections confirmed), checked (connection checks over all
failovers), lost, persistence (1 - lost/checked).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(3, "persistence", quorumReason); err != nil {
				return err
			}
			if err := checkConns(f.conns); err != nil {
				return err
			}
			if f.failovers < 1 {
				return fmt.Errorf("-failovers must be >= 1 (got %d)", f.failovers)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runPersistence(ctx, c, f, rep)
			})
		},
	}
	cmd.Flags().IntVar(&f.conns, "conns", 1_000_000, "connections to publish")
	cmd.Flags().IntVar(&f.failovers, "failovers", 5, "members to kill, one after another")
	cmd.Flags().BoolVar(&f.mirror, "mirror", true, "keep a mirror of the backed-up states in this process, as a firewall would (WatchActivations mirror): activations carry only the epoch; false: the states travel with each activation")
	return cmd
}

func newAllCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	var quick bool
	cmd := &cobra.Command{
		Use:   "all",
		Short: "Every scenario on one site, and each figure against its target",
		Long: `all starts one site and runs memory (1,000,000 connections), persistence
(1,000,000 connections, 3 failovers), replicate (100,000 deltas/s for 10 s),
replicate at full speed, claims (64 clients, batches of 8), locks (64 clients, batches of 32),
failover of a member (10 trials) and of the leader (5), and lock-takeover (5);
then, on sites of their own, replicate to a standby site (-sites 2), site-failover
(5 trials) and selective-sync; it prints each one's figures, then a table of every
target of DESIGN section 7 with its figure and whether it is met. About 6 minutes
on 2 cores. -quick runs small sizes (100,000 connections, 3 s runs, 1-3 trials)
and exits 1 only on a gross regression: a failover or takeover time, or an exact
figure (lost, bytes, CPU saved), more than 3x off its target; a rate, or a
latency or lag under load, more than 10x off it (those scale with the machine's
spare CPU). CI runs it.`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(3, "all", quorumReason); err != nil {
				return err
			}
			g.metrics = true
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return scenarioRun(cmd, g, stdout, stderr, func(ctx context.Context, c *proccluster.Cluster, rep *reporter) (record, error) {
				return runAll(ctx, g, c, rep, quick)
			})
		},
	}
	cmd.Flags().BoolVar(&quick, "quick", false, "small sizes; fail only on gross regressions (CI)")
	return cmd
}
