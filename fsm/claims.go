package fsm

func (st *state) claim(k Key, member string) Result {
	if err := st.checkMember(member); err != nil {
		return Result{Err: err}
	}
	if c, ok := st.claims[k]; ok {
		if c.MemberID == member {
			return Result{Epoch: c.Epoch, MemberID: member} // idempotent re-claim
		}
		return Result{Err: errorf(ErrClaimConflict, "%s is claimed by %s at epoch %d", k, c.MemberID, c.Epoch),
			Epoch: c.Epoch, MemberID: c.MemberID}
	}
	c := Claim{MemberID: member, Epoch: st.nextToken()}
	st.claims[k] = c
	return Result{Epoch: c.Epoch, MemberID: member}
}

func (st *state) release(k Key, member string, epoch uint64) Result {
	c, ok := st.claims[k]
	switch {
	case !ok:
		return Result{Err: errorf(ErrNotClaimed, "%s", k)}
	case c.MemberID != member:
		return Result{Err: errorf(ErrClaimConflict, "%s is claimed by %s, not %s", k, c.MemberID, member),
			Epoch: c.Epoch, MemberID: c.MemberID}
	case epoch != 0 && epoch != c.Epoch:
		return Result{Err: errorf(ErrEpochMismatch, "%s has epoch %d, not %d", k, c.Epoch, epoch),
			Epoch: c.Epoch, MemberID: c.MemberID}
	}
	delete(st.claims, k)
	return Result{Epoch: c.Epoch, MemberID: member}
}

// Ownership is the answer to a lookup.
type Ownership struct {
	Key        Key
	Bucket     uint32
	Assignment Assignment
	Claim      Claim
	Claimed    bool
	Applied    uint64
}

// Owner is the member that should process the connection: the claim's member,
// else the bucket's primary.
func (o Ownership) Owner() string {
	if o.Claimed {
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
		o.Claim, o.Claimed = st.claims[k]
		out[i] = o
	}
	return out
}
