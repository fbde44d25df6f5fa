package integration

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// connsyncdBinary builds cmd/connsyncd once per test run.
func connsyncdBinary(t *testing.T) string {
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
	id, grpc, raft, dir, log string
	args                     []string
	cmd                      *exec.Cmd
}

// freeAddr returns a loopback address whose port is free for TCP and UDP.
// Ports come from below the kernel's ephemeral range (32768-60999 on Linux),
// so the :0 listeners and outgoing connections of tests running in parallel
// cannot take the port between this check and the process binding it; a
// port handed out once is never handed out again by this test binary.
func freeAddr(t *testing.T) string {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if portsUsed[port] {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		portsUsed[port] = true
		return addr
	}
	t.Fatal("no free port in 20000-31999")
	return ""
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

func (p *proc) start(t *testing.T, bin string) {
	t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-member-id", p.id, "-site", "s1", "-data-dir", p.dir,
		"-grpc-bind", p.grpc, "-raft-bind", p.raft, "-log-level", "warn"}, p.args...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); logf.Close() }()
}

func (p *proc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
}

// TestProcess_LeaderSIGKILL runs a 3-member site of real connsyncd processes,
// SIGKILLs the leader while clients write, checks that writes continue and no
// acknowledged claim is lost, then restarts the killed member from its data
// directory and checks it catches up.
func TestProcess_LeaderSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test skipped in -short mode")
	}
	bin := connsyncdBinary(t)
	base := t.TempDir()
	procs := make([]*proc, 3)
	for i := range procs {
		id := fmt.Sprintf("p%d", i)
		procs[i] = &proc{id: id, grpc: freeAddr(t), raft: freeAddr(t), dir: filepath.Join(base, id),
			log: filepath.Join(base, id+".log")}
	}
	procs[0].args = []string{"-bootstrap"}
	for _, p := range procs[1:] {
		p.args = []string{"-join", procs[0].grpc}
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for _, p := range procs {
				b, _ := os.ReadFile(p.log)
				t.Logf("--- log of %s ---\n%s", p.id, b)
			}
		}
	})
	addrs := make([]string, len(procs))
	for i, p := range procs {
		p.start(t, bin)
		addrs[i] = p.grpc
	}
	cl, err := client.New(client.Config{Addrs: addrs, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := cluster.Context(t, 2*time.Minute)
	cluster.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		ms, err := cl.Members(ctx, linear)
		if err != nil {
			return err
		}
		if len(ms) != 3 {
			return fmt.Errorf("%d members", len(ms))
		}
		return nil
	})

	w := startClaimWriters(t, ctx, cl, "p1", 0, 4)
	w.waitMore(t, 200, 30*time.Second)

	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victim *proc
	for _, p := range procs {
		if p.id == st.LeaderId {
			victim = p
		}
	}
	if victim == nil {
		t.Fatalf("leader %q is not one of the processes", st.LeaderId)
	}
	victim.kill()
	t.Logf("SIGKILLed leader %s after %d acknowledged claims", victim.id, w.count())
	w.waitMore(t, 200, 30*time.Second)
	w.halt()
	w.verify(t, ctx, cl)

	// The killed member restarts from its data directory and catches up.
	victim.args = nil
	victim.start(t, bin)
	vc, err := client.New(client.Config{Addrs: []string{victim.grpc}})
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	cluster.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		st, err := vc.Status(ctx)
		if err != nil {
			return err
		}
		if st.ClaimCount != uint64(w.count()) {
			return fmt.Errorf("restarted %s has %d claims, want %d", victim.id, st.ClaimCount, w.count())
		}
		return nil
	})
}
