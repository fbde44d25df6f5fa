package server

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// A member that restarted is reached by the next calls, not after the
// connection's reconnect backoff: here a minute long, so only the redial on
// a failed call can explain a call that gets through in seconds.
func TestPeerConns_RestartedPeerReachedWithoutWaitingOutTheBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	serve := func(ln net.Listener) *grpc.Server {
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go func() { _ = srv.Serve(ln) }()
		return srv
	}
	srv := serve(ln)
	t.Cleanup(func() { srv.Stop() })

	p := newPeerConns(TCPNetwork{})
	p.backoff = backoff.Config{BaseDelay: time.Minute, Multiplier: 1, MaxDelay: time.Minute}
	t.Cleanup(p.close)
	cc, err := p.get(addr)
	if err != nil {
		t.Fatal(err)
	}
	hc := healthpb.NewHealthClient(cc)
	check := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	watch := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		_, err = st.Recv()
		return err
	}
	// restart stops the peer, waits until a call to it fails on a refused
	// dial (the connection is then in its backoff), and starts it again on
	// the same address.
	restart := func(call func() error) {
		t.Helper()
		srv.Stop()
		waitUntil(t, 5*time.Second, "a call failing on a refused dial", func() bool {
			st := status.Convert(call())
			return st.Code() == codes.Unavailable && strings.Contains(st.Message(), "connection refused")
		})
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv = serve(ln)
	}

	if err := check(); err != nil {
		t.Fatalf("first call: %v", err)
	}
	for _, c := range []struct {
		name string
		call func() error
	}{{"unary", check}, {"stream", watch}} {
		restart(c.call)
		waitUntil(t, 5*time.Second, c.name+" call answered by the restarted peer (the connection's backoff is a minute)", func() bool { return c.call() == nil })
		t.Logf("%s: the restarted peer answers", c.name)
	}
}

// waitUntil polls cond every 10 ms until it holds, or fails t after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
