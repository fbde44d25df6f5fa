package server

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

var writeMethods = []string{
	pb.OwnershipService_Claim_FullMethodName,
	pb.OwnershipService_ClaimBatch_FullMethodName,
	pb.OwnershipService_Release_FullMethodName,
	pb.OwnershipService_ReleaseBatch_FullMethodName,
	pb.LockService_AcquireLock_FullMethodName,
	pb.LockService_RenewLock_FullMethodName,
	pb.LockService_ReleaseLock_FullMethodName,
	pb.LockService_AcquireLockBatch_FullMethodName,
	pb.LockService_ReleaseLockBatch_FullMethodName,
	pb.OperatorService_Join_FullMethodName,
	pb.OperatorService_RemoveMember_FullMethodName,
	pb.OperatorService_TransferLeadership_FullMethodName,
	pb.OperatorService_Rebalance_FullMethodName,
	pb.OperatorService_Drain_FullMethodName,
	pb.MemberService_ReportSynced_FullMethodName,
	pb.OperatorService_SiteFailover_FullMethodName,
	pb.OperatorService_SiteHandover_FullMethodName,
	pb.SiteLeaseService_GrantSiteLease_FullMethodName,
}

func TestNeedsLeader_Writes(t *testing.T) {
	for _, m := range writeMethods {
		if _, err := newResponse(m); err != nil { // forwarding needs a response type
			t.Errorf("newResponse(%s): %v", m, err)
		}
		if !needsLeader(m, nil) {
			t.Errorf("needsLeader(%s, nil) = false", m)
		}
	}
	// The request itself does not matter for a write.
	if !needsLeader(pb.OwnershipService_Claim_FullMethodName, &pb.ClaimRequest{}) {
		t.Errorf("needsLeader(Claim, ClaimRequest) = false")
	}
	if len(leaderMethods) != len(writeMethods) {
		t.Errorf("leaderMethods has %d entries, want %d", len(leaderMethods), len(writeMethods))
	}
}

func TestNeedsLeader_Reads(t *testing.T) {
	type reqFor func(pb.ReadConsistency) any
	reads := []struct {
		method string
		req    reqFor
	}{
		{pb.OwnershipService_Lookup_FullMethodName, func(c pb.ReadConsistency) any { return &pb.LookupRequest{Consistency: c} }},
		{pb.OwnershipService_LookupBatch_FullMethodName, func(c pb.ReadConsistency) any { return &pb.LookupBatchRequest{Consistency: c} }},
		{pb.LockService_GetLock_FullMethodName, func(c pb.ReadConsistency) any { return &pb.GetLockRequest{Consistency: c} }},
		{pb.OperatorService_ListMembers_FullMethodName, func(c pb.ReadConsistency) any { return &pb.ListMembersRequest{Consistency: c} }},
	}
	for _, r := range reads {
		for c, want := range map[pb.ReadConsistency]bool{
			pb.ReadConsistency_READ_CONSISTENCY_UNSPECIFIED:  false,
			pb.ReadConsistency_READ_CONSISTENCY_LOCAL:        false,
			pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE: true,
		} {
			if got := needsLeader(r.method, r.req(c)); got != want {
				t.Errorf("needsLeader(%s, %v) = %v, want %v", r.method, c, got, want)
			}
		}
	}
	// Reads without a consistency field stay local.
	for m, req := range map[string]any{
		pb.OperatorService_Status_FullMethodName:        &pb.StatusRequest{},
		pb.OperatorService_ListRaftPeers_FullMethodName: &pb.ListRaftPeersRequest{},
	} {
		if needsLeader(m, req) {
			t.Errorf("needsLeader(%s) = true", m)
		}
	}
	if needsLeader("/connsync.v1.OwnershipService/Nope", nil) {
		t.Errorf("needsLeader(unknown method, nil) = true")
	}
}

func TestServiceOf(t *testing.T) {
	for in, want := range map[string]string{
		pb.OwnershipService_Claim_FullMethodName:             "connsync.v1.OwnershipService",
		pb.LockService_GetLock_FullMethodName:                "connsync.v1.LockService",
		pb.OperatorService_TransferLeadership_FullMethodName: "connsync.v1.OperatorService",
		"/a.B/C":      "a.B",
		"/a.B/":       "a.B",
		"":            "",
		"/":           "",
		"/nomethod":   "",
		"noslash":     "",
		"/x/y/Method": "x/y",
	} {
		if got := serviceOf(in); string(got) != want {
			t.Errorf("serviceOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewResponse(t *testing.T) {
	for method, want := range map[string]proto.Message{
		pb.OwnershipService_Lookup_FullMethodName:            &pb.LookupResponse{},
		pb.OwnershipService_LookupBatch_FullMethodName:       &pb.LookupBatchResponse{},
		pb.OwnershipService_Claim_FullMethodName:             &pb.ClaimResponse{},
		pb.OwnershipService_ClaimBatch_FullMethodName:        &pb.ClaimBatchResponse{},
		pb.OwnershipService_Release_FullMethodName:           &pb.ReleaseResponse{},
		pb.OwnershipService_ReleaseBatch_FullMethodName:      &pb.ReleaseBatchResponse{},
		pb.LockService_AcquireLock_FullMethodName:            &pb.AcquireLockResponse{},
		pb.LockService_RenewLock_FullMethodName:              &pb.RenewLockResponse{},
		pb.LockService_ReleaseLock_FullMethodName:            &pb.ReleaseLockResponse{},
		pb.LockService_GetLock_FullMethodName:                &pb.GetLockResponse{},
		pb.OperatorService_Status_FullMethodName:             &pb.StatusResponse{},
		pb.OperatorService_ListMembers_FullMethodName:        &pb.ListMembersResponse{},
		pb.OperatorService_Join_FullMethodName:               &pb.JoinResponse{},
		pb.OperatorService_RemoveMember_FullMethodName:       &pb.RemoveMemberResponse{},
		pb.OperatorService_ListRaftPeers_FullMethodName:      &pb.ListRaftPeersResponse{},
		pb.OperatorService_TransferLeadership_FullMethodName: &pb.TransferLeadershipResponse{},
	} {
		got, err := newResponse(method)
		if err != nil {
			t.Errorf("newResponse(%s): %v", method, err)
			continue
		}
		if got.ProtoReflect().Descriptor().FullName() != want.ProtoReflect().Descriptor().FullName() {
			t.Errorf("newResponse(%s) = %T, want %T", method, got, want)
		}
		// The concrete generated type, so conn.Invoke can unmarshal into it
		// and the handler's caller can type-assert it.
		if gotT, wantT := typeName(got), typeName(want); gotT != wantT {
			t.Errorf("newResponse(%s) is %s, want %s", method, gotT, wantT)
		}
		if !proto.Equal(got, want) {
			t.Errorf("newResponse(%s) = %v, want empty", method, got)
		}
	}
}

func typeName(m proto.Message) string {
	switch m.(type) {
	case *pb.LookupResponse, *pb.LookupBatchResponse, *pb.ClaimResponse, *pb.ClaimBatchResponse,
		*pb.ReleaseResponse, *pb.ReleaseBatchResponse, *pb.AcquireLockResponse, *pb.RenewLockResponse,
		*pb.ReleaseLockResponse, *pb.GetLockResponse, *pb.StatusResponse, *pb.ListMembersResponse,
		*pb.JoinResponse, *pb.RemoveMemberResponse, *pb.ListRaftPeersResponse, *pb.TransferLeadershipResponse:
		return string(m.ProtoReflect().Descriptor().FullName())
	}
	return "not a generated connsync.v1 response type"
}

func TestNewResponse_Unknown(t *testing.T) {
	for _, m := range []string{
		"/connsync.v1.OwnershipService/Nope",
		"/connsync.v1.OwnershipService/",
		"/connsync.v1.NoSuchService/Claim",
		"/connsync.v1.ClaimRequest/Claim", // a message, not a service
		"/connsync.v1.ReadConsistency/X",  // an enum
		"/nosuch/Method",
		"connsync.v1.OwnershipService/Claim", // no leading slash
		"",
		"/",
	} {
		if resp, err := newResponse(m); err == nil {
			t.Errorf("newResponse(%q) = %T, want an error", m, resp)
		}
	}
}

func TestFillDefaultMember_Fills(t *testing.T) {
	s := &Server{cfg: Config{MemberID: "m7"}}
	ttl := durationpb.New(10e9)
	for method, msg := range map[string]interface {
		proto.Message
		GetMemberId() string
	}{
		pb.OwnershipService_Claim_FullMethodName:        &pb.ClaimRequest{},
		pb.OwnershipService_ClaimBatch_FullMethodName:   &pb.ClaimBatchRequest{},
		pb.OwnershipService_Release_FullMethodName:      &pb.ReleaseRequest{Epoch: 3},
		pb.OwnershipService_ReleaseBatch_FullMethodName: &pb.ReleaseBatchRequest{},
		pb.LockService_AcquireLock_FullMethodName:       &pb.AcquireLockRequest{Ttl: ttl},
		pb.LockService_RenewLock_FullMethodName:         &pb.RenewLockRequest{Token: 5},
		pb.LockService_ReleaseLock_FullMethodName:       &pb.ReleaseLockRequest{Token: 5},
	} {
		s.fillDefaultMember(method, msg)
		if got := msg.GetMemberId(); got != "m7" {
			t.Errorf("%s: member_id = %q after fillDefaultMember, want m7", method, got)
		}
	}
}

func TestFillDefaultMember_KeepsExplicit(t *testing.T) {
	s := &Server{cfg: Config{MemberID: "m7"}}
	for method, msg := range map[string]interface {
		proto.Message
		GetMemberId() string
	}{
		pb.OwnershipService_Claim_FullMethodName:        &pb.ClaimRequest{MemberId: "m2"},
		pb.OwnershipService_ReleaseBatch_FullMethodName: &pb.ReleaseBatchRequest{MemberId: "m2"},
		pb.LockService_AcquireLock_FullMethodName:       &pb.AcquireLockRequest{MemberId: "m2"},
		pb.LockService_ReleaseLock_FullMethodName:       &pb.ReleaseLockRequest{MemberId: "m2"},
	} {
		s.fillDefaultMember(method, msg)
		if got := msg.GetMemberId(); got != "m2" {
			t.Errorf("%s: member_id = %q, want the explicit m2", method, got)
		}
	}
}

func TestFillDefaultMember_LeavesOperatorAndOthers(t *testing.T) {
	s := &Server{cfg: Config{MemberID: "m7"}}
	rm := &pb.RemoveMemberRequest{}
	s.fillDefaultMember(pb.OperatorService_RemoveMember_FullMethodName, rm)
	if rm.MemberId != "" {
		t.Errorf("RemoveMember: member_id = %q, want untouched", rm.MemberId)
	}
	tl := &pb.TransferLeadershipRequest{}
	s.fillDefaultMember(pb.OperatorService_TransferLeadership_FullMethodName, tl)
	if tl.MemberId != "" {
		t.Errorf("TransferLeadership: member_id = %q, want untouched", tl.MemberId)
	}
	j := &pb.JoinRequest{Site: "s"}
	s.fillDefaultMember(pb.OperatorService_Join_FullMethodName, j)
	if j.MemberId != "" {
		t.Errorf("Join: member_id = %q, want untouched", j.MemberId)
	}
	// Requests without a member_id field are left alone (and do not panic).
	for method, msg := range map[string]proto.Message{
		pb.OwnershipService_Lookup_FullMethodName: &pb.LookupRequest{},
		pb.LockService_GetLock_FullMethodName:     &pb.GetLockRequest{},
		pb.OperatorService_Status_FullMethodName:  &pb.StatusRequest{},
	} {
		before := proto.Clone(msg)
		s.fillDefaultMember(method, msg)
		if !proto.Equal(before, msg) {
			t.Errorf("%s: request changed to %v", method, msg)
		}
	}
	// The service is decided by the method, not the message type.
	c := &pb.ClaimRequest{}
	s.fillDefaultMember("/connsync.v1.OperatorService/Claim", c)
	if c.MemberId != "" {
		t.Errorf("Claim under OperatorService: member_id = %q, want untouched", c.MemberId)
	}
}
