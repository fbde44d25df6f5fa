package membership

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// Config configures a Pool. Start from DefaultConfig, set MemberID, BindAddr
// and Meta, and call Validate (New does too).
//
// The timings are tuned for a site's LAN. Gossip only proposes a failure:
// the site's leader confirms it by other means (a broken delta stream and a
// connection probe, and leases) before anything moves. So the defaults make
// gossip propose quickly and accept that a member starved of CPU for a few
// hundred milliseconds may be proposed dead and come back (memberlist's
// Lifeguard extensions, on by default, slow a member's own probing down when
// it notices that it is the slow one). BenchmarkPool_FailedLatency measures
// the result; see DefaultConfig.
type Config struct {
	// MemberID names the member in the pool (memberlist node name). Required;
	// unique within the pool.
	MemberID string
	// BindAddr is the "ip:port" the pool listens on, UDP and TCP on the same
	// port. Required and explicit: an appliance has many interfaces, and a
	// host name is rejected because memberlist would bind every address.
	// With Transport set, it must be the address that transport listens on.
	BindAddr string
	// AdvertiseAddr is the "ip:port" the other members use; "" means
	// BindAddr, which then must not be an unspecified address (0.0.0.0, ::).
	AdvertiseAddr string
	// Meta is gossiped with the member; Meta.Incarnation 0 means New draws a
	// random one. Its encoding must fit MaxMetaSize.
	Meta Meta
	// Label, if set, is prefixed to every gossip packet and stream, and a
	// pool drops traffic carrying another label: set it to the site name so a
	// mistyped join address cannot merge two sites' pools. Default "" (no
	// label); at most 255 bytes; every member of a pool must use the same.
	Label string

	// ProbeInterval is how often the pool probes one other member (round
	// robin), so each member is probed about once per interval by someone.
	// Default 100ms (memberlist's LAN default is 1s). At least 10ms.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for a direct ack before asking
	// IndirectChecks other members to probe too; until the end of the probe
	// interval it also tries a TCP ping. A LAN round trip is well under a
	// millisecond, so 50ms is mostly slack for a busy peer. Default 50ms; must
	// be less than ProbeInterval.
	ProbeTimeout time.Duration
	// SuspicionMult sets how long a suspected member has to refute before it
	// is declared dead: SuspicionMult * max(1, log10(members)) *
	// ProbeInterval, i.e. 200ms for up to 10 members with the defaults. With
	// 2 the pool needs no confirmation from other members (memberlist expects
	// SuspicionMult-2 of them before it shortens the timeout from its
	// maximum), which keeps detection fast in a 3-member site. Default 2;
	// at least 1.
	SuspicionMult int
	// SuspicionMaxTimeoutMult bounds the suspicion timeout, as a multiple of
	// the one above, while confirmations are awaited (SuspicionMult > 2).
	// Default 6 (memberlist's LAN default); at least 1.
	SuspicionMaxTimeoutMult int
	// GossipInterval is how often queued messages (suspect, dead, alive,
	// metadata changes, leave notices) are sent to GossipNodes random
	// members. A suspicion reaches the suspect, which refutes it, within a
	// few of these. Default 50ms (LAN default 200ms). At least 10ms.
	GossipInterval time.Duration
	// GossipNodes is how many members each gossip round goes to. Default 3
	// (LAN default); at least 1.
	GossipNodes int
	// RetransmitMult: each message is gossiped RetransmitMult *
	// ceil(log10(members+1)) times. Default 4 (LAN default); at least 1.
	RetransmitMult int
	// IndirectChecks is how many other members are asked to probe a member
	// that did not ack in time. Default 3 (LAN default); 0 disables indirect
	// probes.
	IndirectChecks int
	// PushPullInterval is how often the pool exchanges its full state with
	// one random member (anti-entropy). Default 10s (LAN default 30s: a site
	// is small, so a full exchange is cheap).
	PushPullInterval time.Duration
	// GossipToTheDeadTime is how long the pool keeps gossiping to a member
	// it declared dead, if it has anything to gossip (a suspicion, a
	// metadata change): a member that hears of its own death refutes it and
	// is alive again. Probes and push/pull go to live members only, so in a
	// quiet pool members that declared each other dead (after a partition,
	// say) do not reconnect by themselves: the caller Joins again. Default
	// 30s (LAN default).
	GossipToTheDeadTime time.Duration
	// TCPTimeout bounds the TCP exchanges of Join and push/pull. Default 2s
	// (LAN default 10s; a LAN peer that does not answer in 2s is not there).
	TCPTimeout time.Duration
	// BroadcastTimeout is how long UpdateMeta waits for the change to be
	// gossiped. Default 2s.
	BroadcastTimeout time.Duration

	// Transport, if set, replaces memberlist's UDP+TCP transport on BindAddr
	// (tests inject faults with it). The pool owns it from New on and shuts
	// it down, also when New fails.
	Transport memberlist.Transport
	// Logger receives the pool's log and memberlist's own (its "[LEVEL]"
	// prefixes become hclog levels). nil discards.
	Logger hclog.Logger
}

// minInterval is the shortest probe or gossip interval Validate accepts:
// anything shorter is a busy loop, not a failure detector.
const minInterval = 10 * time.Millisecond

// DefaultConfig returns the LAN defaults described on Config's fields,
// starting from memberlist.DefaultLANConfig. MemberID, BindAddr and Meta are
// left for the caller.
//
// With these defaults a member that crashes (Shutdown without Leave) is
// reported EventFailed by the others after 300-580ms: p50 363-387ms, max
// 484-580ms over 5 batches of 20 crashes in a 3-member pool on loopback, on
// a 2-core machine (BenchmarkPool_FailedLatency, whose comment has the
// command). memberlist's LAN defaults would need over 5s: a 1s probe
// interval and a 4s suspicion timeout.
func DefaultConfig() Config {
	lan := memberlist.DefaultLANConfig()
	return Config{
		ProbeInterval:           100 * time.Millisecond,
		ProbeTimeout:            50 * time.Millisecond,
		SuspicionMult:           2,
		SuspicionMaxTimeoutMult: lan.SuspicionMaxTimeoutMult,
		GossipInterval:          50 * time.Millisecond,
		GossipNodes:             lan.GossipNodes,
		RetransmitMult:          lan.RetransmitMult,
		IndirectChecks:          lan.IndirectChecks,
		PushPullInterval:        10 * time.Second,
		GossipToTheDeadTime:     lan.GossipToTheDeadTime,
		TCPTimeout:              2 * time.Second,
		BroadcastTimeout:        2 * time.Second,
	}
}

// Validate checks every field and returns all problems at once, each
// wrapping ErrInvalidConfig and naming the field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if c.MemberID == "" {
		bad("MemberID is required")
	}
	bindIP, _, err := parseAddr(c.BindAddr)
	if err != nil {
		bad("BindAddr %q: %v", c.BindAddr, err)
	}
	if c.AdvertiseAddr == "" {
		if err == nil && bindIP.IsUnspecified() {
			bad("AdvertiseAddr is empty and BindAddr %q is an unspecified address: set AdvertiseAddr to an address the other members can reach", c.BindAddr)
		}
	} else if ip, _, err := parseAddr(c.AdvertiseAddr); err != nil {
		bad("AdvertiseAddr %q: %v", c.AdvertiseAddr, err)
	} else if ip.IsUnspecified() {
		bad("AdvertiseAddr %q: is an unspecified address; the other members cannot reach it", c.AdvertiseAddr)
	}
	if _, err := c.Meta.Encode(); err != nil {
		bad("Meta: %v", err)
	}
	if len(c.Label) > memberlist.LabelMaxSize {
		bad("Label: %d bytes, more than %d", len(c.Label), memberlist.LabelMaxSize)
	}
	if c.ProbeInterval < minInterval {
		bad("ProbeInterval %v: must be at least %v", c.ProbeInterval, minInterval)
	}
	if c.ProbeTimeout <= 0 || c.ProbeTimeout >= c.ProbeInterval {
		bad("ProbeTimeout %v: must be positive and less than ProbeInterval %v", c.ProbeTimeout, c.ProbeInterval)
	}
	if c.SuspicionMult < 1 {
		bad("SuspicionMult %d: must be at least 1", c.SuspicionMult)
	}
	if c.SuspicionMaxTimeoutMult < 1 {
		bad("SuspicionMaxTimeoutMult %d: must be at least 1", c.SuspicionMaxTimeoutMult)
	}
	if c.GossipInterval < minInterval {
		bad("GossipInterval %v: must be at least %v", c.GossipInterval, minInterval)
	}
	if c.GossipNodes < 1 {
		bad("GossipNodes %d: must be at least 1", c.GossipNodes)
	}
	if c.RetransmitMult < 1 {
		bad("RetransmitMult %d: must be at least 1", c.RetransmitMult)
	}
	if c.IndirectChecks < 0 {
		bad("IndirectChecks %d: must not be negative", c.IndirectChecks)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"PushPullInterval", c.PushPullInterval},
		{"GossipToTheDeadTime", c.GossipToTheDeadTime},
		{"TCPTimeout", c.TCPTimeout},
		{"BroadcastTimeout", c.BroadcastTimeout},
	} {
		if d.v <= 0 {
			bad("%s %v: must be positive", d.name, d.v)
		}
	}
	return errors.Join(errs...)
}

// advertiseAddr returns the address the other members use, normalised
// ("127.0.0.1:7946", "[::1]:7946"). Call only on a valid Config.
func (c *Config) advertiseAddr() string {
	a := c.AdvertiseAddr
	if a == "" {
		a = c.BindAddr
	}
	ip, port, _ := parseAddr(a)
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}

// parseAddr splits an "ip:port" address. The host must be an IP literal and
// the port 1-65535.
func parseAddr(s string) (net.IP, int, error) {
	if s == "" {
		return nil, 0, errors.New("is required")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, 0, err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("host %q is not an IP address (memberlist binds and advertises IP literals only)", host)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return nil, 0, fmt.Errorf("port %q: must be 1-65535 (0 is not allowed: UDP and TCP must share one known port)", port)
	}
	return ip, p, nil
}
