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
	st.site, st.bucketCount = op.Site, op.BucketCount
	st.buckets = make([]Assignment, op.BucketCount)
	return Result{}
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
	rec.RaftAddr, rec.GRPCAddr, rec.Weight = m.RaftAddr, m.GrpcAddr, max(m.Weight, 1)
	rec.State = pb.MemberState_MEMBER_STATE_ALIVE
	return Result{Epoch: rec.JoinedIndex}
}

func (st *state) setMemberState(op *ipb.SetMemberStateOp) Result {
	m := st.members[op.MemberId]
	if m == nil {
		return Result{Err: errorf(ErrUnknownMember, "%q", op.MemberId)}
	}
	if _, ok := pb.MemberState_name[int32(op.State)]; !ok || op.State == pb.MemberState_MEMBER_STATE_UNSPECIFIED {
		return Result{Err: errorf(ErrInvalid, "member state %d", op.State)}
	}
	m.State = op.State
	return Result{}
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
		st.buckets[b.Bucket] = Assignment{b.Primary, b.LocalBackup, b.RemoteBackup, index}
	}
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

// Assignment returns bucket b's assignment.
func (f *FSM) Assignment(b uint32) (Assignment, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if b >= uint32(len(f.st.buckets)) {
		return Assignment{}, false
	}
	return f.st.buckets[b], true
}

// Proto converts a member record to its API form.
func (m Member) Proto() *pb.Member {
	return &pb.Member{Id: m.ID, Site: m.Site, RaftAddr: m.RaftAddr, GrpcAddr: m.GRPCAddr,
		Weight: m.Weight, State: m.State, JoinedIndex: m.JoinedIndex}
}
