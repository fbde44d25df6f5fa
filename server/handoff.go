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
// every other alive member, and every member that was alive when this
// member saw the takeover (one drained and removed at once may still act,
// cut off, under its lease), has applied index e (asked with GetActive; a
// member that has applied e knows it is not the bucket's primary at an
// older epoch), a few milliseconds when they are reachable, or until
// MemberLease + MemberLease/4 + HeartbeatInterval after this member saw the
// flip: a lease granted before the flip was committed has run out by then (a
// deposed leader grants for up to MemberLease/4 after its last confirmed
// leadership), and a grant made after the commit carries the leader's commit
// index, so it holds only once its holder has applied the flip
// (leaseKeeper.acting). (Grants once carried the leader's applied index,
// which a follower's can pass: this member may apply the flip before the
// leader does.) A failed member no longer acts (a member is failed only once
// its lease has lapsed or its process is gone).
//
// The gate does not wait for the previous primary alone: that one having
// applied e shows only that it does not act, not that the primaries before
// it have stopped. A previous primary whose own gate was unfinished when
// the bucket left it (it never acted) may have taken the bucket from a
// member that still acts, cut off under a lease granted before that flip
// (chaos seed 9255: m1 cut off; m1 -> m0 at 520, a move whose full sync had
// finished before the cut, so it needed nothing more from m1; m0 -> m3 at
// 529; m3 asked only m0, which had applied 529, and acted 54 ms beside
// m1). The state machine names one previous primary, not the chain, so
// every other alive member must have applied e; the deadline covers every
// earlier primary, since each lost the bucket by an entry committed before
// e.
//
// "Became primary" is the state machine's (Assignment.Since, set by the
// log), never this member's last view: a member that was cut off applies
// many entries at once, and the bucket it was primary of in its last view
// may have gone to another member and come back meanwhile (chaos seed 7176:
// a member back from a partition took a bucket over without a gate because
// its view from before the partition named itself, and acted beside the
// primary it took it from).
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
	deadline time.Time
	// ask is the other members alive when the takeover was seen: each must
	// have applied epoch (or the deadline pass), also once it has left the
	// site meanwhile (drained and removed at once, it may still act under
	// its lease, cut off).
	ask []string
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
	if applied <= h.processed && h.prev != nil {
		return
	}
	self := h.s.cfg.MemberID
	// A lease the previous primary holds was granted by at most freshLimit
	// after its leader last confirmed its leadership, which was before the
	// leader that committed the flip was elected.
	deadline := time.Now().Add(h.s.cfg.MemberLease + h.s.cfg.freshLimit() + h.s.cfg.HeartbeatInterval)
	var ask []string // the alive others, read once if a gate is set
	newGate := func(a fsm.Assignment) handoffGate {
		if ask == nil {
			ask = h.aliveOthers()
		}
		return handoffGate{epoch: a.Epoch, since: a.Since, deadline: deadline, ask: ask}
	}
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
		default: // a takeover, or another one while pending
			h.gates[b] = newGate(a)
		}
	}
	h.prev, h.processed = as, applied
}

// aliveOthers returns the IDs of the site's other alive (or draining)
// members.
func (h *handoff) aliveOthers() []string {
	out := []string{}
	for _, m := range h.s.fsm.Members() {
		if m.ID != h.s.cfg.MemberID && active(m.State) {
			out = append(out, m.ID)
		}
	}
	return out
}

// release ends the gates whose epoch every other alive member, and every
// member alive when the gate was set, has applied, and those whose deadline
// has passed. It reports whether any ended.
func (h *handoff) release(ctx context.Context) bool {
	alive := h.aliveOthers()
	h.mu.Lock()
	if len(h.gates) == 0 {
		h.mu.Unlock()
		return false
	}
	ids := map[string]bool{}
	for _, id := range alive {
		ids[id] = true
	}
	for _, g := range h.gates {
		for _, id := range g.ask {
			ids[id] = true
		}
	}
	h.mu.Unlock()
	// Ask them all at once: one that cannot be reached costs its timeout
	// once, not once per member behind it.
	var (
		mu      sync.Mutex
		applied = map[string]uint64{}
		wg      sync.WaitGroup
	)
	for id := range ids {
		m, _ := h.s.fsm.Member(id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := h.appliedOf(ctx, m.GRPCAddr)
			mu.Lock()
			applied[id] = a
			mu.Unlock()
		}()
	}
	wg.Wait()
	least := func(ids []string, bound uint64) uint64 {
		for _, id := range ids {
			bound = min(bound, applied[id])
		}
		return bound
	}
	reachedAlive := least(alive, ^uint64(0))
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	released := false
	for b, g := range h.gates {
		if g.epoch <= least(g.ask, reachedAlive) || now.After(g.deadline) {
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
