package membership

import (
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// Pool is the local member's view of its site's gossip pool. All methods may
// be called from any goroutine.
//
// Locks: lifeMu serialises UpdateMeta, Leave and Shutdown and is held while
// they call into memberlist. mu guards the view, the local Meta and the event
// queue; memberlist's callbacks take it while holding memberlist's own node
// lock, so the order is lifeMu, then memberlist's locks, then mu, and nothing
// calls into memberlist while holding mu.
type Pool struct {
	cfg        Config
	logger     hclog.Logger
	ml         *memberlist.Memberlist
	localAddr  string
	broadcasts *memberlist.TransmitLimitedQueue // leave notices
	numAlive   atomic.Int32                     // members in view with StateAlive, self included

	lifeMu   sync.Mutex
	left     bool
	shutdown bool

	mu      sync.Mutex
	meta    Meta
	metaBuf []byte
	view    map[string]Node   // every member ever reported, with its last state
	intents map[string]uint64 // member -> incarnation that announced its leave
	queue   eventQueue
	closed  bool // Shutdown stopped the pump: queue no more events

	events chan Event
	signal chan struct{} // wakes the pump; capacity 1
	stop   chan struct{} // closed by Shutdown
	done   chan struct{} // closed when the pump has exited
}

// New validates cfg, starts memberlist (which listens on BindAddr, or uses
// cfg.Transport) and returns once the pool is listening and knows only
// itself; call Join to meet the other members. It draws a random
// Meta.Incarnation if cfg.Meta.Incarnation is 0. On error nothing is left
// running and cfg.Transport, if any, is shut down.
func New(cfg Config) (*Pool, error) {
	if err := cfg.Validate(); err != nil {
		if cfg.Transport != nil {
			_ = cfg.Transport.Shutdown()
		}
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	for cfg.Meta.Incarnation == 0 {
		cfg.Meta.Incarnation = rand.Uint64()
	}
	metaBuf, _ := cfg.Meta.Encode() // fits: Validate checked
	p := &Pool{
		cfg:       cfg,
		logger:    logger,
		localAddr: cfg.advertiseAddr(),
		meta:      cfg.Meta,
		metaBuf:   metaBuf,
		view:      map[string]Node{},
		intents:   map[string]uint64{},
		events:    make(chan Event),
		signal:    make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	p.broadcasts = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return max(1, int(p.numAlive.Load())) },
		RetransmitMult: cfg.RetransmitMult,
	}
	go p.pump()
	ml, err := memberlist.Create(p.memberlistConfig())
	if err != nil {
		close(p.stop)
		<-p.done
		if cfg.Transport != nil {
			_ = cfg.Transport.Shutdown()
		}
		return nil, fmt.Errorf("membership: start gossip on %s: %w", cfg.BindAddr, err)
	}
	p.ml = ml
	logger.Debug("gossip pool started", "member", cfg.MemberID, "bind", cfg.BindAddr, "advertise", p.localAddr)
	return p, nil
}

// memberlistConfig translates a validated Config.
func (p *Pool) memberlistConfig() *memberlist.Config {
	c := p.cfg
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.MemberID
	bindIP, bindPort, _ := parseAddr(c.BindAddr)
	mc.BindAddr, mc.BindPort = bindIP.String(), bindPort
	advIP, advPort, _ := parseAddr(p.localAddr)
	mc.AdvertiseAddr, mc.AdvertisePort = advIP.String(), advPort
	mc.Label = c.Label
	mc.ProbeInterval = c.ProbeInterval
	mc.ProbeTimeout = c.ProbeTimeout
	mc.SuspicionMult = c.SuspicionMult
	mc.SuspicionMaxTimeoutMult = c.SuspicionMaxTimeoutMult
	mc.GossipInterval = c.GossipInterval
	mc.GossipNodes = c.GossipNodes
	mc.RetransmitMult = c.RetransmitMult
	mc.IndirectChecks = c.IndirectChecks
	mc.PushPullInterval = c.PushPullInterval
	mc.GossipToTheDeadTime = c.GossipToTheDeadTime
	mc.TCPTimeout = c.TCPTimeout
	mc.Transport = c.Transport
	d := delegate{p}
	mc.Delegate = d
	mc.Events = d
	mc.Logger = p.logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	return mc
}

// Join contacts the given gossip addresses ("ip:port", or "host:port"
// resolved through DNS) of existing members and exchanges state with each.
// Addresses equal to this pool's own bind or advertise address are skipped,
// so every member can be given the same list. It returns how many addresses
// were contacted; the error (wrapping ErrJoin) is non-nil only if none was.
// With nothing but its own address Join returns 0, nil. It blocks for up to
// TCPTimeout per unreachable address.
func (p *Pool) Join(addrs []string) (int, error) {
	p.lifeMu.Lock()
	switch {
	case p.shutdown:
		p.lifeMu.Unlock()
		return 0, ErrShutdown
	case p.left:
		p.lifeMu.Unlock()
		return 0, ErrLeft
	}
	p.lifeMu.Unlock()
	self := map[string]bool{p.localAddr: true, normAddr(p.cfg.BindAddr): true}
	var others []string
	for _, a := range addrs {
		if !self[normAddr(a)] {
			others = append(others, a)
		}
	}
	if len(others) == 0 {
		return 0, nil
	}
	n, err := p.ml.Join(others)
	if err != nil {
		return n, fmt.Errorf("%w: %v", ErrJoin, err)
	}
	return n, nil
}

// normAddr normalises an "ip:port" address for comparison; other strings are
// returned as they are.
func normAddr(a string) string {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return a
	}
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	}
	return net.JoinHostPort(host, port)
}

// Members returns every member the pool believes alive (suspected ones
// included, see StateSuspect), itself included until it leaves, sorted by
// ID.
func (p *Pool) Members() []Node {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Node, 0, len(p.view))
	for _, n := range p.view {
		if n.State == StateAlive || n.State == StateSuspect {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Node returns what the pool last learnt about member id: alive, or the
// state in which it was last seen (dead or left). ok is false for a member
// the pool never saw.
func (p *Pool) Node(id string) (n Node, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, ok = p.view[id]
	return n, ok
}

// Meta returns the local member's current Meta, with its incarnation.
func (p *Pool) Meta() Meta {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.meta
}

// Events returns the channel of membership changes, in the order the pool
// saw them, starting with the local member's own EventJoined. The channel is
// the same on every call and is closed by Shutdown; events still queued then
// are dropped.
//
// memberlist is never blocked by a slow consumer: events wait in an
// unbounded queue. If the queue grows past a few thousand events it is
// compacted to the latest event of each member (and a warning is logged),
// so a stalled consumer loses history but never a member's latest state.
func (p *Pool) Events() <-chan Event { return p.events }

// UpdateMeta replaces the local member's Meta and gossips it; the others
// report EventUpdated (and so does this pool for itself). m.Incarnation may
// be 0 (keep the current one) but not a different value: the incarnation is
// fixed for the life of the pool. It waits for the change to be gossiped to
// the other members, up to BroadcastTimeout, and then returns an error
// wrapping ErrBroadcastTimeout; the change is in effect anyway and keeps
// spreading.
func (p *Pool) UpdateMeta(m Meta) error {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	switch {
	case p.shutdown:
		return ErrShutdown
	case p.left:
		return ErrLeft
	}
	p.mu.Lock()
	cur := p.meta.Incarnation
	p.mu.Unlock()
	if m.Incarnation == 0 {
		m.Incarnation = cur
	} else if m.Incarnation != cur {
		return fmt.Errorf("%w: incarnation %d: the pool's is %d and cannot change", ErrInvalidMeta, m.Incarnation, cur)
	}
	buf, err := m.Encode()
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.meta, p.metaBuf = m, buf
	p.mu.Unlock()
	if err := p.ml.UpdateNode(p.cfg.BroadcastTimeout); err != nil {
		return fmt.Errorf("%w: meta update after %v: %v", ErrBroadcastTimeout, p.cfg.BroadcastTimeout, err)
	}
	return nil
}

// LocalAddr returns the gossip address the other members use for this one
// (normalised "ip:port").
func (p *Pool) LocalAddr() string { return p.localAddr }

// Leave announces that this member leaves, so the others report EventLeft
// rather than EventFailed, and waits up to timeout (<= 0 means
// BroadcastTimeout) for the announcement to be gossiped; on timeout it
// returns an error wrapping ErrBroadcastTimeout, and the others may report
// EventFailed. The pool keeps running (still answering the others) until
// Shutdown, but cannot Join or UpdateMeta again: a member that comes back
// starts a new Pool. Leave on a pool that left is a no-op.
func (p *Pool) Leave(timeout time.Duration) error {
	if timeout <= 0 {
		timeout = p.cfg.BroadcastTimeout
	}
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	switch {
	case p.shutdown:
		return ErrShutdown
	case p.left:
		return nil
	}
	p.left = true
	deadline := time.Now().Add(timeout)
	p.mu.Lock()
	inc := p.meta.Incarnation
	p.intents[p.cfg.MemberID] = inc // our own NotifyLeave reports EventLeft
	p.mu.Unlock()

	// The notice goes first, so that the others hold it when memberlist's
	// dead message arrives; half the time for it, the rest for memberlist.
	var noticeErr error
	if p.numAlive.Load() > 1 {
		t := time.NewTimer(timeout / 2)
		select {
		case <-p.leaveNotice(inc):
		case <-t.C:
			noticeErr = fmt.Errorf("%w: leave notice after %v", ErrBroadcastTimeout, timeout/2)
		}
		t.Stop()
	}
	// memberlist.Leave waits forever if given 0, so never pass less than 1ms.
	if err := p.ml.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("%w: leave after %v: %v", ErrBroadcastTimeout, timeout, err)
	}
	return noticeErr
}

// Shutdown stops gossip without announcing anything (to the others this
// member has crashed unless it called Leave first), closes the Events
// channel and returns once memberlist and the transport have stopped. It
// waits for an UpdateMeta or Leave in progress. Calling it again is a no-op.
func (p *Pool) Shutdown() error {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	if p.shutdown {
		return nil
	}
	p.shutdown = true
	err := p.ml.Shutdown()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	if err != nil {
		return fmt.Errorf("membership: shutdown: %w", err)
	}
	return nil
}
