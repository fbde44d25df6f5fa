package server

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

func initSiteOp(site string, buckets uint32, standby bool) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_InitSite{InitSite: &ipb.InitSiteOp{Site: site, BucketCount: buckets, Standby: standby}}}
}

func setSiteModeOp(standby bool, reason string, leaseEpoch uint64) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_SetSiteMode{SetSiteMode: &ipb.SetSiteModeOp{Standby: standby, Reason: reason, LeaseEpoch: leaseEpoch}}}
}

// recordLeaseEpochOp records a site-lease epoch an active site holds
// (refused, changing nothing, once the site is standby).
func recordLeaseEpochOp(epoch uint64) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_SetSiteMode{SetSiteMode: &ipb.SetSiteModeOp{Reason: "site lease held", LeaseEpoch: epoch, RecordOnly: true}}}
}

func registerMemberOp(m *pb.Member) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_RegisterMember{RegisterMember: &ipb.RegisterMemberOp{Member: m}}}
}

func setMemberStateOp(id string, st pb.MemberState) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_SetMemberState{SetMemberState: &ipb.SetMemberStateOp{MemberId: id, State: st}}}
}

func claimOp(k fsm.Key, member string) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_Claim{Claim: &ipb.ClaimOp{Key: []byte(k), MemberId: member}}}
}

func claimBatchOp(keys []fsm.Key, member string) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_ClaimBatch{ClaimBatch: &ipb.ClaimBatchOp{MemberId: member, Keys: keyBytes(keys)}}}
}

func releaseBatchOp(keys []fsm.Key, member string) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_ReleaseBatch{ReleaseBatch: &ipb.ReleaseBatchOp{MemberId: member, Keys: keyBytes(keys)}}}
}

func keyBytes(keys []fsm.Key) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = []byte(k)
	}
	return out
}

func releaseOp(k fsm.Key, member string, epoch uint64) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_Release{Release: &ipb.ReleaseOp{Key: []byte(k), MemberId: member, Epoch: epoch}}}
}

func acquireLockOp(k fsm.Key, member string, ttl time.Duration) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_AcquireLock{AcquireLock: &ipb.AcquireLockOp{Key: []byte(k), MemberId: member, TtlNanos: int64(ttl)}}}
}

func renewLockOp(k fsm.Key, member string, token uint64, ttl time.Duration) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_RenewLock{RenewLock: &ipb.RenewLockOp{Key: []byte(k), MemberId: member, Token: token, TtlNanos: int64(ttl)}}}
}

func releaseLockOp(k fsm.Key, member string, token uint64) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_ReleaseLock{ReleaseLock: &ipb.ReleaseLockOp{Key: []byte(k), MemberId: member, Token: token}}}
}

// write proposes ops as one request on behalf of a client: it waits for this
// member to be a ready leader, then goes through group commit. The returned
// error is a Raft or context error; domain errors are in the results.
func (s *Server) write(ctx context.Context, h *pb.RequestHeader, ops ...*ipb.Op) (fsm.ProposalResult, error) {
	if err := checkHeader(h); err != nil {
		return nil, err
	}
	if _, err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	p := &ipb.Proposal{Ops: ops}
	if h != nil {
		p.ClientId, p.Seq, p.AckedSeq = h.ClientId, h.Seq, h.AckedSeq
	}
	return s.proposer.propose(ctx, p)
}

// checkHeader validates an idempotency header: either all zero (no
// deduplication) or a client ID with a sequence number from 1 and an acked
// sequence no higher than it.
func checkHeader(h *pb.RequestHeader) error {
	switch {
	case h == nil || (h.ClientId == 0 && h.Seq == 0 && h.AckedSeq == 0):
		return nil
	case h.ClientId == 0:
		return invalid("header.client_id", "is required when header.seq or header.acked_seq is set")
	case h.Seq == 0:
		return invalid("header.seq", "must be >= 1 when header.client_id is set")
	case h.AckedSeq > h.Seq:
		return invalid("header.acked_seq", "%d is above header.seq %d", h.AckedSeq, h.Seq)
	}
	return nil
}

// write1 is write for a single operation, returning its domain error as the
// error.
func (s *Server) write1(ctx context.Context, h *pb.RequestHeader, op *ipb.Op) (fsm.Result, error) {
	res, err := s.write(ctx, h, op)
	if err != nil {
		return fsm.Result{}, err
	}
	return res[0], res[0].Err
}

// applyDirect proposes ops without waiting for readiness: for leaderSetup.
func (s *Server) applyDirect(ops ...*ipb.Op) (fsm.ProposalResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ApplyTimeout)
	defer cancel()
	res, err := s.proposer.propose(ctx, &ipb.Proposal{Ops: ops})
	if err != nil {
		return nil, err
	}
	for _, r := range res {
		if r.Err != nil {
			return res, r.Err
		}
	}
	return res, nil
}

// read prepares a read at the requested consistency. LOCAL reads return at
// once. LINEARIZABLE reads reach here only on the leader (the interceptor
// forwards them otherwise). The leader has applied a barrier of its term
// (waitReady), so its FSM holds every entry committed before the term; every
// write acknowledged since was acknowledged only after this FSM applied it.
// Confirming with a quorum of voters that it still leads (confirmLeadership)
// then rules out a newer leader that could have acknowledged writes this FSM
// lacks. (Waiting for the commit index instead would not do: barrier and
// configuration entries never reach the FSM, so its applied index can stay
// below it.)
func (s *Server) read(ctx context.Context, c pb.ReadConsistency) error {
	if c != pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE {
		return nil
	}
	term, err := s.waitReady(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout) // voters cut off must not hold a read without a deadline for ever
	defer cancel()
	if err := s.confirmLeadership(cctx); err != nil {
		return err
	}
	if s.raft.CurrentTerm() != term {
		return fmt.Errorf("%w: leadership changed during the read", raft.ErrLeadershipLost)
	}
	return nil
}
