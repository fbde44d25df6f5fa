package server

import (
	"context"
	"sync"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// handoff keeps this member from acting as primary of a bucket it takes over
// while another member may still act for it (S1). A planned move flips the
// primary role in one Raft entry (the bucket's new epoch is that entry's
// index), but each member applies it in its own time: without a gate the new
// primary could act before the old one has applied the flip, or, if the old
// one is cut off, before its lease runs out.
//
// So a bucket this member becomes primary of at epoch e is pending until
// the previous primary has applied index e (asked with GetActive; a member
// that has applied e knows it is not the bucket's primary at an older
// epoch), or until MemberLease + MemberLease/4 + HeartbeatInterval after
// this member saw the flip: a lease the old primary was granted before the
// flip was committed has run out by then (a deposed leader grants for up to
// MemberLease/4 after its last confirmed leadership), and a grant made after
// the commit carries the leader's commit index, so it holds only once the
// old primary has applied the flip (leaseKeeper.acting). (Grants once
// carried the leader's applied index, which a follower's can pass: this
// member may apply the flip before the leader does.) When
// the previous primary has failed it no longer acts (a member is failed only
// once its lease has lapsed or its process is gone), but it may have taken
// the bucket over from a member that still does, its own gate unfinished
// (cut off, then the taker crashed): the gate then waits until every other
// alive member has applied e, a few milliseconds when they are reachable,
// which keeps local failover fast.
//
// "Previous primary" and "became primary" are the state machine's
// (Assignment.Previous and Since, set by the log), never this member's last
// view: a member that was cut off applies many entries at once, and the
// bucket it was primary of in its last view may have gone to another member
// and come back meanwhile (chaos seed 7176: a member back from a partition
// took a bucket over without a gate because its view from before the
// partition named itself, and acted beside the primary it took it from).
// Where the state machine does not know (state written before it recorded
// them), every other alive member must have applied e.
//
// Asked about a bucket whose epoch is newer than the last view it
// processed, handoff processes the current view first, so there is no window
// between the state machine applying a flip and the gate being set.
type handoff struct {
	s *Server

	mu        sync.Mutex
	processed uint64                 // applied index of the last view looked at (0: none yet)
	prev      []fsm.Assignment       // that view
	gates     map[uint32]handoffGate // pending buckets
}

type handoffGate struct {
	epoch    uint64
	since    uint64 // the takeover's index (Assignment.Since)
	from     string // the previous primary ("": every other alive member)
	deadline time.Time
}

func newHandoff(s *Server) *handoff { return &handoff{s: s, gates: map[uint32]handoffGate{}} }

// pending reports whether this member must not act yet as primary of bucket
// b at epoch. A view newer than the last one processed is processed first,
// so a caller never sees a flip the gates have not been set for.
func (h *handoff) pending(b uint32, epoch uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if epoch > h.processed {
		h.updateLocked(h.s.fsm.Buckets())
	}
	// A gate moved on to a newer epoch still holds for a caller reading an
	// older view.
	_, ok := h.gates[b]
	return ok
}

// update processes the state machine's current view.
func (h *handoff) update() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.updateLocked(h.s.fsm.Buckets())
}

// updateLocked sets the gates for a view of the bucket map; h.mu is held.
func (h *handoff) updateLocked(as []fsm.Assignment, applied uint64) {
	failed := map[string]bool{}
	for _, m := range h.s.fsm.Members() {
		failed[m.ID] = m.State == pb.MemberState_MEMBER_STATE_FAILED
	}
	h.updateLockedWith(as, applied, failed)
}

// updateLockedWith is updateLocked with the failed members given.
func (h *handoff) updateLockedWith(as []fsm.Assignment, applied uint64, failed map[string]bool) {
	if applied <= h.processed && h.prev != nil {
		return
	}
	self := h.s.cfg.MemberID
	// A lease the previous primary holds was granted by at most freshLimit
	// after its leader last confirmed its leadership, which was before the
	// leader that committed the flip was elected.
	deadline := time.Now().Add(h.s.cfg.MemberLease + h.s.cfg.freshLimit() + h.s.cfg.HeartbeatInterval)
	for i, a := range as {
		b := uint32(i)
		g, gated := h.gates[b]
		switch {
		case a.Primary != self:
			delete(h.gates, b)
		case gated && g.since == a.Since: // another role changed while pending: still pending, at the new epoch
			g.epoch = a.Epoch
			h.gates[b] = g
		case !gated && h.prev != nil && i < len(h.prev) && h.prev[i].Primary == self && h.prev[i].Since == a.Since:
			// primary since before the last view: nothing new
		default:
			// A takeover, or another one while pending. A failed previous
			// primary has stopped acting, but it may have taken the bucket
			// over from a member that still acts (its own gate unfinished):
			// then, as when the previous primary is not known, every other
			// alive member must have applied the flip.
			from := a.Previous
			if failed[from] {
				from = ""
			}
			h.gates[b] = handoffGate{epoch: a.Epoch, since: a.Since, from: from, deadline: deadline}
		}
	}
	h.prev, h.processed = as, applied
}

// release ends the gates whose previous primary (or, not known, every other
// alive member) has applied past the gate's epoch, and those whose deadline
// has passed. It reports whether any ended.
func (h *handoff) release(ctx context.Context) bool {
	h.mu.Lock()
	need := map[string]bool{}
	for _, g := range h.gates {
		need[g.from] = true
	}
	h.mu.Unlock()
	if len(need) == 0 {
		return false
	}
	// Ask the members concerned at once: one that cannot be reached costs
	// its timeout once, not once per member behind it.
	var ask []fsm.Member
	var isAlive []bool
	for _, m := range h.s.fsm.Members() {
		if m.ID == h.s.cfg.MemberID {
			continue
		}
		alive := m.State == pb.MemberState_MEMBER_STATE_ALIVE || m.State == pb.MemberState_MEMBER_STATE_DRAINING
		if need[m.ID] || need[""] && alive {
			ask, isAlive = append(ask, m), append(isAlive, alive)
		}
	}
	got := make([]uint64, len(ask))
	var wg sync.WaitGroup
	for i, m := range ask {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = h.appliedOf(ctx, m.GRPCAddr) }()
	}
	wg.Wait()
	applied := map[string]uint64{} // member -> its applied index (0: not known)
	unknown := ^uint64(0)          // the least applied index of the alive others
	for i, m := range ask {
		applied[m.ID] = got[i]
		if isAlive[i] && need[""] {
			unknown = min(unknown, got[i])
		}
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	released := false
	for b, g := range h.gates {
		reached := applied[g.from]
		if g.from == "" {
			reached = unknown
		}
		if g.epoch <= reached || now.After(g.deadline) {
			delete(h.gates, b)
			released = true
		}
	}
	return released
}

// appliedOf asks a member how far its state machine has applied (0 if it
// cannot be asked).
func (h *handoff) appliedOf(ctx context.Context, addr string) uint64 {
	if addr == "" {
		return 0
	}
	cc, err := h.s.peers.get(addr)
	if err != nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	r, err := pb.NewAssignmentServiceClient(cc).GetActive(ctx, &pb.GetActiveRequest{})
	if err != nil {
		return 0
	}
	return r.AppliedIndex
}

// run follows the bucket map until shutdown, and while buckets are pending
// asks the other members every few milliseconds; when gates end it wakes
// the state machine's watchers (the replicator and activation streams read
// pending through replView).
func (h *handoff) run() {
	s := h.s
	defer s.wg.Done()
	_, changed := s.fsm.Watch()
	for {
		h.update()
		if h.release(s.ctx) {
			s.fsm.Wake()
		}
		h.mu.Lock()
		waiting := len(h.gates) > 0
		h.mu.Unlock()
		var retry <-chan time.Time
		if waiting {
			retry = time.After(5 * time.Millisecond)
		}
		select {
		case <-s.stop:
			return
		case <-changed:
			_, changed = s.fsm.Watch()
		case <-retry:
		}
	}
}
