// Package client is the Go client of connsync. It takes the gRPC addresses of
// any members of a site, sends writes to the leader (learning it from the
// members' answers, so it follows leader changes), retries calls whose outcome
// was unavailable with the same request header so the site applies a retried
// write at most once, and gives every call a deadline.
//
// A Client is safe for concurrent use; share one per process.
package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/internal/redial"
)

// mdLeaderAddr is the response header in which members name the leader.
const mdLeaderAddr = "connsync-leader-addr"

// Config configures a Client.
type Config struct {
	// Addrs are gRPC addresses (host:port) of members of one site; at least one.
	Addrs []string
	// Timeout is the deadline given to a call whose context has none,
	// retries included. Default 10s.
	Timeout time.Duration
	// MaxBackoff caps the wait between retries. Default 500ms.
	MaxBackoff time.Duration
	// Dialer, if set, makes the connections (tests use it for fault injection).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
}

// Client talks to one site.
type Client struct {
	cfg Config

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	target string // where calls go first: the leader when known

	clientID uint64
	seqMu    sync.Mutex
	seq      uint64
	inflight map[uint64]struct{}
	// writeSlots bounds writes in flight: the site remembers at most a few
	// thousand outcomes per client session (fsm.maxSessionResponses), and a
	// retry must find its outcome there.
	writeSlots chan struct{}

	selfMu sync.Mutex
	self   string // member ID at Addrs[0], once known
}

// maxWritesInFlight is below the site's per-session memory of outcomes (4096).
const maxWritesInFlight = 1024

// New returns a Client. It does not connect until the first call.
func New(cfg Config) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("client: at least one member address is required")
	}
	for _, a := range cfg.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("client: address %q: %w", a, err)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 500 * time.Millisecond
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, conns: map[string]*grpc.ClientConn{}, target: cfg.Addrs[0],
		clientID: binary.LittleEndian.Uint64(b[:]) | 1, inflight: map[uint64]struct{}{},
		writeSlots: make(chan struct{}, maxWritesInFlight)}, nil
}

// Close closes all connections.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for a, cc := range c.conns {
		errs = append(errs, cc.Close())
		delete(c.conns, a)
	}
	return errors.Join(errs...)
}

// reconnectBackoff is the connections' reconnect backoff (package redial:
// a member that restarted is reached by the next call, not after gRPC's
// default backoff of up to 2 minutes); tests make it long.
var reconnectBackoff = redial.Backoff

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, redial.DialOptions(reconnectBackoff)...)
	if c.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(c.cfg.Dialer))
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	c.conns[addr] = cc
	return cc, nil
}

// pick returns the address to try: the current target on the first attempt,
// then the hinted leader or the next configured address.
func (c *Client) pick() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.target
}

func (c *Client) moveOn(failed string, hint metadata.MD) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h := hint.Get(mdLeaderAddr); len(h) > 0 && h[0] != "" && h[0] != failed {
		c.target = h[0]
		return
	}
	if c.target != failed {
		return // someone else already moved on
	}
	for i, a := range c.cfg.Addrs {
		if a == failed {
			c.target = c.cfg.Addrs[(i+1)%len(c.cfg.Addrs)]
			return
		}
	}
	c.target = c.cfg.Addrs[0]
}

// Leader returns the address calls currently go to first.
func (c *Client) Leader() string { return c.pick() }

// header starts a write: a new sequence number in this client's session.
func (c *Client) header() *pb.RequestHeader {
	c.seqMu.Lock()
	defer c.seqMu.Unlock()
	c.seq++
	c.inflight[c.seq] = struct{}{}
	acked := c.seq
	for s := range c.inflight {
		acked = min(acked, s)
	}
	return &pb.RequestHeader{ClientId: c.clientID, Seq: c.seq, AckedSeq: acked}
}

func (c *Client) done(h *pb.RequestHeader) {
	c.seqMu.Lock()
	delete(c.inflight, h.Seq)
	c.seqMu.Unlock()
}

// retryable says whether an error may be retried: the member could not serve
// the call (no leader, not ready, connection refused). Writes are safe to
// retry because they carry the same RequestHeader.
func retryable(err error) bool {
	return status.Code(err) == codes.Unavailable
}

// withDeadline gives ctx a deadline of cfg.Timeout if it has none.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.Timeout)
}

// connError reports whether err is a failure to reach the member at all
// (refused, reset), as opposed to an answer from it.
func connError(err error) bool {
	s, ok := status.FromError(err)
	// grpc-go's own transport errors start so; a member's answers never do.
	return ok && s.Code() == codes.Unavailable && strings.HasPrefix(s.Message(), "connection error")
}

// unreachableRounds is how many times each configured address must have
// refused the connection before a call gives up early: the site is down or
// the addresses are wrong, and waiting for the deadline would only hide that.
// A member that answers at all (even "no leader") never counts, so a call
// keeps retrying through a failover as long as one member is up.
const unreachableRounds = 2

// call runs one RPC with retries until it succeeds, fails for good, or ctx
// (given a deadline of cfg.Timeout if it had none) ends.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error) error {
	return c.callN(ctx, 0, fn)
}

// callOnce runs one RPC without retries: for operations that must not be
// repeated when their outcome is unknown.
func (c *Client) callOnce(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error) error {
	return c.callN(ctx, 1, fn)
}

// notDelivered reports whether err says the call never reached a member:
// the connection could not even be dialled. Such a call may be sent again
// even when its outcome would otherwise be unknown.
func notDelivered(err error) bool {
	return connError(err) && strings.Contains(status.Convert(err).Message(), "Error while dialing")
}

// callN is call with at most attempts tries (0: until ctx ends). A try that
// could not reach a member at all (notDelivered) does not count: the next
// address is tried, so even a call that must not be repeated gets past a
// dead member.
func (c *Client) callN(ctx context.Context, attempts int, fn func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	backoff := 5 * time.Millisecond
	refused := map[string]int{}
	for attempt := 1; ; attempt++ {
		addr := c.pick()
		cc, err := c.conn(addr)
		if err != nil {
			return err
		}
		var hdr metadata.MD
		err = fn(ctx, cc, grpc.Header(&hdr))
		if err == nil || !retryable(err) {
			return err
		}
		if connError(err) {
			refused[addr]++
			if c.allRefused(refused) {
				return err
			}
		}
		if notDelivered(err) {
			attempt-- // the member never saw it
		} else if attempt == attempts {
			return err
		}
		c.moveOn(addr, hdr)
		select {
		case <-ctx.Done():
			return err // the last answer says more than "deadline exceeded"
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// allRefused reports whether every configured address has refused at least
// unreachableRounds times.
func (c *Client) allRefused(refused map[string]int) bool {
	for _, a := range c.cfg.Addrs {
		if refused[a] < unreachableRounds {
			return false
		}
	}
	return true
}

// write is call for writes: one header for all attempts.
func (c *Client) write(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, opts ...grpc.CallOption) error) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	select {
	case c.writeSlots <- struct{}{}:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	defer func() { <-c.writeSlots }()
	h := c.header()
	defer c.done(h)
	return c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		return fn(ctx, cc, h, opts...)
	})
}

// member resolves the member ID of a call: "" means the member at the first
// configured address (the firewall's own connsyncd). It is asked once and
// remembered, so the meaning does not drift when calls move to other members
// during a failover.
func (c *Client) member(ctx context.Context, id string) (string, error) {
	if id != "" {
		return id, nil
	}
	c.selfMu.Lock()
	defer c.selfMu.Unlock()
	if c.self != "" {
		return c.self, nil
	}
	cc, err := c.conn(c.cfg.Addrs[0])
	if err != nil {
		return "", err
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	st, err := pb.NewOperatorServiceClient(cc).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return "", fmt.Errorf("client: member_id is empty and the member at %s cannot say who it is: %w", c.cfg.Addrs[0], err)
	}
	c.self = st.MemberId
	return c.self, nil
}
