package server

import (
	"context"
	"fmt"

	"github.com/hashicorp/raft"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

// confirmLeadership reports whether this member still led the site at some
// moment after the call began: it asks every other voter of the latest Raft
// configuration for its current term (MemberService.RaftTerm) and succeeds
// once a majority of the voters, itself included, answer with its own term.
// A newer leader needs a majority of the voters in a newer term, and terms
// never go back, so no newer leader had been elected when the call began.
//
// Why not Raft's VerifyLeader (hashicorp/raft v1.7.3), which lease grants
// and linearizable reads used before:
//   - it counts the heartbeat answers of nonvoters towards the voters'
//     quorum, so a leader cut off in a minority together with a nonvoter
//     confirmed its leadership (chaos seed 7176: it went on granting
//     leases for 100 ms after the partition, while the majority elected a
//     new leader);
//   - it counts any answer that arrives after it is asked, also one to a
//     heartbeat sent before the call: after a pause of the process (SIGSTOP)
//     answers sent before the pause confirmed a leader that had been deposed
//     meanwhile (namespaces seed 104).
//
// Here every question is sent after the call begins and only voters count.
// This rests on Raft changing its configuration one server at a time (any
// majority of the latest configuration meets any majority a rival could be
// elected by), and on the monotonic clock advancing during a pause (a VM
// freeze that stops the guest's clock is not covered, as it was not
// before).
// Unlike a barrier entry, the check does not wait for the disk or the state
// machine, so a slow fsync on the leader does not stop lease grants.
func (s *Server) confirmLeadership(ctx context.Context) error {
	term := s.raft.CurrentTerm()
	if s.raft.State() != raft.Leader {
		return raft.ErrNotLeader
	}
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	have, voters := 0, 0
	var others []string
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		voters++
		if string(srv.ID) == s.cfg.MemberID {
			have++
			continue
		}
		others = append(others, string(srv.ID))
	}
	need := voters/2 + 1
	answers := make(chan bool, len(others)) // buffered: late answers are not waited for
	for _, id := range others {
		go func() { answers <- s.voterInTerm(ctx, id, term) }()
	}
	for left := len(others); have < need; left-- {
		if have+left < need {
			return fmt.Errorf("%w: %d of %d voters confirmed term %d", raft.ErrLeadershipLost, have, voters, term)
		}
		if <-answers {
			have++
		}
	}
	if s.raft.CurrentTerm() != term || s.raft.State() != raft.Leader {
		return raft.ErrLeadershipLost
	}
	return nil
}

// voterInTerm asks voter id for its Raft term and reports whether it is term.
func (s *Server) voterInTerm(ctx context.Context, id string, term uint64) bool {
	m, ok := s.fsm.Member(id)
	if !ok || m.GRPCAddr == "" {
		return false
	}
	cc, err := s.peers.get(m.GRPCAddr)
	if err != nil {
		return false
	}
	r, err := pb.NewMemberServiceClient(cc).RaftTerm(ctx, &pb.RaftTermRequest{})
	return err == nil && r.MemberId == id && r.Term == term
}

// RaftTerm answers this member's current Raft term.
func (m *memberService) RaftTerm(context.Context, *pb.RaftTermRequest) (*pb.RaftTermResponse, error) {
	return &pb.RaftTermResponse{MemberId: m.s.cfg.MemberID, Term: m.s.raft.CurrentTerm()}, nil
}
