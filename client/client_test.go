package client

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/integration/testkit"
	"github.com/connsync/connsync/internal/redial/redialtest"
)

func TestClient_HeaderAckedSeqIsLowestInFlight(t *testing.T) {
	c, err := New(Config{Addrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	h1, h2, h3 := c.header(), c.header(), c.header()
	if h1.ClientId == 0 || h1.ClientId != h3.ClientId || h1.Seq != 1 || h3.Seq != 3 {
		t.Fatalf("headers %v %v: want one non-zero client ID and seq 1..3", h1, h3)
	}
	if h3.AckedSeq != 1 {
		t.Fatalf("acked_seq %d with seq 1 in flight, want 1", h3.AckedSeq)
	}
	c.done(h1)
	c.done(h3)
	if h4 := c.header(); h4.AckedSeq != h2.Seq {
		t.Fatalf("acked_seq %d, want %d (lowest in flight)", h4.AckedSeq, h2.Seq)
	}
	c.done(h2)
	if h5 := c.header(); h5.AckedSeq != 4 {
		t.Fatalf("acked_seq %d, want 4 (seq 4 still in flight)", h5.AckedSeq)
	}
}

func TestClient_MoveOnFollowsLeaderHint(t *testing.T) {
	c, err := New(Config{Addrs: []string{"a:1", "b:1", "c:1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.moveOn("a:1", metadata.Pairs(mdLeaderAddr, "c:1"))
	if got := c.pick(); got != "c:1" {
		t.Fatalf("after hint, target %s, want c:1", got)
	}
	c.moveOn("c:1", nil)
	if got := c.pick(); got != "a:1" {
		t.Fatalf("without hint, target %s, want the next address a:1", got)
	}
	c.moveOn("b:1", nil) // a stale failure report does not move the target
	if got := c.pick(); got != "a:1" {
		t.Fatalf("target %s after a stale report, want a:1", got)
	}
}

func TestClient_UnreachableFailsBeforeDeadline(t *testing.T) {
	// Two ports nobody listens on: reserve and close them.
	var addrs []string
	for i := 0; i < 2; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	c, err := New(Config{Addrs: addrs, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = c.Status(ctx)
	if status.Code(err) != codes.Unavailable || !connError(err) {
		t.Fatalf("status against closed ports: %v, want a connection error", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("gave up only at the deadline; want an early failure when every address refuses")
	}
}

func TestClient_NewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{}, {Addrs: []string{"no-port"}}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func TestKey(t *testing.T) {
	k, err := Key("vrf1", "udp", "[2001:db8::1]:53", "[2001:db8::2]:5353")
	if err != nil || k.Protocol != 17 || k.SrcIp != "2001:db8::1" || k.DstPort != 5353 || k.Zone != "vrf1" {
		t.Fatalf("Key = %v, %v", k, err)
	}
	if k, err := Key("", "gre", "10.0.0.1", "10.0.0.2"); err != nil || k.Protocol != 47 || k.SrcPort != 0 {
		t.Fatalf("bare addresses: %v, %v", k, err)
	}
	for _, bad := range [][3]string{{"tcpx", "1.1.1.1:1", "2.2.2.2:2"}, {"tcp", "nohost", "2.2.2.2:2"},
		{"tcp", "1.1.1.1:70000", "2.2.2.2:2"}, {"300", "1.1.1.1:1", "2.2.2.2:2"}} {
		if _, err := Key("", bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("Key(%q) succeeded", bad)
		}
	}
}

// TestConnError: only the client's own failure to connect counts as
// unreachable; a member's answer that it cannot reach the leader does not,
// or a client would give up during every leader failover.
func TestConnError(t *testing.T) {
	local := status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: connection refused"`)
	relayed := status.Error(codes.Unavailable, `server: m1 cannot reach leader at 127.0.0.1:1: connection error: desc = "refused"`)
	if !connError(local) || connError(relayed) || connError(status.Error(codes.Unavailable, "no leader")) {
		t.Fatalf("connError: local %v, relayed %v", connError(local), connError(relayed))
	}
}

// TestClient_AllRefused: giving up early needs every address to have refused
// repeatedly; one member that keeps answering keeps the call going.
func TestClient_AllRefused(t *testing.T) {
	c, err := New(Config{Addrs: []string{"a:1", "b:1", "c:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.allRefused(map[string]int{"a:1": 9, "b:1": 9}) {
		t.Fatal("gave up although c:1 never refused")
	}
	if !c.allRefused(map[string]int{"a:1": 2, "b:1": 2, "c:1": 2}) {
		t.Fatal("did not give up although every address refused twice")
	}
}

// A member that restarted is reached by the next calls, not after the
// connection's reconnect backoff: here a minute long, so only the redial on
// a failed call explains a call that gets through in seconds.
func TestClient_RestartedMemberReachedWithoutWaitingOutTheBackoff(t *testing.T) {
	old := reconnectBackoff
	reconnectBackoff = redialtest.LongBackoff
	t.Cleanup(func() { reconnectBackoff = old })

	peer := redialtest.Start(t, func(s *grpc.Server) { pb.RegisterOperatorServiceServer(s, statusServer{}) })
	c, err := New(Config{Addrs: []string{peer.Addr()}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatalf("first call: %v", err)
	}

	peer.Stop()
	// Every dial is refused now, which the client reports early: the
	// connection is then in its backoff.
	if _, err := c.Status(context.Background()); !connError(err) {
		t.Fatalf("call to the stopped member: %v, want a connection error", err)
	}
	peer.Restart()
	// The first calls may still fail: gRPC reports the last dial's error
	// until the new connection is ready.
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, err := c.Status(context.Background()); err != nil {
			return fmt.Errorf("call to the restarted member (the connection's backoff is a minute): %w", err)
		}
		return nil
	})
}

type statusServer struct {
	pb.UnimplementedOperatorServiceServer
}

func (statusServer) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	return &pb.StatusResponse{MemberId: "m1"}, nil
}
