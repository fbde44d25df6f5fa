// Package redialtest runs a gRPC server that a test stops and starts again
// on the same address, to check that connections to it follow package
// redial's policy.
package redialtest

import (
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// LongBackoff is a reconnect backoff of a minute: with it, only the redial
// after a failed call explains a connection that reaches a restarted peer in
// seconds.
var LongBackoff = backoff.Config{BaseDelay: time.Minute, Multiplier: 1, MaxDelay: time.Minute}

// Peer is a gRPC server on a loopback address that outlives its restarts.
type Peer struct {
	tb       testing.TB
	addr     string
	register func(*grpc.Server)
	srv      *grpc.Server
}

// Start serves on a free loopback port with the services register adds; the
// server is stopped when the test ends.
func Start(tb testing.TB, register func(*grpc.Server)) *Peer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Peer{tb: tb, addr: ln.Addr().String(), register: register}
	p.serve(ln)
	tb.Cleanup(func() { p.srv.Stop() })
	return p
}

// Addr is the peer's address, the same across restarts.
func (p *Peer) Addr() string { return p.addr }

// Stop stops the server; dials to Addr are refused until Restart.
func (p *Peer) Stop() { p.srv.Stop() }

// Restart serves again on Addr.
func (p *Peer) Restart() {
	p.tb.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.tb.Fatal(err)
	}
	p.serve(ln)
}

func (p *Peer) serve(ln net.Listener) {
	p.srv = grpc.NewServer()
	p.register(p.srv)
	srv := p.srv
	go func() { _ = srv.Serve(ln) }()
}
