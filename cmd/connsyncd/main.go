// Command connsyncd runs one connsync member: the site's Raft node and FSM
// and the gRPC API. Run `connsyncd -dev` for a throwaway single-member site on
// 127.0.0.1, or see the README for a real site.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	metrics "github.com/hashicorp/go-metrics/compat"
	promsink "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/connsync/connsync/server"
	"github.com/connsync/connsync/server/repl"
)

// Defaults for addresses: -dev listens here and connsyncctl looks here.
const (
	defaultGRPC = "127.0.0.1:7420"
	defaultRaft = "127.0.0.1:7421"
	// defaultGossip is -dev's gossip address.
	defaultGossip = "127.0.0.1:7422"
)

type options struct {
	cfg         server.Config
	dev         bool
	join        string
	nonvoter    bool
	logLevel    string
	metricsAddr string
	pprof       bool
	gcPercent   int
	configFile  string
	witness     bool
	wanDelay    time.Duration
	wanTo       []string
}

// newFlagSet declares every flag. Config-file keys are the flag names.
func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("connsyncd", flag.ContinueOnError)
	c := &o.cfg
	*c = server.DefaultConfig()
	c.GRPCBind, c.RaftBind = defaultGRPC, defaultRaft
	fs.StringVar(&o.configFile, "config", "", "YAML config file; its keys are these flag names (flags given on the command line win)")
	fs.BoolVar(&o.dev, "dev", false, "run a single-member site on 127.0.0.1 with a temporary data dir")
	fs.StringVar(&c.MemberID, "member-id", "", "this member's ID, unique in its site (required)")
	fs.StringVar(&c.Site, "site", "", "the site this member belongs to (required)")
	fs.StringVar(&c.DataDir, "data-dir", "", "directory for the Raft log, stable store and snapshots (required); with -witness, for its record of the last grant")
	fs.StringVar(&c.GRPCBind, "grpc-bind", c.GRPCBind, "address the gRPC API listens on")
	fs.StringVar(&c.GRPCAdvertise, "grpc-advertise", "", "gRPC address other members and clients use (default: grpc-bind)")
	fs.StringVar(&c.RaftBind, "raft-bind", c.RaftBind, "address Raft listens on")
	fs.StringVar(&c.RaftAdvertise, "raft-advertise", "", "Raft address other members use (default: raft-bind)")
	fs.StringVar(&c.GossipBind, "gossip-bind", "", "address the gossip pool (memberlist) binds, UDP and TCP; an IP, not a name (empty: no gossip)")
	fs.StringVar(&c.GossipAdvertise, "gossip-advertise", "", "gossip address other members use (default: gossip-bind)")
	fs.BoolVar(&c.Bootstrap, "bootstrap", false, "found a new site with this member as its only voter (ignored once the data dir holds state)")
	fs.StringVar(&o.join, "join", "", "comma-separated gRPC addresses of existing members to join through")
	fs.BoolVar(&o.nonvoter, "nonvoter", false, "never become a Raft voter")
	fs.Func("buckets", fmt.Sprintf("bucket count of a new site, a power of two (default %d)", c.BucketCount), func(s string) error {
		var n uint32
		if _, err := fmt.Sscan(s, &n); err != nil {
			return fmt.Errorf("want a number: %v", err)
		}
		c.BucketCount = n
		return nil
	})
	fs.Func("weight", "relative share of buckets (default 1)", func(s string) error {
		_, err := fmt.Sscan(s, &c.Weight)
		return err
	})
	fs.DurationVar(&c.HeartbeatTimeout, "raft-heartbeat-timeout", c.HeartbeatTimeout, "Raft heartbeat timeout")
	fs.DurationVar(&c.ElectionTimeout, "raft-election-timeout", c.ElectionTimeout, "Raft election timeout")
	fs.DurationVar(&c.LeaderLeaseTimeout, "raft-leader-lease-timeout", c.LeaderLeaseTimeout, "Raft leader lease timeout")
	fs.DurationVar(&c.CommitTimeout, "raft-commit-timeout", c.CommitTimeout, "Raft commit timeout")
	fs.BoolVar(&c.FastElection, "raft-fast-election", c.FastElection, "start a Raft election at once when the leader's process is found gone (its gRPC port refuses connections), instead of after the Raft timeouts")
	fs.Uint64Var(&c.SnapshotThreshold, "snapshot-threshold", c.SnapshotThreshold, "log entries between snapshots")
	fs.DurationVar(&c.SnapshotInterval, "snapshot-interval", c.SnapshotInterval, "how often to check whether to snapshot")
	fs.Uint64Var(&c.TrailingLogs, "trailing-logs", c.TrailingLogs, "log entries kept after a snapshot")
	fs.DurationVar(&c.ApplyTimeout, "apply-timeout", c.ApplyTimeout, "how long a write may wait to enter the Raft log")
	fs.DurationVar(&c.MemberLease, "member-lease", c.MemberLease,
		"how long a member acts as primary after the leader last answered its heartbeat; a member the leader does not hear from for this long is failed over (same on every member)")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", c.HeartbeatInterval, "how often a member renews its lease")
	fs.IntVar(&c.Voters, "voters", c.Voters, "Raft voters the leader keeps: 3 or 5 (other members are non-voters)")
	fs.IntVar(&c.MaxMoves, "max-moves", c.MaxMoves, "most make-before-break bucket moves under way at once")
	fs.BoolVar(&c.AutoRebalance, "auto-rebalance", c.AutoRebalance, "rebalance buckets when members join (false: only on 'connsyncctl rebalance')")
	fs.Func("delay-classes", "how long new connections of each service wait before they are replicated, first match wins: "+
		"name=proto[:port,...]=delay;... with delay a duration, never or immediate (default \""+
		repl.FormatDelayClasses(repl.DefaultDelayClasses())+"\")", func(s string) error {
		cs, err := repl.ParseDelayClasses(s)
		if err != nil {
			return err
		}
		c.DelayClasses = cs
		return nil
	})
	fs.BoolVar(&c.Standby, "standby", false, "found the site as a standby site: it holds the other site's remote backups and acts for no bucket until 'connsyncctl site failover'")
	fs.Func("peer-site", "comma-separated gRPC addresses of members of the other site (dual site: the active site streams remote backups there)", func(s string) error {
		for _, a := range strings.Split(s, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.PeerSite = append(c.PeerSite, a)
			}
		}
		return nil
	})
	fs.StringVar(&c.SiteFailover, "site-failover", "manual", "site-failover policy: manual, or witness (needs -witness-addr); automatic failover without a witness is unsafe and refused")
	fs.Func("witness-addr", "comma-separated gRPC addresses of the witness (site-failover witness)", func(s string) error {
		for _, a := range strings.Split(s, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.Witness = append(c.Witness, a)
			}
		}
		return nil
	})
	fs.DurationVar(&c.SiteLease, "site-lease", c.SiteLease, "how long one grant of the site lease lasts (witness policy; a witness grants at most twice this)")
	fs.BoolVar(&o.witness, "witness", false, "run as the witness of a dual-site cluster: only the site-lease acceptor on -grpc-bind (no Raft, no buckets)")
	fs.BoolVar(&c.RemoteCompression, "remote-compression", false, "gzip the replication streams to the other site")
	fs.IntVar(&c.MaxBatchOps, "max-batch-ops", c.MaxBatchOps, "most operations group commit packs into one log entry")
	fs.IntVar(&c.MaxInflightEntries, "max-inflight-entries", c.MaxInflightEntries, "group-commit entries in flight at once")
	fs.DurationVar(&o.wanDelay, "emulate-wan-delay", 0, "for tests and benchmarks on one machine: delay every connection this member dials to an -emulate-wan-to address by this much each way")
	fs.Func("emulate-wan-to", "comma-separated addresses (the other site's members, the witness) that -emulate-wan-delay applies to", func(s string) error {
		for _, a := range strings.Split(s, ",") {
			if a = strings.TrimSpace(a); a != "" {
				o.wanTo = append(o.wanTo, a)
			}
		}
		return nil
	})
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn or error")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics (Raft, raft-boltdb, connsync) on this address at /metrics")
	fs.BoolVar(&o.pprof, "pprof", false, "also serve Go's runtime profiles at /debug/pprof/ on -metrics-addr (for profiling; anyone who reaches the address can read them)")
	fs.IntVar(&o.gcPercent, "gc-percent", server.DefaultGCPercent,
		"Go garbage collector target (GOGC): more heap for fewer collections; 0 leaves Go's default, or GOGC from the environment if set")
	return fs
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "connsyncd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var o options
	fs := newFlagSet(&o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (all settings are -flags)", fs.Args())
	}
	if o.configFile != "" {
		if err := applyConfigFile(fs, o.configFile); err != nil {
			return err
		}
	}
	level := hclog.LevelFromString(o.logLevel)
	if level == hclog.NoLevel {
		return fmt.Errorf("log-level %q: want trace, debug, info, warn or error", o.logLevel)
	}
	o.cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "connsyncd", Level: level})
	if o.join != "" {
		for _, a := range strings.Split(o.join, ",") {
			if a = strings.TrimSpace(a); a != "" {
				o.cfg.Join = append(o.cfg.Join, a)
			}
		}
	}
	o.cfg.Voter = !o.nonvoter
	if o.dev {
		cleanup, err := devDefaults(fs, &o.cfg)
		if err != nil {
			return err
		}
		defer cleanup()
	}
	switch {
	case o.gcPercent < 0:
		return fmt.Errorf("gc-percent %d: want a positive percentage, or 0 for Go's default", o.gcPercent)
	case o.gcPercent > 0 && os.Getenv("GOGC") == "":
		debug.SetGCPercent(o.gcPercent)
	}
	if o.pprof && o.metricsAddr == "" {
		return errors.New("pprof: profiles are served on -metrics-addr; give one (e.g. -metrics-addr 127.0.0.1:9102)")
	}
	if o.metricsAddr != "" {
		if err := serveMetrics(o.metricsAddr, o.pprof); err != nil {
			return err
		}
	}
	switch {
	case o.wanDelay < 0:
		return fmt.Errorf("emulate-wan-delay %v: want a positive duration", o.wanDelay)
	case o.wanDelay > 0 && len(o.wanTo) == 0:
		return errors.New("emulate-wan-delay: give the addresses it applies to with -emulate-wan-to")
	case o.wanDelay > 0:
		to := map[string]bool{}
		for _, a := range o.wanTo {
			to[a] = true
		}
		o.cfg.Network = wanNetwork{d: o.wanDelay, to: to}
	}
	if o.witness {
		return runWitness(&o)
	}
	s, err := server.New(o.cfg)
	if err != nil {
		return err
	}
	if o.dev {
		printDevBanner(s, &o.cfg)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	sig := <-sigs
	o.cfg.Logger.Info("shutting down", "signal", sig.String())
	if err := s.Shutdown(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// runWitness serves the site-lease acceptor until SIGTERM or SIGINT.
func runWitness(o *options) error {
	if o.dev || o.join != "" || o.cfg.Bootstrap {
		return errors.New("-witness runs only the site-lease acceptor: drop -dev, -join and -bootstrap")
	}
	if o.cfg.DataDir == "" {
		o.cfg.Logger.Warn("witness without -data-dir: its grants are kept in memory only; restarted, it cannot tell a site that was superseded (docs/SITES.md)")
	} else if err := os.MkdirAll(o.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("data-dir: %w", err)
	}
	w, err := server.NewWitness(server.WitnessConfig{Bind: o.cfg.GRPCBind, MaxLease: 2 * o.cfg.SiteLease, DataDir: o.cfg.DataDir, Logger: o.cfg.Logger})
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	sig := <-sigs
	o.cfg.Logger.Info("witness shutting down", "signal", sig.String())
	w.Close()
	return nil
}

// devDefaults fills what -dev implies for every flag not given explicitly.
func devDefaults(fs *flag.FlagSet, c *server.Config) (cleanup func(), err error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["join"] {
		return nil, errors.New("-dev runs a site of its own; it cannot be combined with -join")
	}
	if !set["member-id"] {
		c.MemberID = "dev"
	}
	if !set["site"] {
		c.Site = "dev"
	}
	c.Bootstrap = true
	if !set["gossip-bind"] {
		c.GossipBind = defaultGossip
	}
	cleanup = func() {}
	if !set["data-dir"] {
		dir, err := os.MkdirTemp("", "connsyncd-dev-")
		if err != nil {
			return nil, err
		}
		c.DataDir = dir
		cleanup = func() { os.RemoveAll(dir) }
	}
	return cleanup, nil
}

func printDevBanner(s *server.Server, c *server.Config) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil && !s.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf(`
connsync dev member %q of site %q is ready (data in %s, removed on exit).
  gRPC API:  %s   (connsyncctl's default address)
  Raft:      %s
  Gossip:    %s
Try, in another shell:
  go run ./cmd/connsyncctl status
  go run ./cmd/connsyncctl claim tcp 10.0.0.1:1234 192.0.2.1:80
  go run ./cmd/connsyncctl lookup tcp 192.0.2.1:80 10.0.0.1:1234
  grpcurl -plaintext %s list
Stop with Ctrl-C.

`, c.MemberID, c.Site, c.DataDir, s.Addr(), c.RaftBind, c.GossipBind, s.Addr())
}

// serveMetrics sends go-metrics (which Raft and raft-boltdb emit) to a
// Prometheus sink and serves it. Without a sink those metrics vanish. With
// withPprof it serves net/http/pprof's profiles too.
func serveMetrics(addr string, withPprof bool) error {
	sink, err := promsink.NewPrometheusSink()
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mc := metrics.DefaultConfig("connsync")
	mc.EnableHostname = false
	if _, err := metrics.NewGlobal(mc, sink); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics-addr %s: %w", addr, err)
	}
	go srv.Serve(ln)
	return nil
}
