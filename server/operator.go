package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/placement"
)

type operatorService struct {
	pb.UnimplementedOperatorServiceServer
	s *Server
}

func (o *operatorService) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	s := o.s
	st := s.fsm.Stats()
	active, _ := s.lease.activeBuckets()
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
		Incarnation: s.incarnation, LeaseValid: s.lease.valid(), ActiveBuckets: uint32(len(active)),
		GossipAddr: s.cfg.gossipAdvertise(), Standby: st.Standby, SiteEpoch: st.SiteEpoch, LeaseEpoch: st.LeaseEpoch,
	}, nil
}

func (o *operatorService) ListMembers(ctx context.Context, req *pb.ListMembersRequest) (*pb.ListMembersResponse, error) {
	if err := o.s.read(ctx, req.Consistency); err != nil {
		return nil, err
	}
	s := o.s
	ms := s.fsm.Members()
	as, _ := s.fsm.Buckets()
	primaries, backups := map[string]uint32{}, map[string]uint32{}
	for _, a := range as {
		primaries[a.Primary]++
		backups[a.LocalBackup]++
	}
	suffrage := map[string]string{}
	if cf := s.raft.GetConfiguration(); cf.Error() == nil {
		for _, srv := range cf.Configuration().Servers {
			suffrage[string(srv.ID)] = srv.Suffrage.String()
		}
	}
	leader := s.leaderID()
	out := &pb.ListMembersResponse{Members: make([]*pb.Member, len(ms)), Details: make([]*pb.MemberDetail, len(ms))}
	for i, m := range ms {
		out.Members[i] = m.Proto()
		age := int64(-1)
		if d := s.live.heartbeatAge(m.ID); d >= 0 {
			age = d.Milliseconds()
		}
		out.Details[i] = &pb.MemberDetail{MemberId: m.ID, PrimaryBuckets: primaries[m.ID], BackupBuckets: backups[m.ID],
			RaftSuffrage: suffrage[m.ID], Leader: m.ID == leader, GossipState: s.gossipState(m.ID), HeartbeatAgeMs: age}
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
	if req.GossipAddr != "" {
		if err := checkHostPort("gossip_addr", req.GossipAddr); err != nil {
			return nil, err
		}
	}
	servers, err := s.raftServers(ctx)
	if err != nil {
		return nil, err
	}
	// Check everything before changing anything: a rejected join must leave
	// the configuration as it was. A removed member does not come back on
	// its own (its process may simply not have been stopped yet).
	old, known := s.fsm.Member(req.MemberId)
	if known && old.State == pb.MemberState_MEMBER_STATE_LEFT && old.Incarnation != 0 && old.Incarnation == req.Incarnation {
		return nil, status.Errorf(codes.FailedPrecondition,
			"member_id: %s was removed from the site; restart its connsyncd to join again", req.MemberId)
	}

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
	// A new member votes while the site has fewer voters than it should;
	// otherwise it joins as a non-voter and the reconcile loop promotes it
	// when a voter fails. AddVoter and AddNonvoter update the address of an
	// existing server in place; a voter is never demoted here.
	voters := 0
	for _, srv := range servers {
		if srv.Suffrage == raft.Voter {
			voters++
		}
	}
	vote := !req.Nonvoter && (voters < s.cfg.Voters || (existing != nil && existing.Suffrage == raft.Voter))
	if existing == nil || existing.Address != addr || (vote && existing.Suffrage != raft.Voter) {
		var f raft.IndexFuture
		if vote {
			f = s.raft.AddVoter(id, addr, 0, s.cfg.ApplyTimeout)
		} else {
			f = s.raft.AddNonvoter(id, addr, 0, s.cfg.ApplyTimeout)
		}
		if err := f.Error(); err != nil {
			return nil, err
		}
	}
	// The same member ID from a new process (a restart that lost its data
	// directory): what the old process held fails over first.
	if known && active(old.State) && old.Incarnation != 0 && req.Incarnation != 0 && old.Incarnation != req.Incarnation {
		if err := s.failMember(ctx, req.MemberId, "joined again as a new process"); err != nil {
			return nil, err
		}
	}
	inc := req.Incarnation
	if inc == 0 && known { // an operator's join (no process behind it) keeps the recorded one
		inc = old.Incarnation
	}
	m := &pb.Member{Id: req.MemberId, Site: req.Site, RaftAddr: req.RaftAddr, GrpcAddr: req.GrpcAddr, Weight: req.Weight,
		GossipAddr: req.GossipAddr, Nonvoter: req.Nonvoter, Incarnation: inc}
	if _, err := s.write1(ctx, nil, registerMemberOp(m)); err != nil {
		return nil, err
	}
	s.live.joined(req.MemberId)
	rec, _ := s.fsm.Member(req.MemberId)
	s.logger.Info("member joined", "id", req.MemberId, "raft_addr", req.RaftAddr, "voter", vote || (existing != nil && existing.Suffrage == raft.Voter))
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
	if inFSM && active(m.State) {
		if p, b := s.roles(req.MemberId); p+b > 0 {
			return nil, status.Errorf(codes.FailedPrecondition,
				"member_id: %s still holds %d primary and %d backup buckets; drain it first (connsyncctl drain %s)",
				req.MemberId, p, b, req.MemberId)
		}
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

// roles counts the buckets a member is primary and local backup of.
func (s *Server) roles(id string) (primaries, backups int) {
	as, _ := s.fsm.Buckets()
	for _, a := range as {
		if a.Primary == id {
			primaries++
		}
		if a.LocalBackup == id {
			backups++
		}
	}
	return primaries, backups
}

func (o *operatorService) Rebalance(ctx context.Context, req *pb.RebalanceRequest) (*pb.RebalanceResponse, error) {
	s := o.s
	if _, err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	cur, _ := s.fsm.Buckets()
	pcur := toPlacement(cur)
	el := s.eligible(s.goneMembers())
	if len(el) == 0 {
		return nil, status.Error(codes.FailedPrecondition, "no alive member can take buckets")
	}
	limit := s.cfg.MaxMoves
	if req.DryRun {
		limit = 0 // the whole plan
	}
	changes := placement.Rebalance(pcur, el, limit)
	settled := placement.Apply(pcur, changes)
	for i := range settled {
		settled[i].IncomingSynced = settled[i].Incoming != ""
	}
	settled = placement.Apply(settled, placement.Flip(settled, el))
	out := &pb.RebalanceResponse{ImbalanceBefore: placement.Imbalance(pcur, el), ImbalanceAfter: placement.Imbalance(settled, el)}
	for _, b := range pcur {
		if b.Incoming != "" {
			out.MovesInProgress++
		}
	}
	for _, c := range changes {
		to := c.To.Incoming
		if c.To.Primary != pcur[c.Bucket].Primary { // a swap with the synced backup, done at once
			to = c.To.Primary
		}
		out.Moves = append(out.Moves, &pb.BucketMove{Bucket: c.Bucket, FromMember: pcur[c.Bucket].Primary, ToMember: to})
	}
	if req.DryRun || len(changes) == 0 {
		return out, nil
	}
	err := s.reassign(ctx, "rebalance (operator)", nil, changes, cur)
	if errors.Is(err, fsm.ErrAssignmentChanged) {
		return nil, status.Errorf(codes.Aborted, "the bucket map changed while the plan was made (moves under way complete on their own); run rebalance again: %v", err)
	}
	if err != nil {
		return nil, err
	}
	s.logger.Info("rebalance started", "moves", len(changes))
	return out, nil
}

func (o *operatorService) Drain(ctx context.Context, req *pb.DrainRequest) (*pb.DrainResponse, error) {
	s := o.s
	if err := checkMemberID("member_id", req.MemberId); err != nil {
		return nil, err
	}
	if _, err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	m, ok := s.fsm.Member(req.MemberId)
	switch {
	case !ok:
		return nil, invalid("member_id", "unknown member %q (connsyncctl members lists them)", req.MemberId)
	case m.State == pb.MemberState_MEMBER_STATE_DRAINING:
		return &pb.DrainResponse{Member: m.Proto()}, nil
	case m.State != pb.MemberState_MEMBER_STATE_ALIVE:
		return nil, status.Errorf(codes.FailedPrecondition, "member_id: %s is %s, nothing to drain", req.MemberId, m.State)
	}
	if others := s.eligible(map[string]bool{req.MemberId: true}); len(others) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "member_id: %s is the only alive member; nobody could take its buckets", req.MemberId)
	}
	ms := []*ipb.SetMemberStateOp{{MemberId: req.MemberId, State: pb.MemberState_MEMBER_STATE_DRAINING}}
	if err := s.reassign(ctx, "drain "+req.MemberId, ms, nil, nil); err != nil {
		return nil, err
	}
	s.live.wake()
	m, _ = s.fsm.Member(req.MemberId)
	s.logger.Info("draining member", "id", req.MemberId)
	return &pb.DrainResponse{Member: m.Proto()}, nil
}
