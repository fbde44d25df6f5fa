package server

import (
	"context"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// Network creates the listeners and outgoing connections of a member: Raft
// traffic and member-to-member gRPC (forwarding). The default is plain TCP;
// tests substitute a fault-injecting wrapper of it.
type Network interface {
	Listen(addr string) (net.Listener, error)
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// TCPNetwork is the real network.
type TCPNetwork struct{}

// Listen listens on a TCP address.
func (TCPNetwork) Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Dial connects to a TCP address.
func (TCPNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// streamLayer adapts a Network to raft.StreamLayer.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	network   Network
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.network.Dial(ctx, string(addr))
}
