// Package cluster starts in-process connsync sites for tests: real Raft over
// real loopback TCP (through faultnet, so links can be cut) with real
// raft-boltdb stores in temporary directories.
package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/faultnet"
	"github.com/connsync/connsync/integration/testkit"
	"github.com/connsync/connsync/internal/proccluster"
	"github.com/connsync/connsync/membership"
	"github.com/connsync/connsync/server"
)

// Member is one member of a test cluster. Server is nil while it is stopped.
type Member struct {
	ID     string
	Config server.Config
	Server *server.Server
}

// Addr returns the member's gRPC address.
func (m *Member) Addr() string { return m.Config.GRPCAdvertise }

// Cluster is a running test site.
type Cluster struct {
	t   testing.TB
	Hub *faultnet.Hub
	// mu guards Members and each member's Server against RunningNow, which
	// goroutines may call while the test starts and stops members.
	mu      sync.Mutex
	Members []*Member
	made    int // members ever made: the next member's number (IDs are never reused)
	opts    Options
	dir     string
	logs    *testkit.LogWriter
}

// Options tune a test cluster.
type Options struct {
	// Site name; default "site1".
	Site string
	// Tweak, if set, adjusts each member's config before it starts.
	Tweak func(*server.Config)
	// NoGossip runs the members without a gossip pool.
	NoGossip bool
	// Hub, if set, is shared with other clusters (the sites of one test);
	// default a new one.
	Hub *faultnet.Hub
	// IDPrefix names the members (prefix + index); default "m". Member IDs
	// must differ across the sites of a test.
	IDPrefix string
	// GRPCAddrs, if set, are the gRPC addresses of the first members, in
	// order, reserved on Hub for them beforehand (so two sites can name each
	// other before either starts).
	GRPCAddrs []string
	// Dir, if set, holds the members' data directories instead of a test
	// temporary directory, and each member's log (ID.log) besides the test
	// log; it is not removed (the chaos suite keeps a failing run's).
	Dir string
}

// New starts an n-member site: the first member bootstraps, the others join
// it, and New returns once every member is in the Raft configuration, has
// applied the registration of all members, and the buckets are placed
// (WaitPlaced). The cluster shuts down when the test ends.
func New(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	if opts.Site == "" {
		opts.Site = "site1"
	}
	if opts.IDPrefix == "" {
		opts.IDPrefix = "m"
	}
	if opts.Hub == nil {
		opts.Hub = faultnet.NewHub()
	}
	c := &Cluster{t: t, Hub: opts.Hub, opts: opts, dir: opts.Dir}
	if c.dir == "" {
		c.dir = t.TempDir()
	}
	c.logs = testkit.NewLogWriter(t) // registered first, so it stops last: after shutdown
	t.Cleanup(c.shutdown)
	for i := 0; i < n; i++ {
		c.Members = append(c.Members, c.newMember(i == 0))
	}
	for i, m := range c.Members {
		c.Start(m)
		if i == 0 {
			c.WaitForLeader(10 * time.Second)
		}
	}
	CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		l := c.Leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		if got := len(l.Server.FSM().Members()); got != n {
			return fmt.Errorf("leader knows %d of %d members", got, n)
		}
		return c.converged()
	})
	c.WaitPlaced(30 * time.Second)
	return c
}

// raceSlowdown is how much longer the timeouts of a member are under the race
// detector. It makes the test binary about 9 times as costly (CPU seconds of
// TestSites_ManualFailoverLosesNothing: 3.2 plain, 29.6 with -race) and
// delays message handling in bursts, so with the production timeouts six
// in-process members missed Raft's 100 ms leader lease and gossip's probe
// timeouts all through that test: leaders stepped down, members were
// suspected, and buckets moved while the test published (one run in three
// refused every publish for 5 s). The race detector is there to find data
// races, not to time the product; the figures are in docs/BENCHMARKS.md.
const raceSlowdown = 4

// slowForRace lengthens cfg's failure-detection timeouts by raceSlowdown:
// Raft's, the member lease and its heartbeat, and gossip's probes.
func slowForRace(cfg *server.Config) {
	cfg.HeartbeatTimeout *= raceSlowdown
	cfg.ElectionTimeout *= raceSlowdown
	cfg.LeaderLeaseTimeout *= raceSlowdown
	cfg.MemberLease *= raceSlowdown
	cfg.HeartbeatInterval *= raceSlowdown
	cfg.TweakGossip = func(mc *membership.Config) {
		mc.ProbeInterval *= raceSlowdown
		mc.ProbeTimeout *= raceSlowdown
		mc.GossipInterval *= raceSlowdown
	}
}

// newMember configures the next member: m0, m1, ... The first bootstraps,
// the others join through any of those made before.
func (c *Cluster) newMember(bootstrap bool) *Member {
	t := c.t
	id := fmt.Sprintf("%s%d", c.opts.IDPrefix, c.made)
	c.made++
	cfg := server.DefaultConfig()
	if raceEnabled {
		slowForRace(&cfg)
	}
	cfg.MemberID, cfg.Site = id, c.opts.Site
	cfg.DataDir = filepath.Join(c.dir, id)
	if i := c.made - 1; i < len(c.opts.GRPCAddrs) {
		cfg.GRPCBind = c.opts.GRPCAddrs[i]
	} else {
		cfg.GRPCBind = c.reserve(id)
	}
	cfg.GRPCAdvertise = cfg.GRPCBind
	cfg.RaftBind = c.reserve(id)
	cfg.RaftAdvertise = cfg.RaftBind
	cfg.Network = c.Hub.Node(id)
	if !c.opts.NoGossip {
		addr, err := faultnet.FreeAddr()
		if err != nil {
			t.Fatalf("gossip address: %v", err)
		}
		cfg.GossipBind = addr
	}
	var out io.Writer = c.logs
	if c.opts.Dir != "" {
		f, err := os.OpenFile(filepath.Join(c.opts.Dir, id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatalf("member log: %v", err)
		}
		t.Cleanup(func() { f.Close() }) // registered after the shutdown, so it runs before it: the log's last lines go to the test log only
		out = io.MultiWriter(c.logs, f)
	}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "connsyncd", Level: logLevel(), Output: out})
	if bootstrap {
		cfg.Bootstrap = true
	} else {
		// Every member made so far, as an operator lists several: the
		// first may be gone (it left, or is cut off) by the time this one
		// joins.
		for _, m := range c.Members {
			cfg.Join = append(cfg.Join, m.Config.GRPCAdvertise)
		}
	}
	if c.opts.Tweak != nil {
		c.opts.Tweak(&cfg)
	}
	return &Member{ID: id, Config: cfg}
}

// AddMember starts one more member, joining the site; tweak (may be nil)
// adjusts its config after the cluster's own Tweak.
func (c *Cluster) AddMember(tweak func(*server.Config)) *Member {
	c.t.Helper()
	m := c.newMember(false)
	if tweak != nil {
		tweak(&m.Config)
	}
	c.mu.Lock()
	c.Members = append(c.Members, m)
	c.mu.Unlock()
	c.Start(m)
	return m
}

func (c *Cluster) reserve(id string) string {
	addr, err := c.Hub.Reserve(id)
	if err != nil {
		c.t.Fatalf("reserve address: %v", err)
	}
	return addr
}

// Start starts a stopped member from its data directory.
func (c *Cluster) Start(m *Member) {
	c.t.Helper()
	if m.Server != nil {
		c.t.Fatalf("member %s is already running", m.ID)
	}
	s, err := server.New(m.Config)
	if err != nil {
		c.t.Fatalf("start %s: %v", m.ID, err)
	}
	c.mu.Lock()
	m.Server = s
	c.mu.Unlock()
}

// Stop shuts a member down; its data directory stays for Start.
func (c *Cluster) Stop(m *Member) {
	c.t.Helper()
	c.mu.Lock()
	s := m.Server
	m.Server = nil
	c.mu.Unlock()
	if s == nil {
		return
	}
	if err := s.Shutdown(); err != nil {
		c.t.Logf("shutdown %s: %v", m.ID, err)
	}
}

// Forget drops a stopped member that left the site for good from Members
// (its data directory stays).
func (c *Cluster) Forget(m *Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Members = slices.DeleteFunc(c.Members, func(x *Member) bool { return x == m })
}

// Close shuts every member down now (it also happens when the test ends).
func (c *Cluster) Close() { c.shutdown() }

func (c *Cluster) shutdown() {
	c.mu.Lock()
	ms := append([]*Member(nil), c.Members...)
	c.mu.Unlock()
	for _, m := range ms {
		c.Stop(m)
	}
	c.Hub.Close()
}

// Member returns the member with the given ID, or nil.
func (c *Cluster) Member(id string) *Member {
	for _, m := range c.Members {
		if m.ID == id {
			return m
		}
	}
	return nil
}

// RunningNow returns a copy of each running member, safe to call from any
// goroutine while the test starts and stops members.
func (c *Cluster) RunningNow() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Member
	for _, m := range c.Members {
		if m.Server != nil {
			out = append(out, *m)
		}
	}
	return out
}

// Running returns the members that are running.
func (c *Cluster) Running() []*Member {
	var out []*Member
	for _, m := range c.Members {
		if m.Server != nil {
			out = append(out, m)
		}
	}
	return out
}

// Leader returns the running member that is leader and ready to serve, or nil.
func (c *Cluster) Leader() *Member {
	for _, m := range c.Running() {
		if m.Server.IsLeader() {
			return m
		}
	}
	return nil
}

// Followers returns the running members that are not the leader.
func (c *Cluster) Followers() []*Member {
	var out []*Member
	for _, m := range c.Running() {
		if !m.Server.IsLeader() {
			out = append(out, m)
		}
	}
	return out
}

// WaitForLeader waits until some member is a ready leader.
func (c *Cluster) WaitForLeader(timeout time.Duration) *Member {
	c.t.Helper()
	var l *Member
	CheckFor(c.t, timeout, 10*time.Millisecond, func() error {
		if l = c.Leader(); l == nil {
			return fmt.Errorf("no ready leader among %d running members", len(c.Running()))
		}
		return nil
	})
	return l
}

// WaitForNewLeader waits until a member other than old is a ready leader.
func (c *Cluster) WaitForNewLeader(old *Member, timeout time.Duration) *Member {
	c.t.Helper()
	var l *Member
	CheckFor(c.t, timeout, 10*time.Millisecond, func() error {
		l = c.Leader()
		switch {
		case l == nil:
			return fmt.Errorf("no ready leader")
		case l == old:
			return fmt.Errorf("%s still leads", old.ID)
		}
		return nil
	})
	return l
}

// Addrs returns every member's gRPC address.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.Addr()
	}
	return out
}

// Client returns a client of the whole site, closed when the test ends.
func (c *Cluster) Client() *client.Client {
	cl, err := client.New(client.Config{Addrs: c.Addrs(), Timeout: 20 * time.Second})
	if err != nil {
		c.t.Fatalf("client: %v", err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// IDs returns the IDs of members.
func IDs(ms ...*Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// Isolate cuts m off from every other member.
func (c *Cluster) Isolate(m *Member) {
	var others []string
	for _, o := range c.Members {
		if o != m {
			others = append(others, o.ID)
		}
	}
	c.Hub.Isolate(m.ID, others)
}

// HealAll removes every cut.
func (c *Cluster) HealAll() { c.Hub.HealAll() }

// WaitConverged waits until every running member has applied the leader's
// last index and all their FSMs are byte-for-byte identical.
func (c *Cluster) WaitConverged(timeout time.Duration) {
	c.t.Helper()
	CheckFor(c.t, timeout, 20*time.Millisecond, c.converged)
}

func (c *Cluster) converged() error {
	run := c.Running()
	if len(run) == 0 {
		return fmt.Errorf("no running members")
	}
	var want []byte
	var wantID string
	for _, m := range run {
		if m.Server.Raft().State() == raft.Candidate {
			return fmt.Errorf("%s is a candidate", m.ID)
		}
		var buf bytes.Buffer
		if err := m.Server.FSM().WriteSnapshot(&buf); err != nil {
			return err
		}
		if want == nil {
			want, wantID = buf.Bytes(), m.ID
			continue
		}
		if !bytes.Equal(want, buf.Bytes()) {
			return fmt.Errorf("FSM of %s (applied %d) differs from %s's", m.ID, m.Server.FSM().AppliedIndex(), wantID)
		}
	}
	return nil
}

// CheckFor polls fn every interval until it returns nil, failing the test
// with fn's last error after timeout.
func CheckFor(t testing.TB, timeout, interval time.Duration, fn func() error) {
	t.Helper()
	testkit.CheckFor(t, timeout, interval, fn)
}

// Context returns a context for one test step.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// WaitPlaced waits until the leader's bucket map is settled: every bucket
// has a primary among the alive members, and (with two or more) a synced
// local backup, no move is under way, and the primaries are spread
// evenly by weight. With AutoRebalance off it asks for rebalances, as an
// operator would (connsyncctl rebalance).
func (c *Cluster) WaitPlaced(timeout time.Duration) {
	c.t.Helper()
	manual := len(c.Members) > 0 && !c.Members[0].Config.AutoRebalance
	var cl *client.Client
	if manual {
		cl = c.Client()
	}
	deadline := time.Now().Add(timeout)
	CheckFor(c.t, timeout, 20*time.Millisecond, func() error {
		l := c.Leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		err := Placed(l.Server.FSM(), !manual)
		if err != nil && manual {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = cl.Rebalance(ctx, false) // Aborted when the map changed meanwhile: the next poll asks again
		}
		if err != nil && time.Until(deadline) < 100*time.Millisecond {
			c.LogSyncStatus() // about to fail: say where replication stands
			c.logReplGoroutines()
		}
		return err
	})
}

// LogSyncStatus logs every running member's replication status.
func (c *Cluster) LogSyncStatus() {
	for _, m := range c.Running() {
		conn, err := grpc.NewClient(m.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := pb.NewOperatorServiceClient(conn).SyncStatus(ctx, &pb.SyncStatusRequest{})
		if sites, serr := pb.NewOperatorServiceClient(conn).Sites(ctx, &pb.SitesRequest{}); serr == nil && len(sites.Sites) > 1 {
			c.t.Logf("sites seen by %s: %v", m.ID, sites.Sites[1])
		}
		cancel()
		conn.Close()
		if err != nil {
			c.t.Logf("sync status of %s: %v", m.ID, err)
			continue
		}
		st.DelayClasses = nil
		c.t.Logf("sync status of %s (active %v, applied %d, leader %v): %v", m.ID, len(activeOf(m)), m.Server.FSM().AppliedIndex(), m.Server.IsLeader(), st)
	}
}

// logReplGoroutines logs the stacks of the goroutines in package repl.
func (c *Cluster) logReplGoroutines() {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "(*Replicator).Run") || strings.Contains(g, "runFSM") || strings.Contains(g, "connsync/fsm.") {
			c.t.Logf("%s", g)
		}
	}
}

func activeOf(m *Member) []*pb.BucketEpoch {
	a, _ := m.Server.Active()
	return a
}

// Placed checks that f's bucket map is settled (see WaitPlaced): the rule
// of proccluster.Settled, applied to a member's state machine; autoRebalance
// says whether the site rebalances local backups on its own.
func Placed(f *fsm.FSM, autoRebalance bool) error {
	var ms []*pb.Member
	for _, m := range f.Members() {
		ms = append(ms, m.Proto())
	}
	as, _ := f.Buckets()
	pas := make([]*pb.Assignment, len(as))
	for i, a := range as {
		pas[i] = a.Proto(uint32(i))
	}
	return proccluster.Settled(ms, pas, 0, f.Standby(), autoRebalance)
}

// Assignments returns the leader's bucket map.
func (c *Cluster) Assignments() []fsm.Assignment {
	c.t.Helper()
	l := c.WaitForLeader(10 * time.Second)
	as, _ := l.Server.FSM().Buckets()
	return as
}

// CheckEpochsGrew fails the test if any bucket's epoch in now is below its
// epoch in before (epochs are fencing tokens: they never go back).
func CheckEpochsGrew(t testing.TB, before, now []fsm.Assignment) {
	t.Helper()
	for i := range before {
		if i < len(now) && now[i].Epoch < before[i].Epoch {
			t.Fatalf("bucket %d: epoch went back from %d to %d", i, before[i].Epoch, now[i].Epoch)
		}
	}
}

// logLevel is the members' log level: warnings, or what CONNSYNC_TEST_LOG
// names (info, debug, trace) when a test is to be traced.
func logLevel() hclog.Level {
	if l := hclog.LevelFromString(os.Getenv("CONNSYNC_TEST_LOG")); l != hclog.NoLevel {
		return l
	}
	return hclog.Warn
}
