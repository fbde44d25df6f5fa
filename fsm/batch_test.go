package fsm

import (
	"errors"
	"testing"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
)

func claimBatch(member string, keys ...Key) *ipb.Op {
	kb := make([][]byte, len(keys))
	for i, k := range keys {
		kb[i] = []byte(k)
	}
	return &ipb.Op{Op: &ipb.Op_ClaimBatch{ClaimBatch: &ipb.ClaimBatchOp{MemberId: member, Keys: kb}}}
}

func releaseBatch(member string, keys ...Key) *ipb.Op {
	kb := make([][]byte, len(keys))
	for i, k := range keys {
		kb[i] = []byte(k)
	}
	return &ipb.Op{Op: &ipb.Op_ReleaseBatch{ReleaseBatch: &ipb.ReleaseBatchOp{MemberId: member, Keys: kb}}}
}

// TestFSM_ClaimBatchOneResultPerKey: a batch op yields one result per key, in
// order, with the same semantics as single claims (duplicates are idempotent,
// conflicts reported per key).
func TestFSM_ClaimBatchOneResultPerKey(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k1, k2, k3 := tcpKey(t, 1001), tcpKey(t, 1002), tcpKey(t, 1003)
	idx++
	if r := apply1(t, f, idx, sec(1), claimOp(k2, "m2")); r.Err != nil {
		t.Fatal(r.Err)
	}
	idx++
	res := apply(t, f, idx, sec(2), claimBatch("m1", k1, k2, k3, k1))
	if len(res) != 4 {
		t.Fatalf("%d results for 4 keys", len(res))
	}
	if res[0].Err != nil || res[2].Err != nil || res[0].MemberID != "m1" {
		t.Fatalf("claims of free keys failed: %+v", res)
	}
	if !errors.Is(res[1].Err, ErrClaimConflict) || res[1].MemberID != "m2" {
		t.Fatalf("claim of m2's key: %+v, want ErrClaimConflict naming m2", res[1])
	}
	if res[3].Err != nil || res[3].Epoch != res[0].Epoch {
		t.Fatalf("duplicate key in batch: %+v, want the first claim's epoch %d", res[3], res[0].Epoch)
	}
	idx++
	rel := apply(t, f, idx, sec(3), releaseBatch("m1", k1, k2, k3))
	if rel[0].Err != nil || rel[2].Err != nil || !errors.Is(rel[1].Err, ErrClaimConflict) {
		t.Fatalf("release batch: %+v", rel)
	}
	if st := f.Stats(); st.Claims != 1 {
		t.Fatalf("%d claims left, want only m2's", st.Claims)
	}
}

// TestFSM_BatchStaleRetryResultCount: a stale retry of a batch proposal gets
// one ErrStaleRequest per key, so callers can index results by key.
func TestFSM_BatchStaleRetryResultCount(t *testing.T) {
	f, idx := newSite(t, "m1")
	p := &ipb.Proposal{ClientId: 9, Seq: 1, AckedSeq: 1, Ops: []*ipb.Op{claimBatch("m1", tcpKey(t, 1), tcpKey(t, 2))}}
	idx++
	applyProposal(t, f, idx, sec(1), p)
	idx++
	applyProposal(t, f, idx, sec(2), &ipb.Proposal{ClientId: 9, Seq: 2, AckedSeq: 2})
	idx++
	res := applyProposal(t, f, idx, sec(3), p)
	if len(res) != 2 || !errors.Is(res[0].Err, ErrStaleRequest) || !errors.Is(res[1].Err, ErrStaleRequest) {
		t.Fatalf("stale batch retry = %+v, want 2 x ErrStaleRequest", res)
	}
}
