// Package redial gives connsync's gRPC client connections a reconnect
// policy for peers that restart.
//
// A gRPC connection whose peer went away waits out a reconnect backoff before
// it dials again, and a call meanwhile fails at once as UNAVAILABLE. gRPC's
// default backoff starts at 1 s and grows to 2 minutes while the peer stays
// down: a member, or a firewall's connsyncd, that comes back was then
// unreachable over an existing connection for up to that long (a failover's
// handoff gate waited for one; docs/BENCHMARKS.md). With DialOptions the
// backoff is short (Backoff), and a call that fails as UNAVAILABLE ends its
// connection's backoff, so the next call dials again. Callers pace their own
// retries.
package redial

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Backoff is the reconnect backoff of connections to members: 20 ms, growing
// to 1 s.
var Backoff = backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

// DialOptions returns the dial options of the policy with reconnect backoff b.
func DialOptions(b backoff.Config) []grpc.DialOption {
	return []grpc.DialOption{
		// MinConnectTimeout is gRPC's default; giving ConnectParams without it would make it 0.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: b, MinConnectTimeout: 20 * time.Second}),
		grpc.WithChainUnaryInterceptor(unary),
		grpc.WithChainStreamInterceptor(stream),
	}
}

// unary and stream end the reconnect backoff of a connection a call failed
// on as UNAVAILABLE. On a connection that is not backing off this only resets
// its backoff to the start.
func unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if status.Code(err) == codes.Unavailable {
		cc.ResetConnectBackoff()
	}
	return err
}

func stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	st, err := streamer(ctx, desc, cc, method, opts...)
	if status.Code(err) == codes.Unavailable {
		cc.ResetConnectBackoff()
	}
	return st, err
}
