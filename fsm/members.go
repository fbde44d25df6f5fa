package fsm

import (
	"fmt"
	"regexp"
	"sort"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

// MaxBucketCount is the largest bucket table a site may have.
const MaxBucketCount = 1 << 20

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidID reports whether s is a valid member or site ID: 1-64 characters of
// [A-Za-z0-9._-], starting with a letter or digit.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// ValidBucketCount checks a bucket count: a power of two in [1, MaxBucketCount].
func ValidBucketCount(n uint32) error {
	if n == 0 || n > MaxBucketCount || n&(n-1) != 0 {
		return fmt.Errorf("bucket count %d must be a power of two between 1 and %d", n, MaxBucketCount)
	}
	return nil
}

func (st *state) initSite(op *ipb.InitSiteOp) Result {
	if !ValidID(op.Site) {
		return Result{Err: errorf(ErrInvalid, "site %q is not a valid ID", op.Site)}
	}
	if err := ValidBucketCount(op.BucketCount); err != nil {
		return Result{Err: errorf(ErrInvalid, "%v", err)}
	}
	if st.site != "" {
		if st.site != op.Site || st.bucketCount != op.BucketCount {
			return Result{Err: errorf(ErrSiteMismatch, "site is %s with %d buckets, not %s with %d",
				st.site, st.bucketCount, op.Site, op.BucketCount)}
		}
		return Result{}
	}
	st.site, st.bucketCount, st.standby = op.Site, op.BucketCount, op.Standby
	st.buckets = make([]Assignment, op.BucketCount)
	return Result{}
}

// setSiteMode activates a standby site or makes an active one standby: every
// bucket changes hands in effect, so every epoch becomes index. Setting the
// mode the site already has is refused (a retried failover must not bump
// the epochs twice). A record-only op records a higher site-lease epoch an
// active site now holds and changes nothing else. Result.Epoch is the site
// epoch.
func (st *state) setSiteMode(index uint64, op *ipb.SetSiteModeOp) Result {
	if st.site == "" {
		return Result{Err: ErrSiteNotInitialised}
	}
	if op.RecordOnly {
		if st.standby || op.Standby || op.LeaseEpoch <= st.leaseEpoch {
			return Result{Err: errorf(ErrSiteMode, "site %s: lease epoch %d not recorded (standby %v, recorded %d)",
				st.site, op.LeaseEpoch, st.standby, st.leaseEpoch)}
		}
		st.leaseEpoch = op.LeaseEpoch
		return Result{Epoch: st.siteEpoch}
	}
	if st.standby == op.Standby {
		mode := "active"
		if st.standby {
			mode = "standby"
		}
		return Result{Err: errorf(ErrSiteMode, "site %s is %s already (site epoch %d)", st.site, mode, st.siteEpoch)}
	}
	st.standby, st.siteEpoch = op.Standby, index
	st.leaseEpoch = max(st.leaseEpoch, op.LeaseEpoch)
	for i := range st.buckets {
		a := &st.buckets[i]
		a.Epoch, a.Revision = index, index
		// Local backups and incoming members are synced anew from the
		// primaries of the new mode (a standby site's primaries hold what
		// the other site sent them, which their backups never saw). A
		// remote copy is synced anew after going standby, and means
		// nothing on an active site: a flag kept from before activation
		// would say, once the site went standby again, that copies were
		// synced which the other site never sent again.
		a.BackupSynced, a.IncomingSynced, a.RemoteCopySynced = false, false, false
	}
	st.topologyChanged = true
	return Result{Epoch: index}
}

func (st *state) registerMember(index uint64, op *ipb.RegisterMemberOp) Result {
	m := op.Member
	if st.site == "" {
		return Result{Err: ErrSiteNotInitialised}
	}
	if m == nil || !ValidID(m.Id) {
		return Result{Err: errorf(ErrInvalid, "member ID is not valid")}
	}
	if m.Site != st.site {
		return Result{Err: errorf(ErrSiteMismatch, "member %s is of site %q, this is site %q", m.Id, m.Site, st.site)}
	}
	rec := st.members[m.Id]
	if rec == nil {
		rec = &Member{ID: m.Id, Site: m.Site, JoinedIndex: index}
		st.members[m.Id] = rec
	}
	rec.RaftAddr, rec.GRPCAddr, rec.GossipAddr, rec.Weight = m.RaftAddr, m.GrpcAddr, m.GossipAddr, max(m.Weight, 1)
	rec.Nonvoter, rec.Incarnation = m.Nonvoter, m.Incarnation
	rec.State = pb.MemberState_MEMBER_STATE_ALIVE
	st.topologyChanged = true
	return Result{Epoch: rec.JoinedIndex}
}

func (st *state) setMemberState(op *ipb.SetMemberStateOp) Result {
	m := st.members[op.MemberId]
	if m == nil {
		return Result{Err: errorf(ErrUnknownMember, "%q", op.MemberId)}
	}
	if !validState(op.State) {
		return Result{Err: errorf(ErrInvalid, "member state %d", op.State)}
	}
	st.setState(m, op.State)
	return Result{}
}

func validState(s pb.MemberState) bool {
	_, ok := pb.MemberState_name[int32(s)]
	return ok && s != pb.MemberState_MEMBER_STATE_UNSPECIFIED
}

// setState changes a member's state. A member that fails or leaves loses its
// locks at once (their fencing tokens stay used), so a waiter need not wait
// for the leases to run out.
func (st *state) setState(m *Member, s pb.MemberState) {
	if m.State == s {
		return
	}
	m.State = s
	st.topologyChanged = true
	if s == pb.MemberState_MEMBER_STATE_FAILED || s == pb.MemberState_MEMBER_STATE_LEFT {
		for k, l := range st.locks {
			if l.MemberID == m.ID {
				delete(st.locks, k)
			}
		}
	}
}

// checkMember returns nil if id names an alive member.
func (st *state) checkMember(id string) error {
	m := st.members[id]
	switch {
	case m == nil:
		return errorf(ErrUnknownMember, "%q", id)
	case m.State != pb.MemberState_MEMBER_STATE_ALIVE:
		return errorf(ErrMemberNotAlive, "%s is %s", id, m.State)
	}
	return nil
}

func (st *state) setAssignments(index uint64, op *ipb.SetAssignmentsOp) Result {
	if st.site == "" {
		return Result{Err: ErrSiteNotInitialised}
	}
	// Validate everything before changing anything: all or nothing.
	for _, b := range op.Buckets {
		if b.Bucket >= st.bucketCount {
			return Result{Err: errorf(ErrInvalid, "bucket %d out of range (site has %d)", b.Bucket, st.bucketCount)}
		}
		for _, id := range []string{b.Primary, b.LocalBackup} {
			if id != "" && st.members[id] == nil {
				return Result{Err: errorf(ErrUnknownMember, "%q in bucket %d", id, b.Bucket)}
			}
		}
	}
	for _, b := range op.Buckets {
		st.buckets[b.Bucket] = succeed(st.buckets[b.Bucket], Assignment{Primary: b.Primary, LocalBackup: b.LocalBackup,
			RemoteBackup: b.RemoteBackup, Epoch: index, Revision: index}, index)
	}
	st.topologyChanged = st.topologyChanged || len(op.Buckets) > 0
	return Result{Epoch: index}
}

// Member returns a copy of one member record.
func (f *FSM) Member(id string) (Member, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m := f.st.members[id]
	if m == nil {
		return Member{}, false
	}
	return *m, true
}

// Members returns copies of all member records, sorted by ID.
func (f *FSM) Members() []Member {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Member, 0, len(f.st.members))
	for _, m := range f.st.members {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Proto converts a member record to its API form.
func (m Member) Proto() *pb.Member {
	return &pb.Member{Id: m.ID, Site: m.Site, RaftAddr: m.RaftAddr, GrpcAddr: m.GRPCAddr, GossipAddr: m.GossipAddr,
		Weight: m.Weight, State: m.State, JoinedIndex: m.JoinedIndex, Nonvoter: m.Nonvoter, Incarnation: m.Incarnation}
}

// memberFromProto is the inverse of Member.Proto.
func memberFromProto(m *pb.Member) *Member {
	return &Member{ID: m.Id, Site: m.Site, RaftAddr: m.RaftAddr, GRPCAddr: m.GrpcAddr, GossipAddr: m.GossipAddr,
		Weight: m.Weight, State: m.State, JoinedIndex: m.JoinedIndex, Nonvoter: m.Nonvoter, Incarnation: m.Incarnation}
}
