package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/integration/faultnet"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// connsyncdBinary builds cmd/connsyncd once per test run.
func connsyncdBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "connsyncd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "connsyncd")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/connsyncd").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is one connsyncd process.
type proc struct {
	id, grpc, raft, gossip, dir, log string
	netns                            string // network namespace to run in ("": the test's own)
	args                             []string
	cmd                              *exec.Cmd
	exited                           chan struct{}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	a, err := faultnet.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (p *proc) start(t testing.TB, bin string) {
	t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-member-id", p.id, "-site", "s1", "-data-dir", p.dir,
		"-grpc-bind", p.grpc, "-raft-bind", p.raft, "-gossip-bind", p.gossip, "-log-level", "warn"}, p.args...)
	p.cmd = exec.Command(bin, args...)
	if p.netns != "" { // ip netns exec execs the binary: the process (and its PID) is connsyncd's
		p.cmd = exec.Command("ip", append([]string{"netns", "exec", p.netns, bin}, args...)...)
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func() { p.cmd.Wait(); logf.Close(); close(p.exited) }()
}

func (p *proc) signal(sig syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(sig)
	}
}

// kill SIGKILLs the process and waits until it is gone.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	if p.exited != nil {
		<-p.exited
	}
}

// procSite is a site of real connsyncd processes on loopback: the first
// bootstraps, the others join it, and all gossip.
type procSite struct {
	t      testing.TB
	bin    string
	procs  []*proc
	manual bool // started with -auto-rebalance=false: waitPlaced asks for rebalances
}

func startProcSite(t testing.TB, n int, extra ...string) *procSite {
	t.Helper()
	base := t.TempDir()
	var procs []*proc
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("p%d", i)
		procs = append(procs, &proc{id: id, grpc: freeAddr(t), raft: freeAddr(t), gossip: freeAddr(t),
			dir: filepath.Join(base, id), log: filepath.Join(base, id+".log")})
	}
	return runProcSite(t, procs, extra...)
}

// runProcSite starts procs (their addresses and directories set) as one
// site and waits until it is placed.
func runProcSite(t testing.TB, procs []*proc, extra ...string) *procSite {
	t.Helper()
	n := len(procs)
	ps := &procSite{t: t, bin: connsyncdBinary(t), manual: slices.Contains(extra, "-auto-rebalance=false"), procs: procs}
	for i, p := range ps.procs {
		p.args = append([]string{"-bootstrap"}, extra...)
		if i > 0 {
			p.args = append([]string{"-join", ps.procs[0].grpc}, extra...)
		}
	}
	t.Cleanup(func() {
		for _, p := range ps.procs {
			p.kill()
		}
		if t.Failed() {
			for _, p := range ps.procs {
				b, _ := os.ReadFile(p.log)
				t.Logf("--- log of %s ---\n%s", p.id, b)
			}
		}
	})
	for _, p := range ps.procs {
		p.start(t, ps.bin)
	}
	ps.waitPlaced(60*time.Second, n)
	return ps
}

func (ps *procSite) addrs() []string {
	out := make([]string, len(ps.procs))
	for i, p := range ps.procs {
		out[i] = p.grpc
	}
	return out
}

func (ps *procSite) proc(id string) *proc {
	for _, p := range ps.procs {
		if p.id == id {
			return p
		}
	}
	ps.t.Fatalf("no process %s", id)
	return nil
}

// client returns a client of the whole site, closed when the test ends.
func (ps *procSite) client(timeout time.Duration) *client.Client {
	cl, err := client.New(client.Config{Addrs: ps.addrs(), Timeout: timeout})
	if err != nil {
		ps.t.Fatal(err)
	}
	ps.t.Cleanup(func() { cl.Close() })
	return cl
}

// restart starts a killed member again from its data directory, with the
// flags it was started with (but -bootstrap and -join).
func (ps *procSite) restart(p *proc) {
	p.args = slices.DeleteFunc(p.args, func(a string) bool { return a == "-bootstrap" })
	if i := slices.Index(p.args, "-join"); i >= 0 {
		p.args = slices.Delete(p.args, i, i+2)
	}
	p.start(ps.t, ps.bin)
}

// leader returns the leader's process and its linearizable bucket map.
func (ps *procSite) leader(ctx context.Context, cl *client.Client) (*proc, []*pb.Assignment) {
	ps.t.Helper()
	st, err := cl.Status(ctx)
	if err != nil {
		ps.t.Fatal(err)
	}
	r, err := cl.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		ps.t.Fatal(err)
	}
	return ps.proc(st.LeaderId), r.Assignments
}

// waitPlaced waits until the site has n alive members, every bucket has an
// alive primary and a synced backup, no handoff is under way, and the
// primaries are spread evenly (within one bucket of the mean).
func (ps *procSite) waitPlaced(timeout time.Duration, n int) {
	ps.t.Helper()
	cl := ps.client(5 * time.Second)
	cluster.CheckFor(ps.t, timeout, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ms, err := cl.MemberDetails(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return err
		}
		alive := map[string]bool{}
		for _, m := range ms.Members {
			if m.State == pb.MemberState_MEMBER_STATE_ALIVE {
				alive[m.Id] = true
			}
		}
		if len(alive) != n {
			return fmt.Errorf("%d alive members, want %d", len(alive), n)
		}
		r, err := cl.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return err
		}
		err = settled(r.Assignments, alive)
		if err != nil && ps.manual {
			_, _ = cl.Rebalance(ctx, false) // Aborted when the map changed meanwhile: the next poll asks again
		}
		return err
	})
}

// settled checks a bucket map as cluster.Placed does, for equal weights.
func settled(as []*pb.Assignment, alive map[string]bool) error {
	count := map[string]int{}
	for _, a := range as {
		switch {
		case !alive[a.Primary]:
			return fmt.Errorf("bucket %d: primary %q is not alive", a.Bucket, a.Primary)
		case len(alive) > 1 && (!alive[a.LocalBackup] || a.LocalBackup == a.Primary || !a.BackupSynced):
			return fmt.Errorf("bucket %d: backup %q (synced %v)", a.Bucket, a.LocalBackup, a.BackupSynced)
		case a.Incoming != "":
			return fmt.Errorf("bucket %d: move to %s under way", a.Bucket, a.Incoming)
		}
		count[a.Primary]++
	}
	lo, hi := len(as), 0
	for id := range alive {
		lo, hi = min(lo, count[id]), max(hi, count[id])
	}
	if hi-lo > 1 {
		return fmt.Errorf("primaries per member between %d and %d: %v", lo, hi, count)
	}
	return nil
}
