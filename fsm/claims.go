package fsm

import (
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/internal/sabotage"
)

func (st *state) claim(k Key, member string) Result {
	if err := st.checkMember(member); err != nil {
		return Result{Err: err}
	}
	if c, ok := st.claims.get(k); ok && !sabotage.StealClaims.Load() {
		owner := st.memberIDs[c.member]
		if owner == member {
			return Result{Epoch: c.epoch, MemberID: member} // idempotent re-claim
		}
		return Result{Err: errorf(ErrClaimConflict, "%s is claimed by %s at epoch %d", k, owner, c.epoch),
			Epoch: c.epoch, MemberID: owner}
	}
	c := claimRec{member: st.indexOf(member), epoch: st.nextToken()}
	if sabotage.ForgetClaims.Load() {
		return Result{Epoch: c.epoch, MemberID: member}
	}
	st.claims.put(k, c)
	return Result{Epoch: c.epoch, MemberID: member}
}

func (st *state) release(k Key, member string, epoch uint64) Result {
	rec, ok := st.claims.get(k)
	if !ok {
		return Result{Err: errorf(ErrNotClaimed, "%s", k)}
	}
	c := st.claim1(rec)
	switch {
	case c.MemberID != member:
		return Result{Err: errorf(ErrClaimConflict, "%s is claimed by %s, not %s", k, c.MemberID, member),
			Epoch: c.Epoch, MemberID: c.MemberID}
	case epoch != 0 && epoch != c.Epoch:
		return Result{Err: errorf(ErrEpochMismatch, "%s has epoch %d, not %d", k, c.Epoch, epoch),
			Epoch: c.Epoch, MemberID: c.MemberID}
	}
	st.claims.del(k)
	return Result{Epoch: c.Epoch, MemberID: member}
}

// claim1 expands a stored claim record.
func (st *state) claim1(c claimRec) Claim {
	return Claim{MemberID: st.memberIDs[c.member], Epoch: c.epoch}
}

// Ownership is the answer to a lookup.
type Ownership struct {
	Key        Key
	Bucket     uint32
	Assignment Assignment
	Claim      Claim
	Claimed    bool
	// ClaimOrphaned: the claim's member has failed or left.
	ClaimOrphaned bool
	Applied       uint64
}

// Owner is the member that should process the connection: the claim's member,
// else (no claim, or its member failed or left) the bucket's primary.
func (o Ownership) Owner() string {
	if o.Claimed && !o.ClaimOrphaned {
		return o.Claim.MemberID
	}
	return o.Assignment.Primary
}

// Lookup answers the ownership of each key from one consistent view.
func (f *FSM) Lookup(keys ...Key) []Ownership {
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := f.st
	out := make([]Ownership, len(keys))
	for i, k := range keys {
		o := Ownership{Key: k, Applied: st.applied}
		if st.bucketCount > 0 {
			o.Bucket = k.Bucket(st.bucketCount)
			o.Assignment = st.buckets[o.Bucket]
		}
		if rec, ok := st.claims.get(k); ok {
			o.Claim, o.Claimed = st.claim1(rec), true
			if m := st.members[o.Claim.MemberID]; m == nil || m.State == pb.MemberState_MEMBER_STATE_FAILED ||
				m.State == pb.MemberState_MEMBER_STATE_LEFT {
				o.ClaimOrphaned = true
			}
		}
		out[i] = o
	}
	return out
}
