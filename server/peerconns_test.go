package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/connsync/connsync/integration/testkit"
	"github.com/connsync/connsync/internal/redial/redialtest"
)

// A member that restarted is reached by the next calls, not after the
// connection's reconnect backoff: here a minute long, so only the redial on
// a failed call can explain a call that gets through in seconds.
func TestPeerConns_RestartedPeerReachedWithoutWaitingOutTheBackoff(t *testing.T) {
	peer := redialtest.Start(t, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, health.NewServer()) })
	p := newPeerConns(TCPNetwork{})
	p.backoff = redialtest.LongBackoff
	t.Cleanup(p.close)
	cc, err := p.get(peer.Addr())
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

	if err := check(); err != nil {
		t.Fatalf("first call: %v", err)
	}
	for _, c := range []struct {
		name string
		call func() error
	}{{"unary", check}, {"stream", watch}} {
		// Stop the peer until a call fails on a refused dial: the
		// connection is then in its backoff.
		peer.Stop()
		testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			st := status.Convert(c.call())
			if st.Code() == codes.Unavailable && strings.Contains(st.Message(), "connection refused") {
				return nil
			}
			return fmt.Errorf("%s call to the stopped peer: %v, want a refused dial", c.name, st.Err())
		})
		peer.Restart()
		testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if err := c.call(); err != nil {
				return fmt.Errorf("%s call to the restarted peer (the connection's backoff is a minute): %w", c.name, err)
			}
			return nil
		})
		t.Logf("%s: the restarted peer answers", c.name)
	}
}
