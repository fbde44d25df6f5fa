package server

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

func (s *Server) startGRPC() error {
	ln, err := s.network.Listen(s.cfg.GRPCBind)
	if err != nil {
		return fmt.Errorf("server: grpc listen %s: %w", s.cfg.GRPCBind, err)
	}
	s.grpcLn = ln
	s.grpcServer = grpc.NewServer(grpc.ChainUnaryInterceptor(s.forwardInterceptor))
	pb.RegisterOwnershipServiceServer(s.grpcServer, &ownershipService{s: s})
	pb.RegisterLockServiceServer(s.grpcServer, &lockService{s: s})
	pb.RegisterOperatorServiceServer(s.grpcServer, &operatorService{s: s})
	pb.RegisterAssignmentServiceServer(s.grpcServer, &assignmentService{s: s})
	pb.RegisterMemberServiceServer(s.grpcServer, &memberService{s: s})
	pb.RegisterDataPlaneServiceServer(s.grpcServer, &dataPlaneService{s: s})
	pb.RegisterSiteLeaseServiceServer(s.grpcServer, &siteLeaseService{s: s})
	hs := health.NewServer()
	for _, svc := range []string{"", pb.OwnershipService_ServiceDesc.ServiceName,
		pb.LockService_ServiceDesc.ServiceName, pb.OperatorService_ServiceDesc.ServiceName,
		pb.AssignmentService_ServiceDesc.ServiceName, pb.MemberService_ServiceDesc.ServiceName,
		pb.DataPlaneService_ServiceDesc.ServiceName, pb.SiteLeaseService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(s.grpcServer, hs)
	reflection.Register(s.grpcServer)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.grpcServer.Serve(ln); err != nil {
			s.logger.Error("grpc server stopped", "error", err)
		}
	}()
	s.logger.Info("serving gRPC", "addr", ln.Addr().String())
	return nil
}

// peerConns caches gRPC connections to other members, dialled through the
// member's Network so fault injection covers forwarding too.
//
// A connection whose peer went away waits out a reconnect backoff before it
// dials again, and a call meanwhile fails at once (UNAVAILABLE). gRPC's
// default backoff starts at 1 s and grows to 2 minutes: a member that
// restarted was then unreachable from the others for up to that long (a
// failover's handoff gate waited ~0.1-0.7 s for one, asking it every 5 ms;
// docs/BENCHMARKS.md). So the backoff is peerBackoff, and a call that fails
// with UNAVAILABLE cuts the connection's backoff short: the next call dials
// again. Every caller paces its own retries.
type peerConns struct {
	network Network
	backoff backoff.Config
	mu      sync.Mutex
	conns   map[string]*grpc.ClientConn
}

// peerBackoff is the reconnect backoff of connections to other members.
var peerBackoff = backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

func newPeerConns(n Network) *peerConns {
	return &peerConns{network: n, backoff: peerBackoff, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerConns) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return p.network.Dial(ctx, a)
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: p.backoff, MinConnectTimeout: 20 * time.Second}),
		grpc.WithChainUnaryInterceptor(redialUnary),
		grpc.WithChainStreamInterceptor(redialStream))
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return c, nil
}

// redialUnary and redialStream end the reconnect backoff of a connection a
// call failed on as UNAVAILABLE (see peerConns).
func redialUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if status.Code(err) == codes.Unavailable {
		cc.ResetConnectBackoff()
	}
	return err
}

func redialStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	st, err := streamer(ctx, desc, cc, method, opts...)
	if status.Code(err) == codes.Unavailable {
		cc.ResetConnectBackoff()
	}
	return st, err
}

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
}
