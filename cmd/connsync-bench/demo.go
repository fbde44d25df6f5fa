package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/internal/proccluster"
)

// demoFlags are the demo's flags.
type demoFlags struct {
	conns  int           // connections the synthetic firewall keeps updating
	rate   int           // updates per second
	pause  time.Duration // between the acts
	cycles int           // 0: until Ctrl-C
}

func (f demoFlags) validate() error {
	switch {
	case f.conns < 1 || f.conns > 1_000_000:
		return fmt.Errorf("-conns must be between 1 and 1000000 (got %d)", f.conns)
	case f.rate < 100 || f.rate > 200_000:
		return fmt.Errorf("-rate must be between 100 and 200000 updates/s (got %d)", f.rate)
	case f.pause < time.Second:
		return fmt.Errorf("-pause must be at least 1s (got %v)", f.pause)
	case f.cycles < 0:
		return fmt.Errorf("-cycles must be >= 0 (got %d; 0 runs until Ctrl-C)", f.cycles)
	}
	return nil
}

func newDemoCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	f := demoFlags{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Two sites of three members under traffic; a member and then a whole site are killed",
		Long: `demo starts two sites of -members connsyncd processes (a active, b standby) and a
witness, 50 ms apart (` + wanMethod + `), and a synthetic firewall that
keeps updating -conns connections at -rate updates/s through the active site's
primaries. A status line shows each site's leader, the buckets each member is
primary of, the replication lag of the last batch (to the local backups) and the
connections backed up at the standby site. Every -pause it acts: SIGKILL of a
member of the active site (it says how long until its buckets were active at
their new primaries), then SIGKILL of the whole active site (how long until the
other site acted for every bucket); each victim restarts. It runs until Ctrl-C
(or -cycles cycles of both acts) and removes everything it started.`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(3, "demo", quorumReason); err != nil {
				return err
			}
			return f.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rep := g.reporter(stdout, stderr)
			rep.lineMax = 200 // the status line; a terminal narrower than that wraps it
			_, err := twoSitesRun(ctx, g, 50*time.Millisecond, rep, func(ts *twoSites) (record, error) {
				return nil, runDemo(ctx, ts, f, rep, stdout)
			})
			if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
				fmt.Fprintln(stderr, "demo stopped; every process it started is gone")
				return nil
			}
			return interrupted(ctx, err)
		},
	}
	cmd.Flags().IntVar(&f.conns, "conns", 20_000, "connections the synthetic firewall keeps updating")
	cmd.Flags().IntVar(&f.rate, "rate", 5_000, "updates per second")
	cmd.Flags().DurationVar(&f.pause, "pause", 10*time.Second, "time between the acts")
	cmd.Flags().IntVar(&f.cycles, "cycles", 0, "member kill + site kill cycles to run (0: until Ctrl-C)")
	return cmd
}

// demoState is what the status line shows.
type demoState struct {
	active atomic.Int32 // index of the active site
	lag    atomic.Int64 // last batch's lag, ns
	sent   atomic.Int64 // updates accepted
}

// runDemo drives traffic, shows the status and acts until ctx ends or the
// cycles are done.
func runDemo(ctx context.Context, ts *twoSites, f demoFlags, rep *reporter, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &demoState{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		demoTraffic(ctx, ts, f, st)
	}()
	defer wg.Wait()
	defer cancel()
	status := func() string { return demoStatus(ctx, ts, st) }
	stopStatus := rep.progress(status)
	defer stopStatus()
	if !rep.showProgress { // not a terminal: a status line every pause
		go func() {
			for ctx.Err() == nil {
				select {
				case <-ctx.Done():
				case <-time.After(f.pause / 2):
					fmt.Fprintln(out, status())
				}
			}
		}()
	}
	say := func(format string, args ...any) {
		rep.event("demo", field{"what", fmt.Sprintf(format, args...)})
	}
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(f.pause):
			return nil
		}
	}
	say("two sites up: a active, b standby holding a copy of every bucket; traffic: %d connections, %d updates/s", f.conns, f.rate)
	for cycle := 1; f.cycles == 0 || cycle <= f.cycles; cycle++ {
		if err := wait(); err != nil {
			return err
		}
		act := int(st.active.Load())
		c := ts.sites[act]
		leader, err := c.Leader(ctx)
		if err != nil {
			return err
		}
		victim := (leader + 1) % len(c.Members())
		admin, err := c.Client(5 * time.Second)
		if err != nil {
			return err
		}
		say("SIGKILL member %s of the active site %s", c.Members()[victim].ID, ts.names[act])
		tr, err := measureFailover(ctx, c, admin, victim, true, func(string, ...any) {})
		admin.Close()
		if err != nil {
			return err
		}
		say("%s's %d buckets were active at their new primaries %.0f ms after the kill (%d without a synced copy)",
			tr.victim, tr.buckets, ms(tr.took), tr.withoutCopy)
		settle, err := restartAndSettle(ctx, c, victim)
		if err != nil {
			return err
		}
		say("%s restarted; site %s settled again %.1f s later", tr.victim, ts.names[act], settle.Seconds())
		if err := wait(); err != nil {
			return err
		}
		buckets, err := ts.waitCopies(ctx, act, settleTimeout)
		if err != nil {
			return err
		}
		say("SIGKILL every member of the active site %s", ts.names[act])
		took, err := killSite(ctx, ts.sites[act], ts.sites[1-act], buckets)
		if err != nil {
			return err
		}
		st.active.Store(int32(1 - act))
		say("site %s acted for all %d buckets %.0f ms after the kill", ts.names[1-act], buckets, ms(took))
		began := time.Now()
		for j := range ts.sites[act].Members() {
			if err := ts.sites[act].Restart(j); err != nil {
				return err
			}
		}
		if _, err := ts.waitCopies(ctx, 1-act, settleTimeout); err != nil {
			return err
		}
		say("site %s restarted, standby, and holds a copy of every bucket again %.1f s later", ts.names[act], time.Since(began).Seconds())
	}
	return nil
}

// demoTraffic keeps updating f.conns connections at f.rate/s through the
// active site's primaries, a batch every 100 ms, and records each batch's
// lag to its local backups, until ctx ends. A batch that fails (a member or
// site killed) makes it reconnect to the active site.
func demoTraffic(ctx context.Context, ts *twoSites, f demoFlags, st *demoState) {
	const tick = 100 * time.Millisecond
	per := max(1, f.rate/10)
	next := 0
	for ctx.Err() == nil {
		c := ts.sites[st.active.Load()]
		p, err := newPublisher(ctx, c)
		if err != nil {
			time.Sleep(200 * time.Millisecond) // a site just failed over, or a member restarts
			continue
		}
		for t := time.Now(); ctx.Err() == nil && c == ts.sites[st.active.Load()]; t = t.Add(tick) {
			time.Sleep(time.Until(t))
			evs := make([]*pb.ConnEvent, per)
			for i := range evs {
				evs[i] = &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_UPDATED, State: benchConn(next, memoryBlobBytes)}
				next = (next + 1) % f.conns
			}
			began := time.Now()
			if _, err = p.publishEvents(ctx, evs); err == nil {
				err = p.waitReplicated(ctx, time.Millisecond)
			}
			if err != nil {
				break
			}
			st.lag.Store(int64(time.Since(began)))
			st.sent.Add(int64(per))
		}
		p.close()
	}
}

// demoStatus is the status line: per site, mode, leader and buckets per
// member; the last batch's lag; connections backed up at the standby site.
func demoStatus(ctx context.Context, ts *twoSites, st *demoState) string {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	var parts []string
	backed := uint64(0)
	for i, c := range ts.sites {
		cl, err := client.New(client.Config{Addrs: runningAddrs(c), Timeout: 400 * time.Millisecond})
		if err != nil {
			parts = append(parts, ts.names[i]+": ?")
			continue
		}
		parts = append(parts, siteStatus(ctx, cl, ts.names[i], int(st.active.Load()) == i))
		cl.Close()
		if int(st.active.Load()) != i {
			backed = heldBy(ctx, c)
		}
	}
	return fmt.Sprintf("%s | lag %.1f ms | %s updates | backed up at standby %s",
		strings.Join(parts, " | "), ms(time.Duration(st.lag.Load())), thousands(st.sent.Load()), thousands(int64(backed)))
}

// runningAddrs returns the gRPC addresses of c's running members.
func runningAddrs(c *proccluster.Cluster) []string {
	var out []string
	for i, m := range c.Members() {
		if c.Running(i) {
			out = append(out, m.GRPC)
		}
	}
	if len(out) == 0 {
		return c.Addrs() // all down: the client reports why
	}
	return out
}

// heldBy returns the connections c's running members hold.
func heldBy(ctx context.Context, c *proccluster.Cluster) uint64 {
	var n uint64
	for _, addr := range runningAddrs(c) {
		cl, err := client.New(client.Config{Addrs: []string{addr}, Timeout: 400 * time.Millisecond})
		if err != nil {
			continue
		}
		if s, err := cl.SyncStatus(ctx); err == nil {
			n += s.Connections
		}
		cl.Close()
	}
	return n
}

// siteStatus reads one site: "a active L=a2 a1:1365 a2:1366 a3:1365".
func siteStatus(ctx context.Context, cl *client.Client, name string, active bool) string {
	mode := "standby"
	if active {
		mode = "active"
	}
	r, err := cl.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LOCAL)
	if err != nil {
		return name + " " + mode + ": down"
	}
	count := map[string]int{}
	for _, a := range r.Assignments {
		count[a.Primary]++
	}
	ids := make([]string, 0, len(count))
	for id := range count {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	per := make([]string, len(ids))
	for i, id := range ids {
		per[i] = fmt.Sprintf("%s:%d", id, count[id])
	}
	leader := "?"
	if s, err := cl.Status(ctx); err == nil {
		leader = s.LeaderId
	}
	return fmt.Sprintf("%s %s L=%s %s", name, mode, leader, strings.Join(per, " "))
}
