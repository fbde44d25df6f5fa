package fsm

import (
	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

// reassign applies a ReassignOp: member states first, then bucket changes
// checked against the new states and the revisions they were planned from.
// All or nothing: the whole operation is checked before anything changes.
//
// A bucket's epoch becomes index when any of its roles changes hands; its
// revision becomes index on any change.
func (st *state) reassign(index uint64, op *ipb.ReassignOp) Result {
	if st.site == "" {
		return Result{Err: ErrSiteNotInitialised}
	}
	states := map[string]pb.MemberState{}
	for _, ms := range op.Members {
		m := st.members[ms.MemberId]
		switch {
		case m == nil:
			return Result{Err: errorf(ErrUnknownMember, "%q", ms.MemberId)}
		case !validState(ms.State):
			return Result{Err: errorf(ErrInvalid, "member state %d", ms.State)}
		}
		states[m.ID] = ms.State
	}
	stateOf := func(id string) (pb.MemberState, bool) {
		if s, ok := states[id]; ok {
			return s, true
		}
		m := st.members[id]
		if m == nil {
			return 0, false
		}
		return m.State, true
	}
	seen := make(map[uint32]bool, len(op.Buckets))
	for _, b := range op.Buckets {
		switch {
		case b.Bucket >= st.bucketCount:
			return Result{Err: errorf(ErrInvalid, "bucket %d out of range (site has %d)", b.Bucket, st.bucketCount)}
		case seen[b.Bucket]:
			return Result{Err: errorf(ErrInvalid, "bucket %d changed twice", b.Bucket)}
		case st.buckets[b.Bucket].Revision != b.PrevRevision:
			return Result{Err: errorf(ErrAssignmentChanged, "bucket %d is at revision %d, the plan was made at %d",
				b.Bucket, st.buckets[b.Bucket].Revision, b.PrevRevision)}
		case b.Primary != "" && b.Primary == b.LocalBackup:
			return Result{Err: errorf(ErrInvalid, "bucket %d: %s cannot be its own local backup", b.Bucket, b.Primary)}
		case b.Incoming != "" && (b.Incoming == b.Primary || b.Incoming == b.LocalBackup):
			return Result{Err: errorf(ErrInvalid, "bucket %d: incoming %s already holds a role", b.Bucket, b.Incoming)}
		case b.Incoming == "" && (b.IncomingSynced || b.IncomingPrimary):
			return Result{Err: errorf(ErrInvalid, "bucket %d: incoming flags without an incoming member", b.Bucket)}
		}
		seen[b.Bucket] = true
		for _, id := range []string{b.Primary, b.LocalBackup, b.Incoming} {
			if id == "" {
				continue
			}
			s, ok := stateOf(id)
			switch {
			case !ok:
				return Result{Err: errorf(ErrUnknownMember, "%q in bucket %d", id, b.Bucket)}
			case s != pb.MemberState_MEMBER_STATE_ALIVE && s != pb.MemberState_MEMBER_STATE_DRAINING:
				return Result{Err: errorf(ErrMemberNotAlive, "%s (in bucket %d) is %s", id, b.Bucket, s)}
			}
		}
	}
	for _, ms := range op.Members {
		st.setState(st.members[ms.MemberId], ms.State)
	}
	for _, b := range op.Buckets {
		cur := &st.buckets[b.Bucket]
		next := Assignment{Primary: b.Primary, LocalBackup: b.LocalBackup, RemoteBackup: b.RemoteBackup,
			Epoch: cur.Epoch, BackupSynced: b.BackupSynced, Revision: index,
			Incoming: b.Incoming, IncomingSynced: b.IncomingSynced, IncomingPrimary: b.IncomingPrimary,
			RemoteCopySynced: cur.RemoteCopySynced && b.Primary == cur.Primary}
		if next.Primary != cur.Primary || next.LocalBackup != cur.LocalBackup || next.RemoteBackup != cur.RemoteBackup ||
			next.Incoming != cur.Incoming {
			next.Epoch = index
		}
		next = succeed(*cur, next, index)
		if next != *cur {
			*cur = next
			st.topologyChanged = true
		}
	}
	return Result{Epoch: index}
}

// markSynced records that a member finished the full sync of buckets it is
// the local backup or the incoming member of. Reports that no longer match
// the bucket (another epoch, or the member holds neither role) are skipped.
// Result.Epoch is how many were recorded.
func (st *state) markSynced(index uint64, op *ipb.MarkSyncedOp) Result {
	if err := st.checkMember(op.MemberId); err != nil {
		if s, ok := st.members[op.MemberId]; !ok || s.State != pb.MemberState_MEMBER_STATE_DRAINING {
			return Result{Err: err}
		}
	}
	n := 0
	for _, be := range op.Buckets {
		if be.Bucket >= st.bucketCount {
			continue
		}
		b := &st.buckets[be.Bucket]
		switch {
		case b.Epoch != be.Epoch:
			continue
		case b.LocalBackup == op.MemberId && !b.BackupSynced:
			b.BackupSynced = true
		case b.Incoming == op.MemberId && !b.IncomingSynced:
			b.IncomingSynced = true
		case st.standby && b.Primary == op.MemberId && !b.RemoteCopySynced:
			b.RemoteCopySynced = true
		default:
			continue
		}
		b.Revision = index
		st.topologyChanged = true
		n++
	}
	return Result{Epoch: uint64(n), MemberID: op.MemberId}
}

// Buckets returns a copy of the bucket table and the index it was read at.
func (f *FSM) Buckets() ([]Assignment, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return append([]Assignment(nil), f.st.buckets...), f.st.applied
}

// Assignment returns bucket b's assignment.
func (f *FSM) Assignment(b uint32) (Assignment, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if b >= uint32(len(f.st.buckets)) {
		return Assignment{}, false
	}
	return f.st.buckets[b], true
}

// ChangedSince returns the assignments (with their bucket numbers) whose
// revision is above rev, and the applied index they were read at.
func (f *FSM) ChangedSince(rev uint64) (buckets []uint32, as []Assignment, applied uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for i, a := range f.st.buckets {
		if a.Revision > rev {
			buckets = append(buckets, uint32(i))
			as = append(as, a)
		}
	}
	return buckets, as, f.st.applied
}

// Proto converts an assignment of bucket b to its API form.
func (a Assignment) Proto(b uint32) *pb.Assignment {
	return &pb.Assignment{Bucket: b, Primary: a.Primary, LocalBackup: a.LocalBackup, RemoteBackup: a.RemoteBackup,
		Epoch: a.Epoch, BackupSynced: a.BackupSynced, Revision: a.Revision,
		Incoming: a.Incoming, IncomingSynced: a.IncomingSynced, IncomingPrimary: a.IncomingPrimary,
		RemoteCopySynced: a.RemoteCopySynced}
}

func (a Assignment) record(b uint32) *ipb.BucketRecord {
	return &ipb.BucketRecord{Bucket: b, Primary: a.Primary, LocalBackup: a.LocalBackup, RemoteBackup: a.RemoteBackup,
		Epoch: a.Epoch, BackupSynced: a.BackupSynced, Revision: a.Revision,
		Incoming: a.Incoming, IncomingSynced: a.IncomingSynced, IncomingPrimary: a.IncomingPrimary,
		RemoteCopySynced: a.RemoteCopySynced, PreviousPrimary: a.Previous, PrimarySince: a.Since}
}
