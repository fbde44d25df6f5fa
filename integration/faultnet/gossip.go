package faultnet

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// GossipTransport is a member's memberlist transport: a real
// memberlist.NetTransport (UDP and TCP on one loopback port) whose traffic
// obeys the Hub's cuts. Across a cut, packets are dropped silently on send
// (by the destination's owner) and on receipt (by the source's owner), stream
// dials fail with ErrPartitioned, streams open when the cut is made are
// closed, and a stream accepted from a cut member is closed at its first
// read. Give it to membership.Config.Transport; the pool shuts it down.
type GossipTransport struct {
	hub    *Hub
	member string
	addr   string
	inner  *memberlist.NetTransport

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	stopping chan struct{} // closed first by Shutdown: stop delivering
	done     chan struct{} // closed once inner has shut down: stop forwarding
	wg       sync.WaitGroup
	once     sync.Once
}

var _ memberlist.NodeAwareTransport = (*GossipTransport)(nil)

// GossipTransport binds a memberlist transport for this member on bindAddr
// ("127.0.0.1:port"; "" picks a free port with FreeAddr) and registers the
// address as the member's in the Hub. logger receives memberlist's transport
// log (nil discards). The result is a *GossipTransport; it is returned as a
// memberlist.Transport so that Net satisfies server.GossipNetwork.
func (n *Net) GossipTransport(bindAddr string, logger hclog.Logger) (memberlist.Transport, error) {
	t, err := n.gossipTransport(bindAddr, logger)
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return t, nil
}

func (n *Net) gossipTransport(bindAddr string, logger hclog.Logger) (*GossipTransport, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	std := logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	var (
		inner *memberlist.NetTransport
		err   error
	)
	for range 10 { // a free port can be taken before we bind it: try another
		addr := bindAddr
		if addr == "" {
			if addr, err = FreeAddr(); err != nil {
				return nil, err
			}
		}
		host, port, perr := net.SplitHostPort(addr)
		if perr != nil {
			return nil, fmt.Errorf("faultnet: gossip bind address %q: %w", addr, perr)
		}
		p, perr := strconv.Atoi(port)
		if perr != nil || net.ParseIP(host) == nil {
			return nil, fmt.Errorf("faultnet: gossip bind address %q: want ip:port", addr)
		}
		inner, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: p, Logger: std})
		if err == nil || bindAddr != "" {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("faultnet: gossip transport: %w", err)
	}
	ip, port, err := inner.FinalAdvertiseAddr("", 0)
	if err != nil {
		_ = inner.Shutdown()
		return nil, err
	}
	t := &GossipTransport{
		hub:      n.hub,
		member:   n.member,
		addr:     net.JoinHostPort(ip.String(), strconv.Itoa(port)),
		inner:    inner,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}
	n.hub.mu.Lock()
	n.hub.owner[t.addr] = n.member
	n.hub.mu.Unlock()
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t, nil
}

// Addr returns the transport's "ip:port" (UDP and TCP).
func (t *GossipTransport) Addr() string { return t.addr }

// FinalAdvertiseAddr is the inner transport's: the configured address, or
// the bound one.
func (t *GossipTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

// WriteTo sends a packet unless the link to addr's owner is cut, in which
// case the packet is lost (no error, as on a real network).
func (t *GossipTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress: see WriteTo.
func (t *GossipTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.hub.isCut(t.member, t.hub.ownerOf(a.Addr)) {
		return time.Now(), nil
	}
	return t.inner.WriteToAddress(b, a)
}

// PacketCh delivers the packets whose sender is not cut off from this
// member.
func (t *GossipTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout opens a stream unless the link to addr's owner is cut.
func (t *GossipTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout: see DialTimeout. The stream's local address is
// registered in the Hub so that the accepting member can tell who dialled.
func (t *GossipTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	h := t.hub
	to := h.ownerOf(a.Addr)
	if h.isCut(t.member, to) {
		return nil, fmt.Errorf("%w: %s -> %s", ErrPartitioned, t.member, to)
	}
	c, err := t.inner.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	gc := &gossipConn{conn: &conn{Conn: c, hub: h, from: t.member, to: to}, local: c.LocalAddr().String()}
	h.mu.Lock()
	h.conns[gc.conn] = struct{}{}
	h.streams[gc.local] = gc
	h.mu.Unlock()
	if h.isCut(t.member, to) { // cut while dialling
		gc.Close()
		return nil, fmt.Errorf("%w: %s -> %s", ErrPartitioned, t.member, to)
	}
	return gc, nil
}

// StreamCh delivers accepted streams; see acceptedConn.
func (t *GossipTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown closes the sockets and waits for the transport's goroutines. It
// is idempotent.
func (t *GossipTransport) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.stopping)
		// Forwarders keep draining the inner channels, dropping what they
		// read, until the inner listeners (which block on those channels)
		// have exited.
		err = t.inner.Shutdown()
		close(t.done)
		t.wg.Wait()
	})
	return err
}

func (t *GossipTransport) forwardPackets() {
	defer t.wg.Done()
	for {
		select {
		case p := <-t.inner.PacketCh():
			if t.hub.isCut(t.hub.ownerOf(p.From.String()), t.member) {
				continue
			}
			select {
			case t.packetCh <- p:
			case <-t.stopping:
			}
		case <-t.done:
			return
		}
	}
}

func (t *GossipTransport) forwardStreams() {
	defer t.wg.Done()
	for {
		select {
		case c := <-t.inner.StreamCh():
			select {
			case t.streamCh <- &acceptedConn{Conn: c, t: t}:
			case <-t.stopping:
				c.Close()
			}
		case <-t.done:
			return
		}
	}
}

// gossipConn is a stream dialled through a GossipTransport.
type gossipConn struct {
	*conn
	local string
}

func (c *gossipConn) Close() error {
	err := c.conn.Close()
	h := c.hub
	h.mu.Lock()
	if h.streams[c.local] == c {
		delete(h.streams, c.local)
	}
	h.mu.Unlock()
	return err
}

// acceptedConn is a stream accepted by a GossipTransport. Its dialler is
// known only once the dialler has registered the stream, which it does
// before writing anything: so the check runs after the first read returns.
type acceptedConn struct {
	net.Conn
	t    *GossipTransport
	once sync.Once
	cut  error
}

func (c *acceptedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.once.Do(func() {
		h := c.t.hub
		h.mu.Lock()
		var from string
		if gc := h.streams[c.Conn.RemoteAddr().String()]; gc != nil {
			from = gc.from
		}
		h.mu.Unlock()
		if h.isCut(from, c.t.member) {
			c.cut = fmt.Errorf("%w: %s -> %s", ErrPartitioned, from, c.t.member)
			c.Conn.Close()
		}
	})
	if c.cut != nil {
		return 0, c.cut
	}
	return n, err
}

func (h *Hub) ownerOf(addr string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.owner[addr]
}
