package server

import (
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/internal/redial"
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
// member's Network so fault injection covers forwarding too, with the
// reconnect policy of package redial: a member that restarted is reached by
// the next call, not after gRPC's reconnect backoff.
type peerConns struct {
	network Network
	backoff backoff.Config // redial.Backoff; tests make it long
	mu      sync.Mutex
	conns   map[string]*grpc.ClientConn
}

func newPeerConns(n Network) *peerConns {
	return &peerConns{network: n, backoff: redial.Backoff, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerConns) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return p.network.Dial(ctx, a)
		}),
	}, redial.DialOptions(p.backoff)...)
	c, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
}
