package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// MaxBatchKeys is the most keys one batch call may carry.
const MaxBatchKeys = 10000

type ownershipService struct {
	pb.UnimplementedOwnershipServiceServer
	s *Server
}

// checkMemberID validates a member ID field's syntax.
func checkMemberID(field, id string) error {
	if !fsm.ValidID(id) {
		return invalid(field, "%q is not a valid member ID (1-64 characters of [A-Za-z0-9._-])", id)
	}
	return nil
}

// checkMember validates a member ID field that must name an alive member.
// Writes run on the leader once it has applied its barrier, so its FSM knows
// every committed member; the FSM checks again when the entry is applied.
//
// A write with an idempotency header (h.ClientId set) is checked for a known
// member only: it may be the retry of one already applied while the member
// was alive, and its answer must be that one, which the FSM's session gives;
// refusing it here because the member has failed since would tell the
// client that a write that took effect did not (chaos seed 104 of
// TestChaos_Namespaces: a claim whose member was killed mid-call). Members
// are never deleted from the FSM, so "known" cannot change.
func (s *Server) checkMember(ctx context.Context, field, id string, h *pb.RequestHeader) error {
	if err := checkMemberID(field, id); err != nil {
		return err
	}
	if _, err := s.waitReady(ctx); err != nil {
		return err
	}
	m, ok := s.fsm.Member(id)
	switch {
	case !ok:
		return invalid(field, "unknown member %q (connsyncctl members lists them)", id)
	case m.State != pb.MemberState_MEMBER_STATE_ALIVE && h.GetClientId() == 0:
		return status.Errorf(codes.FailedPrecondition, "%s: member %q is %s", field, id, m.State)
	}
	return nil
}

// parseKeys validates a batch of keys as a whole.
func parseKeys(keys []*pb.ConnKey) ([]fsm.Key, error) {
	return parseKeyList("keys", "key", keys, func(i int) string { return fmt.Sprintf("keys[%d]", i) })
}

// parseKeyList validates a batch's keys as a whole: list names the list,
// noun one of its items, and item(i) the i-th key's field.
func parseKeyList(list, noun string, keys []*pb.ConnKey, item func(i int) string) ([]fsm.Key, error) {
	if len(keys) == 0 {
		return nil, invalid(list, "at least one %s is required", noun)
	}
	if len(keys) > MaxBatchKeys {
		return nil, invalid(list, "%d %ss, at most %d per call", len(keys), noun, MaxBatchKeys)
	}
	out := make([]fsm.Key, len(keys))
	for i, k := range keys {
		var err error
		if out[i], err = fsm.ParseKey(k, item(i)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func ownershipProto(o fsm.Ownership) *pb.Ownership {
	out := &pb.Ownership{
		Key:    o.Key.Proto(),
		Bucket: o.Bucket,
		Assignment: &pb.Assignment{Bucket: o.Bucket, Primary: o.Assignment.Primary,
			LocalBackup: o.Assignment.LocalBackup, RemoteBackup: o.Assignment.RemoteBackup, Epoch: o.Assignment.Epoch},
		Owner:        o.Owner(),
		AppliedIndex: o.Applied,
	}
	if o.Claimed {
		out.Claim = &pb.Claim{Key: out.Key, MemberId: o.Claim.MemberID, Epoch: o.Claim.Epoch}
	}
	return out
}

func (o *ownershipService) Lookup(ctx context.Context, req *pb.LookupRequest) (*pb.LookupResponse, error) {
	k, err := fsm.ParseKey(req.Key, "key")
	if err != nil {
		return nil, err
	}
	if err := o.s.read(ctx, req.Consistency); err != nil {
		return nil, err
	}
	return &pb.LookupResponse{Ownership: ownershipProto(o.s.fsm.Lookup(k)[0])}, nil
}

func (o *ownershipService) LookupBatch(ctx context.Context, req *pb.LookupBatchRequest) (*pb.LookupBatchResponse, error) {
	keys, err := parseKeys(req.Keys)
	if err != nil {
		return nil, err
	}
	if err := o.s.read(ctx, req.Consistency); err != nil {
		return nil, err
	}
	os := o.s.fsm.Lookup(keys...)
	out := &pb.LookupBatchResponse{Ownerships: make([]*pb.Ownership, len(os))}
	for i, ow := range os {
		out.Ownerships[i] = ownershipProto(ow)
	}
	return out, nil
}

func (o *ownershipService) Claim(ctx context.Context, req *pb.ClaimRequest) (*pb.ClaimResponse, error) {
	k, err := fsm.ParseKey(req.Key, "key")
	if err != nil {
		return nil, err
	}
	if err := o.s.checkMember(ctx, "member_id", req.MemberId, req.Header); err != nil {
		return nil, err
	}
	r, err := o.s.write1(ctx, req.Header, claimOp(k, req.MemberId))
	if err != nil {
		return nil, err
	}
	return &pb.ClaimResponse{Claim: &pb.Claim{Key: k.Proto(), MemberId: r.MemberID, Epoch: r.Epoch}}, nil
}

func (o *ownershipService) ClaimBatch(ctx context.Context, req *pb.ClaimBatchRequest) (*pb.ClaimBatchResponse, error) {
	keys, err := parseKeys(req.Keys)
	if err != nil {
		return nil, err
	}
	if err := o.s.checkMember(ctx, "member_id", req.MemberId, req.Header); err != nil {
		return nil, err
	}
	res, err := o.s.write(ctx, req.Header, claimBatchOp(keys, req.MemberId))
	if err != nil {
		return nil, err
	}
	if err := unknownMember(res); err != nil {
		return nil, err
	}
	out := &pb.ClaimBatchResponse{Results: make([]*pb.ClaimResult, len(res))}
	for i, r := range res {
		out.Results[i] = &pb.ClaimResult{Status: itemStatus(r.Err)}
		if r.MemberID != "" {
			out.Results[i].Claim = &pb.Claim{Key: keys[i].Proto(), MemberId: r.MemberID, Epoch: r.Epoch}
		}
	}
	return out, nil
}

func (o *ownershipService) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	k, err := fsm.ParseKey(req.Key, "key")
	if err != nil {
		return nil, err
	}
	if err := checkMemberID("member_id", req.MemberId); err != nil {
		return nil, err
	}
	if _, err := o.s.write1(ctx, req.Header, releaseOp(k, req.MemberId, req.Epoch)); err != nil {
		return nil, err
	}
	return &pb.ReleaseResponse{}, nil
}

func (o *ownershipService) ReleaseBatch(ctx context.Context, req *pb.ReleaseBatchRequest) (*pb.ReleaseBatchResponse, error) {
	keys, err := parseKeys(req.Keys)
	if err != nil {
		return nil, err
	}
	if err := checkMemberID("member_id", req.MemberId); err != nil {
		return nil, err
	}
	res, err := o.s.write(ctx, req.Header, releaseBatchOp(keys, req.MemberId))
	if err != nil {
		return nil, err
	}
	out := &pb.ReleaseBatchResponse{Results: make([]*pb.ItemStatus, len(res))}
	for i, r := range res {
		out.Results[i] = itemStatus(r.Err)
	}
	return out, nil
}

// unknownMember turns a batch whose member is unknown into one
// INVALID_ARGUMENT: every item failed the same way and nothing was written.
func unknownMember(res fsm.ProposalResult) error {
	if len(res) > 0 && res[0].Err != nil && (errors.Is(res[0].Err, fsm.ErrUnknownMember) || errors.Is(res[0].Err, fsm.ErrMemberNotAlive)) {
		return res[0].Err
	}
	return nil
}

// okStatus is shared by every successful item of batch responses (messages
// are only read when marshalled): one allocation fewer per key.
var okStatus = &pb.ItemStatus{Code: int32(codes.OK)}

func itemStatus(err error) *pb.ItemStatus {
	if err == nil {
		return okStatus
	}
	st := toStatus(err)
	return &pb.ItemStatus{Code: int32(status.Code(st)), Message: err.Error()}
}
