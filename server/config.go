package server

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/membership"
	"github.com/connsync/connsync/server/repl"
)

// Config configures one member. Start from DefaultConfig and set the
// identity, addresses and data directory.
type Config struct {
	// MemberID names this member in its site: 1-64 characters of [A-Za-z0-9._-].
	MemberID string
	// Site is the site this member belongs to; every member of a Raft group
	// has the same site.
	Site string
	// DataDir holds raft.db (log and stable store) and snapshots/.
	DataDir string

	// GRPCBind is the address the gRPC server listens on; GRPCAdvertise is
	// the address other members and clients use to reach it ("" = GRPCBind,
	// which must then not be an unspecified address like 0.0.0.0).
	GRPCBind, GRPCAdvertise string
	// RaftBind and RaftAdvertise are the same for Raft traffic.
	RaftBind, RaftAdvertise string

	// Bootstrap makes this member found a new site as its only voter when its
	// data directory holds no Raft state. Ignored on restart.
	Bootstrap bool
	// Join lists gRPC addresses of existing members. A member with no Raft
	// state asks them, in turn, to add it to the site, until one succeeds.
	Join []string
	// Voter says whether this member may be a Raft voter (the leader keeps
	// Voters of them); false keeps it a non-voter for good.
	Voter bool

	// BucketCount is B for a site founded by this member: a power of two.
	BucketCount uint32
	// Weight is this member's relative share of buckets (1 if 0).
	Weight uint32

	// GossipBind is the host:port the gossip pool (memberlist) binds, UDP and
	// TCP both; "" runs the member without gossip (failure detection then
	// relies on lease heartbeats and connection probes alone).
	// GossipAdvertise is the address other members use ("" = GossipBind).
	GossipBind, GossipAdvertise string

	// Raft timing. See hashicorp/raft's Config for their meaning. The
	// defaults (100 ms heartbeat and election timeouts, 100 ms leader lease)
	// elect a new leader in about 150-350 ms after the old one dies when it
	// is left to Raft's timers (a hung or cut-off leader; a crashed one is
	// usually replaced sooner, see FastElection), leaving room for the fsync
	// and GC pauses of a loaded 2-core machine; raft's own defaults take 1-2 s.
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout, CommitTimeout time.Duration
	// FastElection: a voter that finds the leader's process gone (its lease
	// stream broke and the leader's gRPC port refuses connections) starts
	// an election at once rather than after Raft's timeouts (see
	// election.go). Every member of a site should use the same value.
	FastElection bool

	// MemberLease is how long a member may act as primary after the leader
	// answered its last heartbeat (counted from when the heartbeat was sent).
	// The leader fails a member it has not heard from for longer than that
	// (plus a margin), so a member cut off from the leader has stopped acting
	// before its buckets move. A crashed process is detected much sooner, by
	// its broken connections; the lease bounds how long a hung or partitioned
	// member keeps its buckets. Every member of a site must use the same value.
	MemberLease time.Duration
	// HeartbeatInterval is how often a member renews its lease.
	HeartbeatInterval time.Duration
	// Voters is how many Raft voters the leader keeps (3 or 5); other members
	// are non-voters, and a failed voter is replaced by a healthy non-voter.
	Voters int
	// MaxMoves bounds how many make-before-break bucket moves may be under
	// way at once (each needs a full sync of the bucket to its target).
	MaxMoves int
	// AutoRebalance lets the leader rebalance on its own when members join or
	// weights change; otherwise only `connsyncctl rebalance` moves buckets
	// (failover and drains always do).
	AutoRebalance bool
	// Syncer copies a bucket's connections to this member when it becomes the
	// bucket's local backup or incoming member (nil: the replicator's full
	// sync; tests substitute their own, see BackupSyncer).
	Syncer BackupSyncer
	// DelayClasses say how long new connections of each service wait before
	// they are replicated (nil: repl.DefaultDelayClasses).
	DelayClasses []repl.DelayClass
	// OnReplicaApply, if set, is called for every connection-state record
	// this member applies as a backup (for measuring replication lag).
	OnReplicaApply func(bucket uint32, key fsm.Key, version uint64)
	// SnapshotThreshold is how many log entries pass between snapshots.
	SnapshotThreshold uint64
	// SnapshotInterval is how often Raft checks whether to snapshot.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries are kept after a snapshot, so slow
	// followers can catch up without a snapshot install.
	TrailingLogs uint64

	// ApplyTimeout bounds how long a write waits to be accepted by Raft.
	ApplyTimeout time.Duration
	// MaxBatchOps is the most operations group commit packs into one entry.
	MaxBatchOps int
	// MaxInflightEntries is how many group-commit entries may be in flight at
	// once; while they are, new requests gather into the next entry. 1 (the
	// default) gave the highest throughput and lowest latency on a 2-core
	// machine with fsync on: larger entries cost fewer fsyncs per operation
	// (docs/BENCHMARKS.md).
	MaxInflightEntries int

	// Standby makes a site founded by this member start as a standby site:
	// it acts for no bucket, and its members hold the remote backups of the
	// active site's buckets until a site failover activates it.
	Standby bool
	// PeerSite lists gRPC addresses of members of the other site (any of
	// them will do; the rest are fallbacks). Empty: a single-site cluster.
	PeerSite []string
	// SiteFailover is the site-failover policy: "manual" (a standby site is
	// activated by `connsyncctl site failover`) or "witness" (a majority of
	// the witness and the two sites' leaders grants one site the site lease;
	// a standby site that gets it activates). Automatic failover without a
	// witness could activate both sites when only the link between them
	// fails, so it is refused (docs/SITES.md).
	SiteFailover string
	// Witness lists gRPC addresses of the witness (witness policy).
	Witness []string
	// SiteLease is how long one grant of the site lease lasts; a lost site
	// is failed over a little more than this after its last renewal.
	SiteLease time.Duration
	// RemoteCompression gzips the replication streams to the other site.
	RemoteCompression bool

	// Network is the transport for Raft and member-to-member gRPC (nil = TCP).
	Network Network
	// WrapLogStore, if set, wraps the Raft log store (Raft's log cache over
	// raft-boltdb); tests use it to inject a slow disk or a missing entry.
	WrapLogStore func(raft.LogStore) raft.LogStore
	// TweakGossip, if set, adjusts the gossip pool's configuration (probe
	// and gossip intervals) after connsyncd has filled it in; tests under
	// the race detector use it to slow failure detection down.
	TweakGossip func(*membership.Config)
	// Logger receives the member's logs, Raft's included (nil = stderr, info).
	Logger hclog.Logger
}

// DefaultGCPercent is the Go garbage collector's target that connsyncd sets
// unless told otherwise (its -gc-percent flag, or GOGC in the environment):
// twice Go's default, trading heap for fewer collections. On the claims
// benchmark (2 cores, 64 clients, 8 claims per RPC) it took p99 from a median
// of 10.2 ms (Go's 100, 4 runs) to 9.0 ms (9 runs); see docs/BENCHMARKS.md.
const DefaultGCPercent = 200

// DefaultConfig returns a Config with every tunable set; identity, addresses
// and DataDir are left to the caller.
func DefaultConfig() Config {
	return Config{
		BucketCount:        fsm.DefaultBucketCount,
		Weight:             1,
		Voter:              true,
		HeartbeatTimeout:   100 * time.Millisecond,
		ElectionTimeout:    100 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		FastElection:       true,
		MemberLease:        500 * time.Millisecond,
		SiteLease:          500 * time.Millisecond,
		HeartbeatInterval:  50 * time.Millisecond,
		Voters:             3,
		MaxMoves:           512,
		AutoRebalance:      true,
		SnapshotThreshold:  8192,
		SnapshotInterval:   30 * time.Second,
		TrailingLogs:       10240,
		ApplyTimeout:       5 * time.Second,
		MaxBatchOps:        4096,
		MaxInflightEntries: 1,
	}
}

// freshLimit is how recent the leader's last confirmation of its leadership
// must be for it to grant a member lease (liveness.beat).
func (c *Config) freshLimit() time.Duration { return c.MemberLease / 4 }

// Validate checks every field and the fields against each other.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !fsm.ValidID(c.MemberID) {
		bad("member-id %q: must be 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit", c.MemberID)
	}
	if !fsm.ValidID(c.Site) {
		bad("site %q: must be 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit", c.Site)
	}
	if c.DataDir == "" {
		bad("data-dir: is required")
	}
	checkAddrs := func(name, bind, adv string) {
		if _, _, err := splitPort(bind, 0); err != nil {
			bad("%s-bind %q: %v", name, bind, err)
			return
		}
		if adv == "" {
			adv = bind
		}
		if err := checkDialable(adv); err != nil {
			bad("%s-advertise %q: %v; set it explicitly when %s-bind is %q", name, adv, err, name, bind)
		}
	}
	checkAddrs("grpc", c.GRPCBind, c.GRPCAdvertise)
	checkAddrs("raft", c.RaftBind, c.RaftAdvertise)
	if c.GossipBind != "" {
		checkAddrs("gossip", c.GossipBind, c.GossipAdvertise)
	} else if c.GossipAdvertise != "" {
		bad("gossip-advertise %q: set gossip-bind too", c.GossipAdvertise)
	}
	if c.Bootstrap && len(c.Join) > 0 {
		bad("bootstrap and join %v: a member either founds a site or joins one, not both", c.Join)
	}
	if err := fsm.ValidBucketCount(c.BucketCount); err != nil {
		bad("buckets: %v", err)
	}
	if c.HeartbeatTimeout < 5*time.Millisecond || c.ElectionTimeout < c.HeartbeatTimeout {
		bad("raft-election-timeout %v must be >= raft-heartbeat-timeout %v (>= 5ms)", c.ElectionTimeout, c.HeartbeatTimeout)
	}
	// The minimums are hashicorp/raft's own; checked here so the error names
	// the flag and comes before any store is opened.
	if c.LeaderLeaseTimeout < 5*time.Millisecond || c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		bad("raft-leader-lease-timeout %v must be >= 5ms and <= raft-heartbeat-timeout %v", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.CommitTimeout < time.Millisecond {
		bad("raft-commit-timeout %v must be >= 1ms", c.CommitTimeout)
	}
	if c.SnapshotThreshold == 0 || c.SnapshotInterval < 5*time.Millisecond {
		bad("snapshot-threshold %d must be > 0 and snapshot-interval %v >= 5ms", c.SnapshotThreshold, c.SnapshotInterval)
	}
	if c.ApplyTimeout <= 0 {
		bad("apply-timeout %v must be > 0", c.ApplyTimeout)
	}
	if c.HeartbeatInterval < time.Millisecond || c.MemberLease < 4*c.HeartbeatInterval {
		bad("member-lease %v must be at least 4 x heartbeat-interval %v (>= 1ms), so one lost heartbeat does not end it",
			c.MemberLease, c.HeartbeatInterval)
	}
	if c.Voters != 3 && c.Voters != 5 {
		bad("voters %d: must be 3 or 5", c.Voters)
	}
	if c.MaxMoves < 1 {
		bad("max-moves %d must be >= 1", c.MaxMoves)
	}
	switch c.SiteFailover {
	case "", "manual":
	case "witness":
		if len(c.Witness) == 0 || len(c.PeerSite) == 0 {
			bad("site-failover witness: set witness (the witness's address) and peer-site (the other site's members)")
		}
		if c.SiteLease < 100*time.Millisecond || c.SiteLease > time.Minute {
			bad("site-lease %v: want 100ms to 1m", c.SiteLease)
		}
	case "auto", "automatic":
		bad("site-failover %q: automatic site failover without a witness is unsafe (an inter-site link cut would activate both sites) and is not offered; use witness (with a witness) or manual", c.SiteFailover)
	default:
		bad("site-failover %q: want manual or witness", c.SiteFailover)
	}
	for _, a := range c.Witness {
		if err := checkDialable(a); err != nil {
			bad("witness %q: %v", a, err)
		}
	}
	for _, a := range c.PeerSite {
		if err := checkDialable(a); err != nil {
			bad("peer-site %q: %v", a, err)
		}
	}
	if c.MaxBatchOps < 1 || c.MaxInflightEntries < 1 {
		bad("max-batch-ops %d and max-inflight-entries %d must be >= 1", c.MaxBatchOps, c.MaxInflightEntries)
	}
	return errors.Join(errs...)
}

func (c *Config) grpcAdvertise() string {
	if c.GRPCAdvertise != "" {
		return c.GRPCAdvertise
	}
	return c.GRPCBind
}

func (c *Config) gossipAdvertise() string {
	if c.GossipAdvertise != "" {
		return c.GossipAdvertise
	}
	return c.GossipBind
}

func (c *Config) raftAdvertise() string {
	if c.RaftAdvertise != "" {
		return c.RaftAdvertise
	}
	return c.RaftBind
}

// splitPort splits host:port and checks the port is a number in
// [minPort, 65535].
func splitPort(addr string, minPort int) (host string, port int, err error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("not host:port")
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port < minPort || port > 65535 {
		return "", 0, fmt.Errorf("port must be a number from %d to 65535", minPort)
	}
	return host, port, nil
}

// checkDialable checks an address other members will dial: host:port with a
// port 1-65535 and a host that is not empty or unspecified (0.0.0.0, ::).
// The same rule applies to a member's own config and to Join requests.
func checkDialable(addr string) error {
	host, _, err := splitPort(addr, 1)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return fmt.Errorf("host must be an address other members can reach")
	}
	return nil
}
