package server

import (
	"context"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

type operatorService struct {
	pb.UnimplementedOperatorServiceServer
	s *Server
}

func (o *operatorService) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	s := o.s
	st := s.fsm.Stats()
	rs := s.raft.Stats()
	_, leaderID := s.raft.LeaderWithID()
	leaderAddr, _ := s.leaderGRPCAddr()
	term, _ := strconv.ParseUint(rs["term"], 10, 64)
	var lastContact int64
	if s.raft.State() != raft.Leader {
		if lc := s.raft.LastContact(); !lc.IsZero() {
			lastContact = time.Since(lc).Milliseconds()
		}
	}
	return &pb.StatusResponse{
		MemberId: s.cfg.MemberID, Site: s.cfg.Site, RaftState: s.raft.State().String(),
		LeaderId: string(leaderID), LeaderGrpcAddr: leaderAddr, Term: term,
		CommitIndex: s.raft.CommitIndex(), AppliedIndex: st.Applied, LastContactMs: lastContact,
		MemberCount: uint32(st.Members), BucketCount: st.BucketCount,
		ClaimCount: uint64(st.Claims), LockCount: uint64(st.Locks), Version: Version,
	}, nil
}

func (o *operatorService) ListMembers(ctx context.Context, req *pb.ListMembersRequest) (*pb.ListMembersResponse, error) {
	if err := o.s.read(ctx, req.Consistency); err != nil {
		return nil, err
	}
	ms := o.s.fsm.Members()
	out := &pb.ListMembersResponse{Members: make([]*pb.Member, len(ms))}
	for i, m := range ms {
		out.Members[i] = m.Proto()
	}
	return out, nil
}

// checkHostPort validates an address field other members will dial.
func checkHostPort(field, addr string) error {
	if err := checkDialable(addr); err != nil {
		return invalid(field, "%q: %v", addr, err)
	}
	return nil
}

// raftServers returns the Raft configuration once this member is a ready
// leader: the view that configuration changes must start from.
func (s *Server) raftServers(ctx context.Context) ([]raft.Server, error) {
	if _, err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	return cf.Configuration().Servers, nil
}

func (o *operatorService) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	s := o.s
	if err := checkMemberID("member_id", req.MemberId); err != nil {
		return nil, err
	}
	if req.Site != s.cfg.Site {
		return nil, invalid("site", "%q is not this site (%q)", req.Site, s.cfg.Site)
	}
	if err := checkHostPort("raft_addr", req.RaftAddr); err != nil {
		return nil, err
	}
	if err := checkHostPort("grpc_addr", req.GrpcAddr); err != nil {
		return nil, err
	}
	servers, err := s.raftServers(ctx)
	if err != nil {
		return nil, err
	}
	// Check everything before changing anything: a rejected join must leave
	// the configuration as it was.
	id, addr := raft.ServerID(req.MemberId), raft.ServerAddress(req.RaftAddr)
	var existing *raft.Server
	for i := range servers {
		switch {
		case servers[i].ID == id:
			existing = &servers[i]
		case servers[i].Address == addr:
			return nil, status.Errorf(codes.FailedPrecondition, "raft_addr: %s is already used by member %s", addr, servers[i].ID)
		}
	}
	if existing != nil && existing.Address != addr && req.MemberId == s.cfg.MemberID {
		return nil, status.Errorf(codes.FailedPrecondition,
			"member_id: %s is the leader; transfer leadership before changing its raft_addr", req.MemberId)
	}
	// AddVoter and AddNonvoter update the address of an existing member in
	// place (and AddVoter promotes a non-voter); a voter is never demoted here.
	promote := existing != nil && existing.Suffrage != raft.Voter && !req.Nonvoter
	if existing == nil || existing.Address != addr || promote {
		var f raft.IndexFuture
		if req.Nonvoter {
			f = s.raft.AddNonvoter(id, addr, 0, s.cfg.ApplyTimeout)
		} else {
			f = s.raft.AddVoter(id, addr, 0, s.cfg.ApplyTimeout)
		}
		if err := f.Error(); err != nil {
			return nil, err
		}
	}
	m := &pb.Member{Id: req.MemberId, Site: req.Site, RaftAddr: req.RaftAddr, GrpcAddr: req.GrpcAddr, Weight: req.Weight}
	if _, err := s.write1(ctx, nil, registerMemberOp(m)); err != nil {
		return nil, err
	}
	rec, _ := s.fsm.Member(req.MemberId)
	s.logger.Info("member joined", "id", req.MemberId, "raft_addr", req.RaftAddr, "voter", !req.Nonvoter)
	return &pb.JoinResponse{Member: rec.Proto()}, nil
}

func (o *operatorService) RemoveMember(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	s := o.s
	if err := checkMemberID("member_id", req.MemberId); err != nil {
		return nil, err
	}
	servers, err := s.raftServers(ctx)
	if err != nil {
		return nil, err
	}
	if req.MemberId == s.cfg.MemberID {
		return nil, status.Errorf(codes.FailedPrecondition,
			"member_id: %s is the leader; transfer leadership first (connsyncctl transfer-leader)", req.MemberId)
	}
	inRaft := false
	for _, srv := range servers {
		inRaft = inRaft || srv.ID == raft.ServerID(req.MemberId)
	}
	m, inFSM := s.fsm.Member(req.MemberId)
	if !inRaft && !inFSM {
		return nil, invalid("member_id", "unknown member %q", req.MemberId)
	}
	// Leave the Raft configuration first, then record the member as left: if
	// the second step fails, a retry finds it out of Raft and completes it.
	// (The leader is a voter and is not the one removed, so a voter remains.)
	if inRaft {
		if err := s.raft.RemoveServer(raft.ServerID(req.MemberId), 0, s.cfg.ApplyTimeout).Error(); err != nil {
			return nil, err
		}
	}
	if inFSM && m.State != pb.MemberState_MEMBER_STATE_LEFT {
		if _, err := s.write1(ctx, nil, setMemberStateOp(req.MemberId, pb.MemberState_MEMBER_STATE_LEFT)); err != nil {
			return nil, err
		}
	}
	s.logger.Info("member removed", "id", req.MemberId)
	return &pb.RemoveMemberResponse{}, nil
}

func (o *operatorService) ListRaftPeers(ctx context.Context, _ *pb.ListRaftPeersRequest) (*pb.ListRaftPeersResponse, error) {
	cf := o.s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	_, leader := o.s.raft.LeaderWithID()
	out := &pb.ListRaftPeersResponse{}
	for _, srv := range cf.Configuration().Servers {
		out.Peers = append(out.Peers, &pb.RaftPeer{Id: string(srv.ID), Address: string(srv.Address),
			Suffrage: srv.Suffrage.String(), Leader: srv.ID == leader})
	}
	return out, nil
}

func (o *operatorService) TransferLeadership(ctx context.Context, req *pb.TransferLeadershipRequest) (*pb.TransferLeadershipResponse, error) {
	s := o.s
	if req.MemberId != "" {
		if err := checkMemberID("member_id", req.MemberId); err != nil {
			return nil, err
		}
	}
	servers, err := s.raftServers(ctx)
	if err != nil {
		return nil, err
	}
	var target *raft.Server
	voters := 0
	for i := range servers {
		if servers[i].Suffrage == raft.Voter {
			voters++
		}
		if servers[i].ID == raft.ServerID(req.MemberId) {
			target = &servers[i]
		}
	}
	var f raft.Future
	switch {
	case req.MemberId == s.cfg.MemberID:
		return &pb.TransferLeadershipResponse{LeaderId: s.cfg.MemberID}, nil
	case req.MemberId == "" && voters < 2:
		return nil, status.Error(codes.FailedPrecondition, "member_id: no other voter to transfer leadership to")
	case req.MemberId == "":
		f = s.raft.LeadershipTransfer()
	case target == nil:
		return nil, invalid("member_id", "%q is not in the raft configuration", req.MemberId)
	case target.Suffrage != raft.Voter:
		return nil, invalid("member_id", "%q is a %s, only voters can lead", req.MemberId, target.Suffrage)
	default:
		f = s.raft.LeadershipTransferToServer(target.ID, target.Address)
	}
	if err := f.Error(); err != nil {
		// Timeouts and a target that fell behind: try again later.
		return nil, status.Errorf(codes.Unavailable, "leadership transfer: %v", err)
	}
	_, id := s.raft.LeaderWithID()
	return &pb.TransferLeadershipResponse{LeaderId: string(id)}, nil
}
