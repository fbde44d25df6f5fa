package fsm

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

// DefaultBucketCount is B, the number of buckets of a new site.
const DefaultBucketCount = 4096

// Result is the outcome of one operation. Err is nil or a domain *Error.
type Result struct {
	Err error
	// Epoch is the claim epoch, lock fencing token or bucket epoch.
	Epoch uint64
	// MemberID is the claim or lock holder (also set on conflicts).
	MemberID string
	// Expires and TTL describe a lock lease, in log time (Unix nanoseconds).
	Expires int64
	TTL     int64
}

// Member is a member record (see pb.Member).
type Member struct {
	ID, Site, RaftAddr, GRPCAddr, GossipAddr string
	Weight                                   uint32
	State                                    pb.MemberState
	JoinedIndex                              uint64
	Nonvoter                                 bool
	Incarnation                              uint64
}

// Assignment is one bucket's placement (see pb.Assignment).
type Assignment struct {
	Primary, LocalBackup, RemoteBackup string
	// Epoch is the Raft index of the last change of any role.
	Epoch uint64
	// BackupSynced: the local backup holds every connection of the bucket.
	BackupSynced bool
	// Revision is the Raft index of the last change of any field.
	Revision uint64
	// Incoming is a member receiving a full sync to take over as primary
	// (IncomingPrimary) or local backup; "" when no move is under way.
	Incoming        string
	IncomingSynced  bool
	IncomingPrimary bool
	// RemoteCopySynced: on a standby site, the primary holds the active
	// site's full sync of the bucket (it is the bucket's remote backup).
	RemoteCopySynced bool
	// Previous is the member that was primary before Primary ("" for none,
	// or not known: state from before this field existed); Since is the
	// Raft index at which Primary became primary (0: not known). A member
	// that takes a bucket over must not act until Previous has stopped
	// (server/handoff.go), and it may have missed entries in between:
	// these say what the log says, not what the member last saw.
	Previous string
	Since    uint64
}

// succeed returns next with Previous and Since carried over from cur, or
// set for a change of primary at index.
func succeed(cur, next Assignment, index uint64) Assignment {
	if next.Primary != cur.Primary {
		next.Previous, next.Since = cur.Primary, index
	} else {
		next.Previous, next.Since = cur.Previous, cur.Since
	}
	return next
}

// Claim is an explicit ownership record.
type Claim struct {
	MemberID string
	Epoch    uint64
}

// Lock is a lease on a key.
type Lock struct {
	MemberID string
	Token    uint64
	Expires  int64 // log time, Unix nanoseconds
	TTL      int64 // nanoseconds
}

// state is everything the FSM holds; Restore replaces it whole.
type state struct {
	site        string
	bucketCount uint32
	members     map[string]*Member
	memberIDs   []string          // index -> member ID, for claimTable
	memberIdx   map[string]uint32 // member ID -> index; never shrinks
	buckets     []Assignment
	claims      claimTable
	locks       map[Key]Lock
	sessions    map[uint64]*session
	lastToken   uint64 // last fencing token or claim epoch handed out
	now         int64  // largest entry time applied (Unix nanoseconds)
	lastSweep   int64  // log time of the last expiry sweep
	standby     bool   // a standby site acts for no bucket (see SetSiteModeOp)
	siteEpoch   uint64 // index of the last SetSiteModeOp
	leaseEpoch  uint64 // highest site-lease epoch of a SetSiteModeOp
	applied     uint64 // index of the last applied entry
	// topologyChanged is set by an entry that changes members or
	// assignments, so watchers are woken once it is applied. Not part of
	// the replicated state.
	topologyChanged bool
}

func newState() *state {
	return &state{
		members:   map[string]*Member{},
		memberIdx: map[string]uint32{},
		claims:    newClaimTable(),
		locks:     map[Key]Lock{},
		sessions:  map[uint64]*session{},
	}
}

// FSM is the site state machine. The zero value is not usable; call New.
type FSM struct {
	mu sync.RWMutex
	st *state
	// changed is closed (and replaced) after an entry that changed members
	// or assignments is applied, and after a Restore: see Watch.
	changed chan struct{}
	// generation counts the closings of changed (see Generation).
	generation atomic.Uint64
	// staleRefused counts snapshots Restore refused as older than the
	// applied state, and staleAt is the applied index of the last refusal.
	staleRefused, staleAt uint64
}

// New returns an empty FSM.
func New() *FSM {
	return &FSM{st: newState(), changed: make(chan struct{})}
}

var _ raft.FSM = (*FSM)(nil)

// Apply implements raft.FSM. It returns []ProposalResult for command entries.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var e ipb.Entry
	if err := proto.Unmarshal(l.Data, &e); err != nil {
		panic(fmt.Sprintf("fsm: cannot decode log entry %d: %v", l.Index, err))
	}
	return f.ApplyEntry(l.Index, &e)
}

// ProposalResult holds the results of one proposal's operations, in order.
type ProposalResult []Result

// ApplyEntry applies one decoded log entry at index. It panics on an operation
// it cannot decode (see the package comment).
func (f *FSM) ApplyEntry(index uint64, e *ipb.Entry) []ProposalResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	if e.TimeUnixNano > st.now {
		st.now = e.TimeUnixNano
	}
	out := make([]ProposalResult, len(e.Proposals))
	for i, p := range e.Proposals {
		out[i] = st.applyProposal(index, p)
	}
	if st.now-st.lastSweep >= int64(sweepInterval) {
		st.sweep()
	}
	st.applied = index
	if st.topologyChanged {
		st.topologyChanged = false
		f.notify()
	}
	return out
}

// notify wakes the watchers; f.mu must be held for writing.
func (f *FSM) notify() {
	f.generation.Add(1)
	close(f.changed)
	f.changed = make(chan struct{})
}

// Wake wakes every watcher without a change: for a condition outside the
// state machine that watchers also read (the server's handoff gates).
func (f *FSM) Wake() {
	f.mu.Lock()
	f.notify()
	f.mu.Unlock()
}

// Generation returns a number that changes whenever Watch's channel is
// closed (members, assignments or the site mode changed, or a Restore), read
// without the state machine's lock. It changes under the lock, with the
// state, so a reader that read it, then the state, then finds it unchanged
// knows that what it read is still current.
func (f *FSM) Generation() uint64 { return f.generation.Load() }

// Watch returns the applied index and a channel that is closed once a later
// entry changes members or assignments, or a snapshot replaces the state.
// Read the state after calling Watch, and call it again after each wake-up.
func (f *FSM) Watch() (applied uint64, changed <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.applied, f.changed
}

// sweepInterval is how much log time passes between two sweeps of expired
// locks and idle sessions.
const sweepInterval = time.Second

func (st *state) sweep() {
	st.lastSweep = st.now
	for k, l := range st.locks {
		if l.Expires <= st.now {
			delete(st.locks, k)
		}
	}
	st.expireSessions()
}

func (st *state) applyProposal(index uint64, p *ipb.Proposal) ProposalResult {
	if cached, ok := st.sessionLookup(p); ok {
		return cached
	}
	res := make(ProposalResult, 0, ResultCount(p))
	for _, op := range p.Ops {
		switch o := op.Op.(type) {
		case *ipb.Op_ClaimBatch:
			for _, kb := range o.ClaimBatch.Keys {
				res = append(res, st.claim(mustKey(kb), o.ClaimBatch.MemberId))
			}
		case *ipb.Op_ReleaseBatch:
			for _, kb := range o.ReleaseBatch.Keys {
				res = append(res, st.release(mustKey(kb), o.ReleaseBatch.MemberId, 0))
			}
		default:
			res = append(res, st.applyOp(index, op))
		}
	}
	st.sessionStore(p, res)
	return res
}

// ResultCount is the number of results a proposal yields: one per operation,
// one per key for batch operations.
func ResultCount(p *ipb.Proposal) int {
	n := 0
	for _, op := range p.Ops {
		switch o := op.Op.(type) {
		case *ipb.Op_ClaimBatch:
			n += len(o.ClaimBatch.Keys)
		case *ipb.Op_ReleaseBatch:
			n += len(o.ReleaseBatch.Keys)
		default:
			n++
		}
	}
	return n
}

func (st *state) applyOp(index uint64, op *ipb.Op) Result {
	switch o := op.Op.(type) {
	case *ipb.Op_InitSite:
		return st.initSite(o.InitSite)
	case *ipb.Op_RegisterMember:
		return st.registerMember(index, o.RegisterMember)
	case *ipb.Op_SetMemberState:
		return st.setMemberState(o.SetMemberState)
	case *ipb.Op_SetAssignments:
		return st.setAssignments(index, o.SetAssignments)
	case *ipb.Op_Reassign:
		return st.reassign(index, o.Reassign)
	case *ipb.Op_MarkSynced:
		return st.markSynced(index, o.MarkSynced)
	case *ipb.Op_SetSiteMode:
		return st.setSiteMode(index, o.SetSiteMode)
	case *ipb.Op_Claim:
		return st.claim(mustKey(o.Claim.Key), o.Claim.MemberId)
	case *ipb.Op_Release:
		return st.release(mustKey(o.Release.Key), o.Release.MemberId, o.Release.Epoch)
	case *ipb.Op_AcquireLock:
		return st.acquireLock(mustKey(o.AcquireLock.Key), o.AcquireLock.MemberId, o.AcquireLock.TtlNanos)
	case *ipb.Op_RenewLock:
		r := o.RenewLock
		return st.renewLock(mustKey(r.Key), r.MemberId, r.Token, r.TtlNanos)
	case *ipb.Op_ReleaseLock:
		r := o.ReleaseLock
		return st.releaseLock(mustKey(r.Key), r.MemberId, r.Token)
	default:
		panic(fmt.Sprintf("fsm: unknown operation %T at index %d", op.Op, index))
	}
}

func mustKey(b []byte) Key {
	k, err := KeyFromBytes(b)
	if err != nil {
		panic(fmt.Sprintf("fsm: %v: %x", err, b))
	}
	return k
}

// indexOf returns a member's index in memberIDs, assigning one on first use.
// Indexes are local to a replica (never persisted or compared), so their
// order need not match between replicas.
func (st *state) indexOf(id string) uint32 {
	if i, ok := st.memberIdx[id]; ok {
		return i
	}
	i := uint32(len(st.memberIDs))
	st.memberIDs = append(st.memberIDs, id)
	st.memberIdx[id] = i
	return i
}

func (st *state) nextToken() uint64 {
	st.lastToken++
	return st.lastToken
}

// AppliedIndex returns the index of the last applied entry.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.applied
}

// Stats is a summary of the state for status reports.
type Stats struct {
	Site        string
	BucketCount uint32
	Members     int
	Claims      int
	Locks       int
	Sessions    int
	Applied     uint64
	Now         int64
	// Standby: the site acts for no bucket; SiteEpoch: index of its last
	// activation or deactivation.
	Standby   bool
	SiteEpoch uint64
	// LeaseEpoch is the highest site-lease epoch the site activated under.
	LeaseEpoch uint64
}

// Standby reports whether the site is a standby site.
func (f *FSM) Standby() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.standby
}

// Stats returns a summary of the state.
func (f *FSM) Stats() Stats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := f.st
	return Stats{st.site, st.bucketCount, len(st.members), st.claims.len(), len(st.locks),
		len(st.sessions), st.applied, st.now, st.standby, st.siteEpoch, st.leaseEpoch}
}

// Snapshot implements raft.FSM: it copies the state so Persist can run while
// later entries are applied.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &snapshot{st: f.st.clone()}, nil
}

// Restore implements raft.FSM: it builds a fresh state from the snapshot and
// swaps it in whole.
//
// It refuses (ErrStaleSnapshot, state untouched) a snapshot whose applied
// index is below the one already applied. Raft restores at start-up into an
// empty state machine, so the refusal only meets a leader's InstallSnapshot:
// hashicorp/raft v1.7.3 sends its latest snapshot when a follower fails the
// previous-log check below the leader's first log entry, and that snapshot
// can be older than what the follower applied and compacted away. Installing
// it would move Raft's applied index back over entries the follower no
// longer has, and the next commit panics ("failed to get log";
// hashicorp/raft#697). Refused, the install fails before Raft records it;
// the leader retries, and the member asks it for a newer snapshot
// (StaleRestores, HeartbeatRequest.snapshot_wanted).
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := readSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.applied < f.st.applied {
		f.staleRefused++
		f.staleAt = f.st.applied
		return fmt.Errorf("%w: it ends at index %d, this member applied %d", ErrStaleSnapshot, st.applied, f.st.applied)
	}
	f.st = st
	f.notify()
	return nil
}

// StaleRestores returns how many snapshots Restore refused as stale, and the
// applied index at the last refusal: a snapshot ending there or later would
// be taken.
func (f *FSM) StaleRestores() (count, applied uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.staleRefused, f.staleAt
}
