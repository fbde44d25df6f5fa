package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/internal/proccluster"
)

// siteFailoverFlags are the site-failover scenario's flags.
type siteFailoverFlags struct {
	trials int
	delay  time.Duration // one way, between the sites and to the witness
}

func (f siteFailoverFlags) validate() error {
	switch {
	case f.trials < 1:
		return fmt.Errorf("-trials must be >= 1 (got %d)", f.trials)
	case f.delay < 0 || f.delay > 5*time.Second:
		return fmt.Errorf("-delay must be between 0 and 5s (got %v)", f.delay)
	}
	return nil
}

// twoSites is a dual-site cluster of connsyncd processes under the witness
// policy: two sites of equal size and a witness, every connection between
// the sites or to the witness delayed by connsyncd's -emulate-wan-delay.
type twoSites struct {
	sites   [2]*proccluster.Cluster // sites[0] ("a") starts active
	names   [2]string
	witness *exec.Cmd
	cleanup func()
}

// wanMethod says how the delay between the sites is made: this kernel has
// no tc netem for the tests' namespaces, so the members delay what they dial.
const wanMethod = "in-process (connsyncd -emulate-wan-delay on every connection a member dials to the other site or the witness)"

// startTwoSites starts a witness and two sites of members members each, a
// active and b standby, and waits until b holds a synced copy of every
// bucket. The caller must call cleanup on every path.
func startTwoSites(ctx context.Context, bin string, members int, delay time.Duration, keep bool, logLevel string, rep *reporter) (*twoSites, error) {
	ts := &twoSites{names: [2]string{"a", "b"}}
	var cleanups []func()
	var once sync.Once
	ts.cleanup = func() {
		once.Do(func() {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		})
	}
	dir, err := os.MkdirTemp("", "connsync-bench-sites-")
	if err != nil {
		return ts, err
	}
	cleanups = append(cleanups, func() {
		if keep {
			rep.event("kept", field{"dir", dir})
			return
		}
		os.RemoveAll(dir)
	})
	addrs := [2][]string{}
	for i := range addrs {
		if addrs[i], err = proccluster.FreeAddrs(members); err != nil {
			return ts, err
		}
	}
	w, err := proccluster.FreeAddrs(1)
	if err != nil {
		return ts, err
	}
	logf, err := os.Create(filepath.Join(dir, "witness.log"))
	if err != nil {
		return ts, err
	}
	ts.witness = exec.CommandContext(ctx, bin, "-witness", "-grpc-bind", w[0], "-data-dir", filepath.Join(dir, "witness"), "-log-level", "warn")
	ts.witness.Stdout, ts.witness.Stderr = logf, logf
	if err := ts.witness.Start(); err != nil {
		logf.Close()
		return ts, fmt.Errorf("witness: %w", err)
	}
	cleanups = append(cleanups, func() {
		ts.witness.Process.Kill()
		ts.witness.Wait()
		logf.Close()
	})
	for i := range ts.sites {
		other := addrs[1-i]
		// Automatic rebalancing on: a restarted site spreads its buckets
		// again by itself, as in production.
		args := []string{"-site-failover", "witness", "-witness-addr", w[0],
			"-peer-site", strings.Join(other, ",")}
		if delay > 0 {
			args = append(args, "-emulate-wan-delay", delay.String(), "-emulate-wan-to", strings.Join(append(other, w[0]), ","))
		}
		if i == 1 {
			args = append(args, "-standby")
		}
		c, err := proccluster.Start(ctx, proccluster.Config{Binary: bin, Members: members, Site: ts.names[i], IDPrefix: ts.names[i],
			GRPCAddrs: addrs[i], Dir: filepath.Join(dir, ts.names[i]), Args: args, LogLevel: logLevel, Stderr: rep.stderrWriter()})
		if err != nil {
			return ts, fmt.Errorf("site %s: %w", ts.names[i], err)
		}
		ts.sites[i] = c
		cleanups = append(cleanups, func() {
			if err := c.Stop(); err != nil {
				rep.event("stop_error", field{"site", ts.names[i]}, field{"error", err.Error()})
			}
		})
	}
	return ts, nil
}

// waitCopies waits until site act is active and the other site standby
// with a synced copy of every bucket, as both sites' state machines say
// (read linearizably from each), so that a takeover needs no full sync.
func (ts *twoSites) waitCopies(ctx context.Context, act int, timeout time.Duration) (buckets int, err error) {
	var cls [2]*client.Client
	for i := range cls {
		if cls[i], err = ts.sites[i].Client(2 * time.Second); err != nil {
			return 0, err
		}
		defer cls[i].Close()
	}
	deadline := time.Now().Add(timeout)
	for {
		buckets, err = ts.copiesReady(ctx, cls, act)
		if err == nil {
			return buckets, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("site %s active with every copy at the other site: not within %v: %w", ts.names[act], timeout, err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// copiesReady checks once that site act is active, the other standby, and
// every bucket's standby primary recorded synced.
func (ts *twoSites) copiesReady(ctx context.Context, cls [2]*client.Client, act int) (int, error) {
	for i, cl := range cls {
		r, err := cl.Sites(ctx)
		if err != nil {
			return 0, err
		}
		for _, s := range r.Sites {
			if s.Local && s.Standby != (i != act) {
				return 0, fmt.Errorf("site %s: standby %v", s.Name, s.Standby)
			}
			if !s.Local && !s.Reachable {
				return 0, fmt.Errorf("site %s does not reach site %s", ts.names[i], s.Name)
			}
		}
	}
	for i, cl := range cls { // each site placed: every member alive and primary of its share
		ms, err := cl.Members(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return 0, err
		}
		r, err := cl.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return 0, err
		}
		if err := proccluster.Settled(ms, r.Assignments, len(ts.sites[i].Members()), i != act, true); err != nil {
			return 0, fmt.Errorf("site %s: %w", ts.names[i], err)
		}
	}
	r, err := cls[1-act].Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, a := range r.Assignments {
		if a.RemoteCopySynced {
			n++
		}
	}
	if n < len(r.Assignments) {
		return 0, fmt.Errorf("site %s holds a synced copy of %d of %d buckets", ts.names[1-act], n, len(r.Assignments))
	}
	return n, nil
}

// linkRTT returns the round trip of the link from a member of site i to
// the other site, as that member last measured it (a Status call).
func (ts *twoSites) linkRTT(ctx context.Context, i int) (time.Duration, error) {
	cl, err := ts.sites[i].Client(2 * time.Second)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	r, err := cl.Sites(ctx)
	if err != nil {
		return 0, err
	}
	for _, s := range r.Sites {
		if !s.Local {
			return time.Duration(s.RttUs) * time.Microsecond, nil
		}
	}
	return 0, errors.New("no other site in the Sites answer")
}

// siteTrial is one measured site failover.
type siteTrial struct {
	from, to string
	took     time.Duration // SIGKILL of the active site -> last bucket active at the other
	settle   time.Duration // restart of the killed site -> it holds every copy again
}

// runSiteFailover is the site-failover scenario: trials alternate between
// the sites, each killing the active one whole.
func runSiteFailover(ctx context.Context, ts *twoSites, f siteFailoverFlags, rep *reporter) (record, error) {
	prog, stop := newTrialProgress(rep, "site-failover", f.trials)
	defer stop()
	act := 0
	var trials []siteTrial
	for i := range f.trials {
		prog.trial(i + 1)
		prog.set("waiting for site %s to hold every copy", ts.names[1-act])
		buckets, err := ts.waitCopies(ctx, act, settleTimeout)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", i+1, err)
		}
		prog.set("SIGKILL site %s, waiting for site %s to act for %d buckets", ts.names[act], ts.names[1-act], buckets)
		took, err := killSite(ctx, ts.sites[act], ts.sites[1-act], buckets)
		if err != nil {
			return nil, fmt.Errorf("trial %d (site %s killed): %w", i+1, ts.names[act], err)
		}
		tr := siteTrial{from: ts.names[act], to: ts.names[1-act], took: took}
		prog.set("restarting site %s", ts.names[act])
		began := time.Now()
		for j := range ts.sites[act].Members() {
			if err := ts.sites[act].Restart(j); err != nil {
				return nil, err
			}
		}
		act = 1 - act
		if _, err := ts.waitCopies(ctx, act, settleTimeout); err != nil {
			return nil, fmt.Errorf("trial %d, after restarting site %s: %w", i+1, ts.names[1-act], err)
		}
		tr.settle = time.Since(began)
		trials = append(trials, tr)
		rep.event("trial", field{"trial", i + 1}, field{"from", tr.from}, field{"to", tr.to}, field{"ms", ms(tr.took)},
			field{"settle_s", round(tr.settle.Seconds(), 2)})
	}
	stop()
	rows := make([][]string, len(trials))
	took := make([]time.Duration, len(trials))
	for i, t := range trials {
		rows[i] = []string{strconv.Itoa(i + 1), t.from, t.to, fmt.Sprintf("%.2f", ms(t.took)), fmt.Sprintf("%.1f", t.settle.Seconds())}
		took[i] = t.took
	}
	rep.table([]string{"trial", "killed", "activated", "failover_ms", "settle_s"}, rows)
	if err := rep.plot("site-failover", distributionPlot(fmt.Sprintf("site failover (%v each way): SIGKILL of the active site to the last bucket active", f.delay),
		took, time.Second)); err != nil {
		return nil, err
	}
	fig := record{{"scenario", "site-failover"}}
	fig = append(fig, latencyFigures(took)...)
	return append(fig, field{"trials", len(trials)}, field{"members_per_site", len(ts.sites[0].Members())},
		field{"delay_ms", ms(f.delay)}, field{"delay_by", wanMethod}, field{"observed_by", "WatchActivations"}), nil
}

// killSite opens WatchActivations on every member of to, SIGKILLs every
// member of from at once and returns the time from the kill to the moment
// the last of buckets was reported active (all its states delivered) on a
// member of to.
func killSite(ctx context.Context, from, to *proccluster.Cluster, buckets int) (time.Duration, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		active  = map[uint32]string{}
		last    time.Time
		allDone = make(chan struct{})
		once    sync.Once
		errc    = make(chan error, len(to.Members()))
	)
	for _, m := range to.Members() {
		conn, err := grpc.NewClient("passthrough:///"+m.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		st, err := pb.NewDataPlaneServiceClient(conn).WatchActivations(wctx, &pb.WatchActivationsRequest{})
		if err != nil {
			return 0, fmt.Errorf("WatchActivations on %s: %w", m.ID, err)
		}
		// No wait for the stream to open at the member: it reports every
		// bucket active when it opens, so a late start only delays (and
		// lengthens) what is measured.
		go func(id string) {
			for {
				msg, err := st.Recv()
				now := time.Now()
				if err != nil {
					if wctx.Err() == nil && !errors.Is(err, io.EOF) {
						errc <- fmt.Errorf("WatchActivations on %s ended: %w", id, err)
					}
					return
				}
				if msg.More {
					continue
				}
				mu.Lock()
				if msg.Active {
					active[msg.Bucket] = id
					last = now
				} else if active[msg.Bucket] == id {
					delete(active, msg.Bucket)
				}
				if len(active) >= buckets {
					once.Do(func() { close(allDone) })
				}
				mu.Unlock()
			}
		}(m.ID)
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	kerr := make(chan error, len(from.Members()))
	for j := range from.Members() { // all at once, as a site's power goes
		wg.Add(1)
		go func() { defer wg.Done(); kerr <- from.Kill(j) }()
	}
	wg.Wait()
	close(kerr)
	for err := range kerr {
		if err != nil {
			return 0, err
		}
	}
	select {
	case <-allDone:
	case err := <-errc:
		return 0, err
	case <-time.After(takeoverTimeout):
		mu.Lock()
		defer mu.Unlock()
		return 0, fmt.Errorf("only %d of %d buckets active at the other site %v after the kill", len(active), buckets, takeoverTimeout)
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-to.Died():
		return 0, to.Err()
	}
	cancel()
	mu.Lock()
	defer mu.Unlock()
	if last.Before(t0) {
		return 0, errors.New("measured a site failover before the kill: the clock went wrong")
	}
	return last.Sub(t0), nil
}

func newSiteFailoverCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	f := siteFailoverFlags{}
	cmd := &cobra.Command{
		Use:   "site-failover",
		Short: "Time from losing the whole active site to the other site acting for every bucket",
		Long: `site-failover starts two sites of -members connsyncd processes each (a active,
b standby) and a witness, under the witness policy (site lease 500 ms), with
-delay added each way to every connection between the sites and to the witness
(` + wanMethod + `).
It runs -trials trials. Each waits until the standby site holds a synced copy of
every bucket, SIGKILLs every member of the active site at once and measures from
the kill to the moment the LAST bucket is reported active by
DataPlaneService.WatchActivations on a member of the other site (a stream is open
on each before the kill). The killed site then restarts, goes standby and takes
the copies; the next trial kills the other way.
Figures: p50_ms, p99_ms, max_ms (nearest rank over the trials).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(3, "site-failover", quorumReason); err != nil {
				return err
			}
			return f.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ownSitesRun(cmd, g, stdout, stderr, func(ctx context.Context, rep *reporter) (record, error) {
				return siteFailoverRun(ctx, g, f, rep)
			})
		},
	}
	cmd.Flags().IntVar(&f.trials, "trials", 5, "number of site kills")
	cmd.Flags().DurationVar(&f.delay, "delay", 50*time.Millisecond, "one-way delay between the sites and to the witness")
	return cmd
}

// siteFailoverRun starts the two sites, runs the scenario and removes
// everything before it returns the figures.
func siteFailoverRun(ctx context.Context, g *globalOpts, f siteFailoverFlags, rep *reporter) (record, error) {
	return twoSitesRun(ctx, g, f.delay, rep, func(ts *twoSites) (record, error) { return runSiteFailover(ctx, ts, f, rep) })
}

// twoSitesRun starts two sites (startTwoSites) with delay between them,
// waits until site a is active and b holds every copy, checks the delay on
// the link, runs fn and removes everything before it returns fn's figures.
func twoSitesRun(ctx context.Context, g *globalOpts, delay time.Duration, rep *reporter, fn func(ts *twoSites) (record, error)) (record, error) {
	bin, rm, err := connsyncdBinary(ctx, g, rep)
	defer rm()
	if err != nil {
		return nil, err
	}
	began := time.Now()
	stopProgress := rep.progress(func() string {
		return fmt.Sprintf("starting two sites of %d members and a witness ... %.0fs", g.members, time.Since(began).Seconds())
	})
	ts, err := startTwoSites(ctx, bin, g.members, delay, g.keep, g.logLevel, rep)
	stopProgress()
	defer ts.cleanup()
	if err != nil {
		return nil, err
	}
	if _, err := ts.waitCopies(ctx, 0, settleTimeout); err != nil {
		return nil, err
	}
	rtt, err := ts.linkRTT(ctx, 0)
	if err != nil {
		return nil, err
	}
	rep.event("sites_ready", field{"members_per_site", g.members}, field{"delay_ms", ms(delay)}, field{"delay_by", wanMethod},
		field{"link_rtt_ms", ms(rtt)}, field{"start_s", round(time.Since(began).Seconds(), 2)})
	if rtt < 2*delay {
		return nil, fmt.Errorf("the link between the sites has a round trip of %v, below twice the delay %v: the delay is not applied", rtt, delay)
	}
	fig, err := fn(ts)
	ts.cleanup() // before the figures, which must be the last line
	return fig, err
}
