package server

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

const (
	// mdForwardedBy marks a request forwarded by a follower, so a member that
	// is not the leader either answers UNAVAILABLE instead of forwarding again.
	mdForwardedBy = "connsync-forwarded-by"
	// MDLeaderAddr is set in the response header of an UNAVAILABLE answer when
	// the leader's gRPC address is known; clients switch to it.
	MDLeaderAddr = "connsync-leader-addr"
)

// leaderMethods need the leader: writes, and operator calls that act on the
// Raft configuration. Reads join them when they ask for linearizability.
var leaderMethods = map[string]bool{
	pb.OwnershipService_Claim_FullMethodName:             true,
	pb.OwnershipService_ClaimBatch_FullMethodName:        true,
	pb.OwnershipService_Release_FullMethodName:           true,
	pb.OwnershipService_ReleaseBatch_FullMethodName:      true,
	pb.LockService_AcquireLock_FullMethodName:            true,
	pb.LockService_RenewLock_FullMethodName:              true,
	pb.LockService_ReleaseLock_FullMethodName:            true,
	pb.LockService_AcquireLockBatch_FullMethodName:       true,
	pb.LockService_ReleaseLockBatch_FullMethodName:       true,
	pb.OperatorService_Join_FullMethodName:               true,
	pb.OperatorService_RemoveMember_FullMethodName:       true,
	pb.OperatorService_TransferLeadership_FullMethodName: true,
	pb.OperatorService_Rebalance_FullMethodName:          true,
	pb.OperatorService_Drain_FullMethodName:              true,
	pb.OperatorService_SiteFailover_FullMethodName:       true,
	pb.OperatorService_SiteHandover_FullMethodName:       true,
	pb.SiteLeaseService_GrantSiteLease_FullMethodName:    true,
	pb.MemberService_ReportSynced_FullMethodName:         true,
}

// selfDefaultServices are the services whose member_id "" means "the member
// that received the request" (the firewall talks to its own connsyncd).
var selfDefaultServices = map[protoreflect.FullName]bool{
	"connsync.v1.OwnershipService": true,
	"connsync.v1.LockService":      true,
}

func needsLeader(method string, req any) bool {
	if leaderMethods[method] {
		return true
	}
	if r, ok := req.(interface{ GetConsistency() pb.ReadConsistency }); ok {
		return r.GetConsistency() == pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE
	}
	return false
}

// forwardInterceptor fills default member IDs and sends requests that need
// the leader to it when this member is not the leader.
func (s *Server) forwardInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	msg, isProto := req.(proto.Message)
	if isProto {
		s.fillDefaultMember(info.FullMethod, msg)
	}
	if !isProto || !needsLeader(info.FullMethod, req) || s.raft.State() == raft.Leader {
		resp, err := handler(ctx, req)
		return resp, s.withLeaderHint(ctx, toStatus(err))
	}
	leaderAddr, err := s.leaderGRPCAddr()
	if err != nil || len(md.Get(mdForwardedBy)) > 0 {
		if err == nil {
			err = fmt.Errorf("%w: forwarded by %v but this member is not the leader", raft.ErrNotLeader, md.Get(mdForwardedBy))
		}
		return nil, s.withLeaderHint(ctx, toStatus(err))
	}
	conn, err := s.peers.get(leaderAddr)
	if err != nil {
		return nil, toStatus(err)
	}
	out, err := newResponse(info.FullMethod)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	fctx := metadata.AppendToOutgoingContext(ctx, mdForwardedBy, s.cfg.MemberID)
	var hdr metadata.MD
	if err := conn.Invoke(fctx, info.FullMethod, msg, out, grpc.Header(&hdr)); err != nil {
		st, _ := status.FromError(err)
		switch {
		case st.Code() == codes.Unavailable && strings.HasPrefix(st.Message(), "connection error"):
			// Say it in this member's words: the client reached us, we could
			// not reach the leader (it may have just died; an election follows).
			// No leader hint: the hint would name the member we failed to reach.
			return nil, status.Errorf(codes.Unavailable, "server: %s cannot reach leader at %s: %s",
				s.cfg.MemberID, leaderAddr, st.Message())
		case len(hdr.Get(MDLeaderAddr)) > 0:
			// The leader's own answer (it lost leadership, say): pass on its hint.
			_ = grpc.SetHeader(ctx, metadata.Pairs(MDLeaderAddr, hdr.Get(MDLeaderAddr)[0]))
		}
		return nil, err
	}
	return out, nil
}

// withLeaderHint adds the leader's address to an UNAVAILABLE answer.
func (s *Server) withLeaderHint(ctx context.Context, err error) error {
	if status.Code(err) != codes.Unavailable {
		return err
	}
	// Never hint this member itself: the client is already talking to it,
	// and a member that is shutting down may still believe it leads.
	if addr, lerr := s.leaderGRPCAddr(); lerr == nil && addr != s.cfg.grpcAdvertise() {
		_ = grpc.SetHeader(ctx, metadata.Pairs(MDLeaderAddr, addr))
	}
	return err
}

// leaderGRPCAddr returns the leader's gRPC address from the member table.
func (s *Server) leaderGRPCAddr() (string, error) {
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return "", ErrNoLeader
	}
	if string(id) == s.cfg.MemberID {
		return s.cfg.grpcAdvertise(), nil
	}
	m, ok := s.fsm.Member(string(id))
	if !ok || m.GRPCAddr == "" {
		return "", fmt.Errorf("%w: leader %s has no recorded gRPC address yet", ErrNoLeader, id)
	}
	return m.GRPCAddr, nil
}

func (s *Server) fillDefaultMember(method string, msg proto.Message) {
	m := msg.ProtoReflect()
	svc := serviceOf(method)
	if !selfDefaultServices[svc] {
		return
	}
	fd := m.Descriptor().Fields().ByName("member_id")
	if fd == nil || fd.Kind() != protoreflect.StringKind || m.Get(fd).String() != "" {
		return
	}
	m.Set(fd, protoreflect.ValueOfString(s.cfg.MemberID))
}

// serviceOf returns the service of "/pkg.Service/Method".
func serviceOf(method string) protoreflect.FullName {
	for i := len(method) - 1; i > 0; i-- {
		if method[i] == '/' {
			return protoreflect.FullName(method[1:i])
		}
	}
	return ""
}

// newResponse returns an empty response message for a method.
func newResponse(method string) (proto.Message, error) {
	svc := serviceOf(method)
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(svc)
	if err != nil {
		return nil, err
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(method[len(svc)+2:]))
	if md == nil {
		return nil, fmt.Errorf("no method %s", method)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, err
	}
	return mt.New().Interface(), nil
}
