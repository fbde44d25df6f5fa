package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/internal/connmix"
	"github.com/connsync/connsync/internal/proccluster"
)

// selectiveFlags are the selective-sync scenario's flags.
type selectiveFlags struct {
	delay time.Duration // the mix's delay class; every lifetime scales with it
	rate  int           // new connections per second
}

func (f selectiveFlags) validate() error {
	switch {
	case f.delay < 50*time.Millisecond || f.delay > 10*time.Second:
		return fmt.Errorf("-delay must be between 50ms and 10s (got %v)", f.delay)
	case f.rate < 100 || f.rate > 1_000_000:
		return fmt.Errorf("-rate must be between 100 and 1000000 new connections/s (got %d)", f.rate)
	}
	return nil
}

// The three runs of selective-sync: the same mix with nothing replicated
// (the cost of publishing alone), with every connection replicated at once,
// and with the mix's service in a delay class.
var selectiveRuns = []struct{ name, classes string }{
	{"never", "all=any=never"},
	{"off", "all=any=immediate"},
	{"on", "mix=tcp:%d=%v;rest=any=immediate"},
}

// selectiveCost is what one run cost the members.
type selectiveCost struct {
	cpu     time.Duration // user + system CPU of every member process
	written int64         // bytes the member processes wrote (wchar: sockets and files)
	records uint64        // replication records the members sent
}

// runSelective runs the mix three times, each on a fresh site, and compares.
func runSelective(ctx context.Context, g *globalOpts, f selectiveFlags, rep *reporter) (record, error) {
	costs := map[string]selectiveCost{}
	var rows [][]string
	for _, r := range selectiveRuns {
		classes := r.classes
		if strings.Contains(classes, "%") {
			classes = fmt.Sprintf(classes, connmix.Port, f.delay)
		}
		g.args = []string{"-delay-classes", classes}
		s, err := startSite(ctx, g, rep)
		if err != nil {
			s.cleanup()
			return nil, fmt.Errorf("run %s: %w", r.name, err)
		}
		cost, conns, err := measureMix(ctx, s.c, f, rep, r.name)
		s.cleanup()
		if err != nil {
			return nil, fmt.Errorf("run %s (delay classes %q): %w", r.name, classes, err)
		}
		costs[r.name] = cost
		rep.event("run", field{"run", r.name}, field{"delay_classes", classes}, field{"connections", conns},
			field{"cpu_s", round(cost.cpu.Seconds(), 3)}, field{"written_mb", round(float64(cost.written)/1e6, 2)},
			field{"records_sent", cost.records})
		rows = append(rows, []string{r.name, classes, fmt.Sprintf("%.2f", cost.cpu.Seconds()),
			fmt.Sprintf("%.1f", float64(cost.written)/1e6), strconv.FormatUint(cost.records, 10)})
	}
	g.args = nil
	rep.table([]string{"run", "delay classes", "member CPU s", "written MB", "records sent"}, rows)
	never, off, on := costs["never"], costs["off"], costs["on"]
	saved := func(on, off, never float64) float64 {
		if off <= never {
			return 0
		}
		return round(1-(on-never)/(off-never), 3)
	}
	return record{{"scenario", "selective-sync"},
		{"cpu_saved_fraction", saved(on.cpu.Seconds(), off.cpu.Seconds(), never.cpu.Seconds())},
		{"bytes_saved_fraction", saved(float64(on.written), float64(off.written), float64(never.written))},
		{"records_saved_fraction", saved(float64(on.records), float64(off.records), 0)},
		{"process_cpu_saved_fraction", round(1-on.cpu.Seconds()/off.cpu.Seconds(), 3)},
		{"delay_ms", ms(f.delay)}, {"new_per_sec", f.rate}, {"members", g.members}}, nil
}

// measureMix publishes the mix to the site's primaries and returns what it
// cost the members from the first event until replication is idle, and how
// many connections the mix opened.
func measureMix(ctx context.Context, c *proccluster.Cluster, f selectiveFlags, rep *reporter, name string) (selectiveCost, int, error) {
	p, err := newPublisher(ctx, c)
	if err != nil {
		return selectiveCost{}, 0, err
	}
	defer p.close()
	before, err := memberCost(ctx, c)
	if err != nil {
		return selectiveCost{}, 0, err
	}
	began := time.Now()
	stop := rep.progress(func() string {
		return fmt.Sprintf("selective-sync run %s: mix for %v ... %.1fs", name, 7*f.delay, time.Since(began).Seconds())
	})
	n, err := connmix.Run(ctx, f.delay, max(1, f.rate/100), func(evs []*pb.ConnEvent) error {
		_, err := p.publishEvents(ctx, evs)
		return err
	})
	if err == nil {
		err = p.waitReplicated(ctx, 20*time.Millisecond)
	}
	if err == nil {
		err = waitIdle(ctx, c)
	}
	stop()
	if err != nil {
		return selectiveCost{}, 0, err
	}
	after, err := memberCost(ctx, c)
	if err != nil {
		return selectiveCost{}, 0, err
	}
	return selectiveCost{cpu: after.cpu - before.cpu, written: after.written - before.written,
		records: after.records - before.records}, n, nil
}

// waitIdle waits until no member holds a connection back or has one queued
// for a stream.
func waitIdle(ctx context.Context, c *proccluster.Cluster) error {
	deadline := time.Now().Add(time.Minute)
	for {
		busy := ""
		err := eachStatus(ctx, c, func(id string, st *pb.SyncStatusResponse) {
			if st.Delayed > 0 {
				busy = fmt.Sprintf("%s holds %d connections back", id, st.Delayed)
			}
			for _, s := range st.Streams {
				if s.Queued > 0 {
					busy = fmt.Sprintf("%s has %d connections queued for %s", id, s.Queued, s.Target)
				}
			}
		})
		if err != nil {
			return err
		}
		if busy == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication not idle after a minute: %s", busy)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// eachStatus calls fn with every member's SyncStatus.
func eachStatus(ctx context.Context, c *proccluster.Cluster, fn func(id string, st *pb.SyncStatusResponse)) error {
	for _, m := range c.Members() {
		cl, err := client.New(client.Config{Addrs: []string{m.GRPC}, Timeout: 5 * time.Second})
		if err != nil {
			return err
		}
		st, err := cl.SyncStatus(ctx)
		cl.Close()
		if err != nil {
			return fmt.Errorf("sync status of %s: %w", m.ID, err)
		}
		fn(m.ID, st)
	}
	return nil
}

// memberCost reads the members' CPU time and bytes written from /proc, and
// the replication records they sent.
func memberCost(ctx context.Context, c *proccluster.Cluster) (selectiveCost, error) {
	var out selectiveCost
	for i, m := range c.Members() {
		pid := c.Pid(i)
		if pid == 0 {
			return out, fmt.Errorf("%s is not running", m.ID)
		}
		cpu, err := procCPU(pid)
		if err != nil {
			return out, err
		}
		w, err := procWritten(pid)
		if err != nil {
			return out, err
		}
		out.cpu += cpu
		out.written += w
	}
	err := eachStatus(ctx, c, func(_ string, st *pb.SyncStatusResponse) {
		for _, s := range st.Streams {
			out.records += s.SentRecords
		}
	})
	return out, err
}

// clockTick is the kernel's USER_HZ, the unit of /proc/PID/stat's times
// (100 on every Linux this runs on).
const clockTick = 100

// procCPU returns a process's user + system CPU time (/proc/PID/stat).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("CPU time of pid %d (needs Linux /proc): %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(rest) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(rest[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(rest[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(utime+stime) * time.Second / clockTick, nil
}

// procWritten returns the bytes a process wrote through write system calls
// (wchar of /proc/PID/io: sockets included).
func procWritten(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, fmt.Errorf("bytes written by pid %d (needs Linux /proc): %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "wchar:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/io: no wchar", pid)
}

func newSelectiveCommand(g *globalOpts, stdout, stderr io.Writer) *cobra.Command {
	f := selectiveFlags{}
	cmd := &cobra.Command{
		Use:   "selective-sync",
		Short: "CPU and bytes that delay classes save on a mix of short and long connections",
		Long: `selective-sync runs one connection mix three times, each on a fresh site of
-members connsyncd processes: nothing replicated (-delay-classes all=any=never:
the cost of publishing alone), every connection replicated at once (off), and the
mix's service in a delay class of -delay (on). The mix (as server/repl's
BenchmarkSelectiveSync): -rate new TCP connections/s for 3 delays, 70% closing
after a third of the delay, 30% after three delays and a third, each updated at
1/15 and 1/5 of the delay and the long ones every 2/3 of a delay after; it is
published to the buckets' primaries, then the tool waits until replication is
idle. Each run's cost is the member processes' CPU time and bytes written
(/proc/PID/stat, /proc/PID/io wchar) and the replication records they sent.
Figures: cpu_saved_fraction and bytes_saved_fraction (1 - (on - never) /
(off - never): the replication work the delays save), records_saved_fraction,
process_cpu_saved_fraction (1 - on / off, publishing included).`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if err := g.validate(2, "selective-sync", noBackupReason); err != nil {
				return err
			}
			return f.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ownSitesRun(cmd, g, stdout, stderr, func(ctx context.Context, rep *reporter) (record, error) {
				return runSelective(ctx, g, f, rep)
			})
		},
	}
	cmd.Flags().DurationVar(&f.delay, "delay", time.Second, "the mix's delay class (every lifetime scales with it; the mix runs 7 delays)")
	cmd.Flags().IntVar(&f.rate, "rate", 50_000, "new connections per second")
	return cmd
}
