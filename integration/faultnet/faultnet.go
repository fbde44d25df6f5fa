// Package faultnet is a fault-injecting network for in-process clusters. It
// wraps real loopback TCP: every member gets a Net (a server.Network) from one
// Hub, and the Hub can cut the links between members. A cut refuses new
// connections between the two members and closes the ones open between them,
// in both directions (Partition) or for one member against all (Isolate).
//
// Listeners can be reserved up front (Reserve), so a member's advertised
// addresses are known, and stable across restarts, before it starts.
//
// Gossip goes through the same cuts: Net.GossipTransport gives a member a
// memberlist transport (real UDP and TCP on one loopback port, see FreeAddr)
// that drops packets and refuses streams across a cut.
package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/connsync/connsync/internal/wan"
)

// ErrPartitioned is returned by Dial across a cut link.
var ErrPartitioned = errors.New("faultnet: link is partitioned")

// Hub connects the members of one test cluster.
type Hub struct {
	mu       sync.Mutex
	owner    map[string]string       // listen address -> member
	reserved map[string]net.Listener // address -> listener opened by Reserve, not yet used
	cut      map[[2]string]bool      // ordered pair (from, to) -> no traffic
	conns    map[*conn]struct{}
	streams  map[string]*gossipConn // local address of a gossip stream -> the stream (its dialler)
	delay    map[[2]string]time.Duration
}

// NewHub returns a Hub with no cuts.
func NewHub() *Hub {
	return &Hub{owner: map[string]string{}, reserved: map[string]net.Listener{},
		cut: map[[2]string]bool{}, conns: map[*conn]struct{}{}, streams: map[string]*gossipConn{}}
}

// Reserve opens a loopback listener on a free port for member and returns its
// address; the member's Listen on that address gets it.
func (h *Hub) Reserve(member string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	h.mu.Lock()
	h.reserved[addr] = ln
	h.owner[addr] = member
	h.mu.Unlock()
	return addr, nil
}

// Close closes reserved listeners that were never used.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for a, ln := range h.reserved {
		ln.Close()
		delete(h.reserved, a)
	}
}

// Node returns the network of one member.
func (h *Hub) Node(member string) *Net { return &Net{hub: h, member: member} }

// Partition cuts every link between the members of group a and those of
// group b, both ways.
func (h *Hub) Partition(a, b []string) {
	h.mu.Lock()
	for _, x := range a {
		for _, y := range b {
			h.cut[[2]string{x, y}] = true
			h.cut[[2]string{y, x}] = true
		}
	}
	h.mu.Unlock()
	h.closeCut()
}

// Isolate cuts member off from every other member.
func (h *Hub) Isolate(member string, others []string) {
	h.Partition([]string{member}, others)
}

// Cut cuts the links from each member of from to each member of to, one way
// (an asymmetric partition): from's connections to to are refused and the
// ones it dialled are closed, and its gossip packets to them are dropped,
// while to still reaches from, and from answers on the connections to
// dialled.
func (h *Hub) Cut(from, to []string) {
	h.mu.Lock()
	for _, x := range from {
		for _, y := range to {
			h.cut[[2]string{x, y}] = true
		}
	}
	h.mu.Unlock()
	h.closeCut()
}

// HealMember removes every cut to or from member.
func (h *Hub) HealMember(member string) {
	h.mu.Lock()
	for pair := range h.cut {
		if pair[0] == member || pair[1] == member {
			delete(h.cut, pair)
		}
	}
	h.mu.Unlock()
}

// HealAll removes every cut.
func (h *Hub) HealAll() {
	h.mu.Lock()
	h.cut = map[[2]string]bool{}
	h.mu.Unlock()
}

func (h *Hub) isCut(from, to string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cut[[2]string{from, to}]
}

func (h *Hub) closeCut() {
	h.mu.Lock()
	var victims []*conn
	for c := range h.conns {
		if h.cut[[2]string{c.from, c.to}] {
			victims = append(victims, c)
		}
	}
	h.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

// Net is one member's view of the network; it implements server.Network.
type Net struct {
	hub    *Hub
	member string
}

// Listen returns the reserved listener for addr, or listens afresh (a
// restarted member listening again on its old address).
func (n *Net) Listen(addr string) (net.Listener, error) {
	h := n.hub
	h.mu.Lock()
	ln, ok := h.reserved[addr]
	delete(h.reserved, addr)
	h.mu.Unlock()
	if ok {
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.owner[ln.Addr().String()] = n.member
	h.mu.Unlock()
	return ln, nil
}

// Dial connects to addr unless the link from this member to its owner is cut.
func (n *Net) Dial(ctx context.Context, addr string) (net.Conn, error) {
	h := n.hub
	h.mu.Lock()
	to := h.owner[addr]
	h.mu.Unlock()
	if h.isCut(n.member, to) {
		return nil, fmt.Errorf("%w: %s -> %s", ErrPartitioned, n.member, to)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if d := h.delayOf(n.member, to); d > 0 {
		c = wan.Delay(c, d)
	}
	fc := &conn{Conn: c, hub: h, from: n.member, to: to}
	h.mu.Lock()
	h.conns[fc] = struct{}{}
	h.mu.Unlock()
	if h.isCut(n.member, to) { // cut while dialling
		fc.Close()
		return nil, fmt.Errorf("%w: %s -> %s", ErrPartitioned, n.member, to)
	}
	return fc, nil
}

type conn struct {
	net.Conn
	hub      *Hub
	from, to string
	once     sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.hub.mu.Lock()
		delete(c.hub.conns, c)
		c.hub.mu.Unlock()
	})
	return err
}
