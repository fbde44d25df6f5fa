// Package proccluster runs a site of real connsyncd processes on 127.0.0.1,
// for benchmarks and tools that must measure the product as it runs (one
// process per member), not an in-process imitation.
//
// The contract:
//
//   - Start launches Config.Members processes of the binary Config.Binary.
//     Member i is "m<i+1>"; each gets its own data directory and log file
//     under one directory (a new temporary directory unless Config.Dir is
//     set) and three free loopback ports (gRPC, Raft, gossip), passed as
//     explicit -grpc-bind, -raft-bind and -gossip-bind. The first member
//     starts with -bootstrap, every later one with -join listing the gRPC
//     addresses of all earlier members. Start returns once a leader is
//     elected and every member is ALIVE in the site state machine; on any
//     error it stops what it started and removes what it created.
//   - Kill sends SIGKILL to one member and waits until the process is gone;
//     Restart starts it again from the same data directory with the same
//     command line (connsyncd ignores -bootstrap and -join once the data
//     directory holds Raft state, and the member joins again by itself).
//   - Stop sends SIGTERM to every running member, SIGKILL to any still
//     running after Config.StopTimeout, and removes the temporary directory
//     (unless Config.Keep). It is idempotent; call it on every path out,
//     Ctrl-C and errors included.
//   - A member that exits without Kill or Stop asking for it is reported:
//     the last lines of its log are written to Config.Stderr, and Died is
//     closed, with Err saying which member died and how.
//
// Children run in their own process group, so a Ctrl-C at the terminal
// reaches only the tool, which then stops them in order; on Linux they also
// get SIGKILL if the tool itself dies without stopping them.
package proccluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/internal/freeport"
)

// Config says what to start.
type Config struct {
	// Binary is the connsyncd executable (see Build).
	Binary string
	// Members is how many members to start, at least 1.
	Members int
	// Site is the site name; default "bench".
	Site string
	// IDPrefix starts the member IDs (prefix1, prefix2, ...); default "m".
	// Two sites of one cluster need different ones.
	IDPrefix string
	// GRPCAddrs, if given (one per member), are the members' gRPC
	// addresses; otherwise free ones are chosen. Two sites that name each
	// other in their Args need them before either starts (FreeAddrs).
	GRPCAddrs []string
	// Dir holds the data directories and logs. "" creates a temporary
	// directory, which Stop removes unless Keep is set.
	Dir string
	// Keep leaves the temporary directory in place on Stop.
	Keep bool
	// Args are extra connsyncd flags given to every member.
	Args []string
	// Metrics gives every member a -metrics-addr (Member.Metrics) and
	// -pprof, so its Prometheus metrics and Go profiles can be read.
	Metrics bool
	// LogLevel is connsyncd's -log-level; default "warn".
	LogLevel string
	// StartTimeout bounds Start's wait for a leader and ALIVE members;
	// default 60s.
	StartTimeout time.Duration
	// StopTimeout is how long Stop waits after SIGTERM before SIGKILL;
	// default 5s.
	StopTimeout time.Duration
	// Stderr receives the log tail of a member that dies unexpectedly;
	// default os.Stderr.
	Stderr io.Writer
}

// Member is one connsyncd process of the cluster. Its fields are fixed at
// Start and survive Restart.
type Member struct {
	ID      string
	GRPC    string // gRPC address, host:port
	Raft    string
	Gossip  string
	DataDir string
	LogPath string
	Metrics string // with Config.Metrics: metrics and /debug/pprof/ address, host:port
	args    []string

	cmd      *exec.Cmd
	exited   chan struct{} // closed when the current process has exited
	expected bool          // the current process was asked to exit (guarded by Cluster.mu)
}

// Cluster is a running site of connsyncd processes.
type Cluster struct {
	cfg     Config
	dir     string
	ownDir  bool
	members []*Member

	mu      sync.Mutex
	stopped bool
	died    chan struct{}
	diedErr error
}

// ErrMemberDied is wrapped by the error of a member that exited without
// Kill or Stop asking for it (Err, and the Wait functions and Start).
var ErrMemberDied = errors.New("connsyncd exited unexpectedly")

// tailLines is how many log lines are shown for a member that died.
const tailLines = 25

// Start launches the cluster and waits until it is ready (see the package
// comment). ctx bounds the wait; cancelling it stops the cluster.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Binary == "" {
		return nil, errors.New("proccluster: Config.Binary (the connsyncd executable) is required")
	}
	if cfg.Members < 1 {
		return nil, fmt.Errorf("proccluster: Members is %d, want at least 1", cfg.Members)
	}
	if cfg.Site == "" {
		cfg.Site = "bench"
	}
	if cfg.IDPrefix == "" {
		cfg.IDPrefix = "m"
	}
	if cfg.GRPCAddrs != nil && len(cfg.GRPCAddrs) != cfg.Members {
		return nil, fmt.Errorf("proccluster: %d GRPCAddrs for %d members", len(cfg.GRPCAddrs), cfg.Members)
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	c := &Cluster{cfg: cfg, dir: cfg.Dir, died: make(chan struct{})}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "connsync-bench-")
		if err != nil {
			return nil, fmt.Errorf("proccluster: %w", err)
		}
		c.dir, c.ownDir = d, true
	} else if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("proccluster: %w", err)
	}
	var joins []string
	for i := range cfg.Members {
		id := fmt.Sprintf("%s%d", cfg.IDPrefix, i+1)
		m := &Member{ID: id, DataDir: filepath.Join(c.dir, id), LogPath: filepath.Join(c.dir, id+".log")}
		addrs := []*string{&m.GRPC, &m.Raft, &m.Gossip}
		if cfg.GRPCAddrs != nil {
			m.GRPC, addrs = cfg.GRPCAddrs[i], addrs[1:]
		}
		for _, a := range addrs {
			addr, err := freeport.Addr()
			if err != nil {
				c.Stop()
				return nil, fmt.Errorf("proccluster: %w", err)
			}
			*a = addr
		}
		m.args = []string{"-member-id", id, "-site", cfg.Site, "-data-dir", m.DataDir,
			"-grpc-bind", m.GRPC, "-raft-bind", m.Raft, "-gossip-bind", m.Gossip, "-log-level", cfg.LogLevel}
		if cfg.Metrics {
			addr, err := freeport.Addr()
			if err != nil {
				c.Stop()
				return nil, fmt.Errorf("proccluster: %w", err)
			}
			m.Metrics = addr
			m.args = append(m.args, "-metrics-addr", addr, "-pprof")
		}
		if i == 0 {
			m.args = append(m.args, "-bootstrap")
		} else {
			m.args = append(m.args, "-join", strings.Join(joins, ","))
		}
		m.args = append(m.args, cfg.Args...)
		joins = append(joins, m.GRPC)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		if err := c.start(m); err != nil {
			c.Stop()
			return nil, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	if err := c.WaitReady(wctx); err != nil {
		c.Stop()
		return nil, fmt.Errorf("proccluster: site of %d members not ready: %w", cfg.Members, err)
	}
	return c, nil
}

// FreeAddrs returns n free loopback addresses (for Config.GRPCAddrs).
func FreeAddrs(n int) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		a, err := freeport.Addr()
		if err != nil {
			return nil, fmt.Errorf("proccluster: %w", err)
		}
		out[i] = a
	}
	return out, nil
}

// start launches m's process and a goroutine that reports its exit.
func (c *Cluster) start(m *Member) error {
	logf, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("proccluster: %w", err)
	}
	cmd := exec.Command(c.cfg.Binary, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	c.mu.Lock() // held across the fork, so that Stop sees every process started
	if c.stopped {
		c.mu.Unlock()
		logf.Close()
		return errors.New("proccluster: the cluster was stopped")
	}
	if err := cmd.Start(); err != nil {
		c.mu.Unlock()
		logf.Close()
		return fmt.Errorf("proccluster: start %s: %w", m.ID, err)
	}
	exited := make(chan struct{})
	m.cmd, m.exited, m.expected = cmd, exited, false
	c.mu.Unlock()
	go func() {
		werr := cmd.Wait()
		logf.Close()
		c.mu.Lock()
		unexpected := !m.expected && !c.stopped
		c.mu.Unlock()
		if unexpected {
			c.reportDeath(m, werr)
		}
		close(exited)
	}()
	return nil
}

// reportDeath records and shows a member that exited on its own.
func (c *Cluster) reportDeath(m *Member, werr error) {
	tail := Tail(m.LogPath, tailLines)
	fmt.Fprintf(c.cfg.Stderr, "\nconnsyncd %s (%s) exited unexpectedly: %v; last lines of %s:\n%s\n", m.ID, m.GRPC, werr, m.LogPath, tail)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.diedErr == nil {
		c.diedErr = fmt.Errorf("%w: %s (%v); its log is %s", ErrMemberDied, m.ID, werr, m.LogPath)
		close(c.died)
	}
}

// Died is closed when a member exits without Kill or Stop asking for it.
func (c *Cluster) Died() <-chan struct{} { return c.died }

// Err says which member died unexpectedly, or nil.
func (c *Cluster) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.diedErr
}

// Dir is the directory holding the members' data directories and logs.
func (c *Cluster) Dir() string { return c.dir }

// Members returns the members in start order (m1 first).
func (c *Cluster) Members() []*Member { return c.members }

// Addrs returns every member's gRPC address, in start order.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.GRPC
	}
	return out
}

// Index returns the position of the member with the given ID, or -1.
func (c *Cluster) Index(id string) int {
	for i, m := range c.members {
		if m.ID == id {
			return i
		}
	}
	return -1
}

// Running reports whether member i's process is running.
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	m := c.members[i]
	ch := m.exited
	c.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// Pid returns member i's process ID, 0 if it is not running.
func (c *Cluster) Pid(i int) int {
	if !c.Running(i) {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].cmd.Process.Pid
}

// Client returns a client of the whole site (every member's address); the
// caller closes it.
func (c *Cluster) Client(timeout time.Duration) (*client.Client, error) {
	return client.New(client.Config{Addrs: c.Addrs(), Timeout: timeout})
}

// Kill sends SIGKILL to member i and waits until its process is gone.
func (c *Cluster) Kill(i int) error {
	return c.signalAndWait(i, syscall.SIGKILL, 10*time.Second)
}

// Signal sends sig to member i's process without waiting.
func (c *Cluster) Signal(i int, sig syscall.Signal) error {
	c.mu.Lock()
	m := c.members[i]
	cmd := m.cmd
	c.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return fmt.Errorf("proccluster: %s was never started", m.ID)
	}
	return cmd.Process.Signal(sig)
}

func (c *Cluster) signalAndWait(i int, sig syscall.Signal, wait time.Duration) error {
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("proccluster: no member %d (the cluster has %d)", i, len(c.members))
	}
	c.mu.Lock()
	m := c.members[i]
	m.expected = true
	cmd, exited := m.cmd, m.exited
	c.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("proccluster: %s was never started", m.ID)
	}
	select {
	case <-exited:
		return nil // already gone
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("proccluster: signal %s: %w", m.ID, err)
	}
	select {
	case <-exited:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("proccluster: %s still running %v after %v", m.ID, wait, sig)
	}
}

// Restart starts member i again from its data directory. The member must
// not be running.
func (c *Cluster) Restart(i int) error {
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("proccluster: no member %d (the cluster has %d)", i, len(c.members))
	}
	if c.Running(i) {
		return fmt.Errorf("proccluster: %s is still running; Kill it first", c.members[i].ID)
	}
	return c.start(c.members[i])
}

// Stop ends every member (SIGTERM, then SIGKILL after Config.StopTimeout)
// and removes the temporary directory unless Config.Keep. It may be called
// more than once and from any goroutine.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	type proc struct {
		id     string
		cmd    *exec.Cmd
		exited chan struct{}
	}
	var running []proc
	for _, m := range c.members {
		if m.cmd != nil {
			m.expected = true
			running = append(running, proc{m.ID, m.cmd, m.exited})
		}
	}
	c.mu.Unlock()
	for _, p := range running {
		_ = p.cmd.Process.Signal(syscall.SIGTERM) // fails harmlessly for a process already gone
	}
	deadline := time.Now().Add(c.cfg.StopTimeout)
	var errs []error
	for _, p := range running {
		select {
		case <-p.exited:
		case <-time.After(time.Until(deadline)):
			_ = p.cmd.Process.Kill()
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
				errs = append(errs, fmt.Errorf("proccluster: %s (pid %d) did not exit after SIGKILL", p.id, p.cmd.Process.Pid))
			}
		}
	}
	if c.ownDir && !c.cfg.Keep {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, fmt.Errorf("proccluster: remove %s: %w", c.dir, err))
		}
	}
	return errors.Join(errs...)
}

// Tail returns the last n lines of a file (or a note saying why it cannot).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
