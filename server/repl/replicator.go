// Package repl replicates connection states outside the Raft log. The
// firewall on a member publishes the changes of the connections it processes
// (DataPlaneService.Publish); for each connection's bucket, the member — if
// it is the bucket's active primary — gives the change the next version,
// stores it in its connection table, and streams it to the bucket's local
// backup and incoming member (MemberService.Replicate), which apply it if it
// is newer than what they hold. When a member becomes primary of a bucket it
// hands the states it backed up to its firewall at once
// (DataPlaneService.WatchActivations).
//
// # Streams
//
// A member keeps one stream per backup member (sender.go), carrying every
// bucket that member backs up. It does not queue deltas: it queues
// connections, each at most once, and reads a connection's latest state from
// the table when it sends it. Repeated changes of one connection before it is
// sent coalesce into one record, and a backup that falls behind costs memory
// in proportion to the connections that changed, not to the rate of change.
// Batches carry sequence numbers and are acknowledged cumulatively; after a
// reconnect, whatever was not acknowledged is sent again (versions make
// repeats harmless). Every record carries its bucket's epoch: a backup
// refuses a record whose epoch is older than the one its state machine has,
// or equal to it but from a member that is not the primary (fencing, S2).
// On a stream to the other site's remote backup a record carries the
// receiving site's epoch instead (see holdsRemote); fencing across sites is
// by site mode (a standby site takes the stream, an activated one refuses
// it whole).
//
// # Full sync
//
// When a member becomes a bucket's local backup or incoming member before it
// has the bucket's connections (the assignment says not synced), the
// primary sends it a snapshot of the bucket, then a marker; deltas keep
// flowing meanwhile, and versions make the order irrelevant. On the marker
// the receiver's Syncer reports the bucket synced to the leader, which may
// then complete a make-before-break move.
//
// # Delayed notifications
//
// A new connection of a service with a delay class is held back (pending)
// until its delay has passed; if it closes before that, it is never sent.
// Pending connections are not in snapshots.
package repl

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// View is what the replicator reads of its member.
type View interface {
	// Self is this member's ID; Incarnation its process's incarnation.
	Self() string
	Incarnation() uint64
	// Assignments returns the state machine's bucket table and applied index;
	// Assignment one bucket's (false: the table has no such bucket yet).
	Assignments() ([]fsm.Assignment, uint64)
	Assignment(b uint32) (fsm.Assignment, bool)
	// Generation changes whenever Watch's channel is closed; it is read
	// without waiting for the state machine (fsm.FSM.Generation).
	Generation() uint64
	// Watch returns a channel closed when members or assignments change.
	Watch() (uint64, <-chan struct{})
	// Acting reports whether this member may act as primary (lease held).
	Acting() bool
	// Pending reports whether this member, primary of bucket b at epoch,
	// must not act for it yet: another member may still be acting for it.
	Pending(b uint32, epoch uint64) bool
	// Addr returns a member's gRPC address (of either site).
	Addr(member string) (string, bool)
	// Site is this member's site; Standby whether it is a standby site.
	Site() string
	Standby() bool
	// Peer returns what is known of the other site (nil: none, or not yet)
	// and a channel closed when that changes (nil: never).
	Peer() (*Peer, <-chan struct{})
}

// Config configures a Replicator.
type Config struct {
	View        View
	BucketCount uint32
	// Dial returns a connection to a member's gRPC address.
	Dial   func(addr string) (*grpc.ClientConn, error)
	Delays []DelayClass
	Logger hclog.Logger
	// MaxBatchRecords and MaxBatchBytes bound one batch; Window is how many
	// batches a stream may have unacknowledged.
	MaxBatchRecords, MaxBatchBytes, Window int
	// OnApply, if set, is called for every record a backup applies (for
	// measuring replication lag); it must be fast.
	OnApply func(bucket uint32, key fsm.Key, version uint64)
	// RemoteCompression gzips the streams to the other site.
	RemoteCompression bool
}

func (c *Config) defaults() {
	if c.MaxBatchRecords == 0 {
		c.MaxBatchRecords = 2048
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = 256 << 10
	}
	if c.Window == 0 {
		c.Window = 8
	}
	if c.Delays == nil {
		c.Delays = DefaultDelayClasses()
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// plan is what this member does for one bucket, as of the last planning.
type plan struct {
	epoch uint64
	// owner: the state machine makes this member the bucket's primary; it
	// sends what it accepted to the targets even while its lease lapses (the
	// receivers fence it by epoch once another member is primary). primary:
	// it is the owner and holds a lease, so it may accept new events.
	owner, primary bool
	targets        []string // members to replicate to (local backup, incoming, remote backup)
	// remote is the other site's member holding the remote backup ("" for
	// none) and remoteEpoch the other site's epoch of the bucket.
	remote      string
	remoteEpoch uint64
}

// Replicator is one member's replication. Create it with New, start it with
// Run; it stops when Run's context ends.
type Replicator struct {
	cfg   Config
	self  string
	table *conntable.Table

	assign atomic.Pointer[assigned] // the state machine as replan last read it, and its plans

	mu      sync.Mutex
	senders map[string]*sender
	started map[syncKey]bool // full syncs scheduled: (bucket, target, epoch)

	markMu  sync.Mutex
	markers map[uint32]uint64 // bucket -> highest epoch a full-sync marker arrived for
	markCh  chan struct{}     // closed and replaced when a marker arrives

	// recvEpoch[b] is the highest epoch of any record applied for bucket b:
	// a bucket is dropped only once the state machine has caught up with it
	// and still gives this member no role (its records may arrive before the
	// assignment that sent them).
	recvEpoch []atomic.Uint64

	marks atomic.Uint64 // global mark sequence (see sender watermarks)
	// poisoned counts the events that make the watermarks overstate what
	// the backups hold: a record acknowledged but refused, or a stream
	// closed with records not yet acknowledged (see Publish).
	poisoned atomic.Uint64
	delayer  *delayer
	refused  atomic.Uint64

	// activating counts the WatchActivations streams sending a bucket's
	// states to the firewall: full syncs wait while it is above 0 (see
	// nextBatch), at most maxSyncYield at a time.
	activating atomic.Int32
	yieldMu    sync.Mutex
	yieldSince time.Time // when full syncs began waiting; zero: not waiting

	wake       chan struct{} // replanning
	lastActing bool          // Run's goroutine only
	ctx        context.Context
	wg         sync.WaitGroup
}

// assigned is what replan last read of the state machine: its generation
// (read first), bucket table and site mode, with the lease as it read it,
// and the plan it made from them for each bucket.
type assigned struct {
	gen     uint64
	as      []fsm.Assignment
	standby bool
	acting  bool
	plans   []plan // by bucket
}

// bucket returns bucket b's assignment, or nil if the table has none.
func (a *assigned) bucket(b uint32) *fsm.Assignment {
	if int(b) < len(a.as) {
		return &a.as[b]
	}
	return nil
}

type syncKey struct {
	bucket uint32
	target string
	epoch  uint64 // the other site's epoch when remote
	remote bool
}

// New returns a Replicator over an empty table.
func New(cfg Config) *Replicator {
	cfg.defaults()
	r := &Replicator{cfg: cfg, self: cfg.View.Self(), table: conntable.New(cfg.BucketCount),
		senders: map[string]*sender{}, started: map[syncKey]bool{}, markers: map[uint32]uint64{},
		markCh: make(chan struct{}), delayer: newDelayer(50 * time.Millisecond), wake: make(chan struct{}, 1),
		recvEpoch: make([]atomic.Uint64, cfg.BucketCount)}
	r.assign.Store(&assigned{plans: make([]plan, cfg.BucketCount)})
	return r
}

// Table exposes the connection table (read-only use).
func (r *Replicator) Table() *conntable.Table { return r.table }

// Run plans replication from the state machine until ctx ends, then stops
// every stream and waits for them.
func (r *Replicator) Run(ctx context.Context) {
	r.ctx = ctx
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	purge := time.NewTicker(5 * time.Second)
	defer purge.Stop()
	// A watch channel is renewed only when it fires: when it closes while
	// another case is chosen (select picks at random among ready cases), it
	// stays closed and fires on the next round. (Renewing it on every round
	// lost such a change for good: the new channel only closes on the next.)
	replan := true
	_, changed := r.cfg.View.Watch()
	_, peerChanged := r.cfg.View.Peer()
	for {
		if acting := r.cfg.View.Acting(); replan || acting != r.lastActing {
			r.replan()
			replan = false
		}
		select {
		case <-ctx.Done():
			r.mu.Lock()
			for _, s := range r.senders {
				s.close()
			}
			r.mu.Unlock()
			r.wg.Wait()
			return
		case <-changed:
			replan = true
			_, changed = r.cfg.View.Watch() // before replan reads the state
		case <-peerChanged:
			replan = true
			_, peerChanged = r.cfg.View.Peer()
		case <-r.wake:
			replan = true
		case now := <-tick.C:
			r.releaseDue(now)
		case now := <-purge.C:
			r.purge(now)
		}
	}
}

// replan reads the state machine and the lease and updates what this member
// replicates: the targets of each bucket it is active primary of, the full
// syncs they need, and the buckets it holds no role for any more (dropped).
func (r *Replicator) replan() {
	gen := r.cfg.View.Generation()
	as, _ := r.cfg.View.Assignments()
	standby := r.cfg.View.Standby()
	acting := r.cfg.View.Acting()
	peer, _ := r.cfg.View.Peer()
	if standby {
		peer = nil // a standby site streams to nobody on the other site
	}
	r.lastActing = acting
	plans := make([]plan, len(as))
	need := map[string]bool{} // target -> remote
	var syncs []syncKey
	for i, a := range as {
		b := uint32(i)
		p := plan{epoch: a.Epoch}
		switch {
		case a.Primary == r.self:
			p.owner, p.primary = true, acting && !r.cfg.View.Pending(b, a.Epoch)
			for _, t := range []string{a.LocalBackup, a.Incoming} {
				if t == "" || t == r.self {
					continue
				}
				p.targets = append(p.targets, t)
				need[t] = false
				if (t == a.LocalBackup && !a.BackupSynced) || (t == a.Incoming && !a.IncomingSynced) {
					syncs = append(syncs, syncKey{b, t, a.Epoch, false})
				}
			}
			if t, e, synced := peer.remoteTarget(b, len(as)); t != "" {
				p.targets = append(p.targets, t)
				p.remote, p.remoteEpoch = t, e
				need[t] = true
				if !synced {
					syncs = append(syncs, syncKey{b, t, e, true})
				}
			}
		case a.LocalBackup == r.self || a.Incoming == r.self:
		case int(b) < len(r.recvEpoch) && a.Epoch >= r.recvEpoch[b].Load():
			// Checked again under the bucket's lock: a record of a newer
			// epoch noted (noteRecvEpoch) and applied since is kept.
			r.table.DropUnless(b, func() bool { return r.recvEpoch[b].Load() > a.Epoch })
		}
		plans[i] = p
	}
	r.assign.Store(&assigned{gen: gen, as: as, standby: standby, acting: acting, plans: plans})
	r.mu.Lock()
	defer r.mu.Unlock()
	for t, remote := range need {
		if s := r.senders[t]; s != nil && s.remote != remote {
			r.closeSender(s) // a member ID seen on the other site now (or back): a new stream
			delete(r.senders, t)
		}
		if r.senders[t] == nil && r.ctx != nil {
			r.senders[t] = r.newSender(t, remote)
		}
	}
	for t, s := range r.senders {
		if _, ok := need[t]; !ok {
			r.closeSender(s)
			delete(r.senders, t)
		}
	}
	for _, k := range syncs {
		if !acting || r.started[k] {
			continue
		}
		if s := r.senders[k.target]; s != nil {
			r.started[k] = true
			s.addSync(k.bucket, k.epoch, k.remote)
		}
	}
	for k := range r.started { // forget syncs of assignments that moved on
		p := plan{}
		if int(k.bucket) < len(plans) {
			p = plans[k.bucket]
		}
		if (!k.remote && (!p.owner || p.epoch != k.epoch)) || (k.remote && (p.remote != k.target || p.remoteEpoch != k.epoch)) {
			delete(r.started, k)
		}
	}
}

// kick asks for a replan soon.
func (r *Replicator) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// planOf returns this member's plan for bucket b.
func (r *Replicator) planOf(b uint32) plan {
	return r.assign.Load().plan(b)
}

// plan returns the plan replan made for bucket b.
func (a *assigned) plan(b uint32) plan {
	if int(b) >= len(a.plans) {
		return plan{}
	}
	return a.plans[b]
}

// primaryPlan returns the plan to decide on whether this member, acting or
// not (the lease as publishBatch last read it), accepts an event of bucket b, and
// the state machine's generation it holds for. That is replan's plan while
// the generation and the lease are still those replan saw. Otherwise the
// plan may only refuse more: it lets this member accept only if the state
// machine still makes it the bucket's primary at the plan's epoch, past its
// handoff gate, and it holds the lease; and Run is asked to replan.
//
// replan runs on Run's goroutine after a change and can lag a flip for as
// long as that goroutine waits to run, while the bucket's new primary acts
// as soon as this member has applied the flip (its handoff gate asks
// GetActive, which reads the state machine); and a lease ends with no
// change in the state machine at all (Run notices on its next tick).
// Accepting on a stale plan, a member acted beside the new primary
// (TestCluster_BadEventsRefusedOneByOne on a loaded machine: it took an
// event of a bucket it had handed over at start-up). A stale plan never
// accepts what replan's would refuse: its targets are those the accepted
// event is queued to.
func (r *Replicator) primaryPlan(b uint32, acting bool) (plan, uint64) {
	gen := r.cfg.View.Generation()
	at := r.assign.Load()
	p := at.plan(b)
	if at.gen == gen && at.acting == acting {
		return p, gen
	}
	r.kick()
	if p.primary {
		a, ok := r.cfg.View.Assignment(b)
		p.primary = ok && acting && a.Primary == r.self && a.Epoch == p.epoch && !r.cfg.View.Pending(b, a.Epoch)
	}
	return p, gen
}

// mark queues (bucket, key) on the stream of every target of the bucket.
func (r *Replicator) mark(b uint32, key fsm.Key) {
	p := r.planOf(b)
	if len(p.targets) == 0 {
		return
	}
	seq := r.marks.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range p.targets {
		if s := r.senders[t]; s != nil {
			s.enqueue(b, key, seq)
		}
	}
}

// poison records that the watermarks overstate what the backups hold.
func (r *Replicator) poison(why string) {
	r.poisoned.Add(1)
	r.cfg.Logger.Debug("replication confirmations cut short", "why", why)
}

// closeSender closes a stream that is no longer needed; r.mu is held and
// the new plans are stored. Records it had not got acknowledged leave the
// watermark with it: harmless for buckets this member still acts for (it
// holds them, and their new backups get full syncs), not for the others.
func (r *Replicator) closeSender(s *sender) {
	for b := range s.outstanding() {
		if !r.planOf(b).primary {
			r.poison("stream to " + s.target + " closed with records outstanding")
			break
		}
	}
	s.close()
}

// watermark is the highest mark sequence up to which every queued change has
// been acknowledged by every local backup, and by the remote backups too if
// withRemote.
func (r *Replicator) watermark(withRemote bool) uint64 {
	w := r.marks.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.senders {
		if withRemote || !s.remote {
			w = min(w, s.watermark())
		}
	}
	return w
}

// releaseDue sends the held-back connections whose delay has passed.
func (r *Replicator) releaseDue(now time.Time) {
	for _, d := range r.delayer.due(now) {
		if r.table.Release(d.bucket, d.key) {
			r.mark(d.bucket, d.key)
		}
	}
}

// purge removes tombstones old enough that no full sync can still carry an
// older state (a full sync sends a snapshot taken after it started).
func (r *Replicator) purge(now time.Time) {
	r.mu.Lock()
	busy := map[uint32]bool{}
	for _, s := range r.senders {
		for _, b := range s.syncing() {
			busy[b] = true
		}
	}
	r.mu.Unlock()
	cutoff := now.Add(-30 * time.Second).UnixNano()
	for b := uint32(0); b < r.table.Buckets(); b++ {
		if !busy[b] {
			r.table.Purge(b, cutoff)
		}
	}
}

// noteMarker records that bucket b's full sync at epoch arrived.
func (r *Replicator) noteMarker(b uint32, epoch uint64) {
	r.markMu.Lock()
	defer r.markMu.Unlock()
	if epoch > r.markers[b] {
		r.markers[b] = epoch
		close(r.markCh)
		r.markCh = make(chan struct{})
	}
}

// ErrSuperseded: the assignment a full sync was waited for has moved on.
var ErrSuperseded = errors.New("repl: the bucket's assignment moved on before its full sync arrived")

// Sync implements the server's BackupSyncer: it returns once the primary's
// full sync of bucket b, as of epoch a.Epoch or later, has been applied here;
// ErrSuperseded if the bucket's epoch moves past a.Epoch meanwhile.
func (r *Replicator) Sync(ctx context.Context, b uint32, a fsm.Assignment) error {
	for {
		r.markMu.Lock()
		got, ch := r.markers[b], r.markCh
		r.markMu.Unlock()
		if got >= a.Epoch {
			return nil
		}
		if cur := r.assign.Load().bucket(b); cur != nil && cur.Epoch > a.Epoch {
			return ErrSuperseded
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(100 * time.Millisecond): // the assignment may have moved on
		}
	}
}

// waiting returns the buckets this member is to get a full sync of (as
// NeedsSync says) and has not had its marker for yet.
func (r *Replicator) waiting() map[uint32]uint64 {
	as := r.assign.Load().as
	standby := r.cfg.View.Standby()
	r.markMu.Lock()
	defer r.markMu.Unlock()
	out := map[uint32]uint64{}
	for i, a := range as {
		if NeedsSync(a, r.self, standby) && r.markers[uint32(i)] < a.Epoch {
			out[uint32(i)] = a.Epoch
		}
	}
	return out
}

// NeedsSync reports whether member must run a full sync of the bucket a: as
// its local backup or incoming member, or, on a standby site (where nothing
// is synced within the site), as the primary that holds the active site's
// remote backup of it.
func NeedsSync(a fsm.Assignment, member string, standby bool) bool {
	if standby {
		return a.Primary == member && !a.RemoteCopySynced
	}
	return (a.LocalBackup == member && !a.BackupSynced) || (a.Incoming == member && !a.IncomingSynced)
}

// HoldsCopy reports whether member receives a full sync of bucket a in one of
// the roles of NeedsSync.
func HoldsCopy(a fsm.Assignment, member string, standby bool) bool {
	if standby {
		return a.Primary == member
	}
	return a.LocalBackup == member || a.Incoming == member
}
