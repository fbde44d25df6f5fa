package server

import (
	"testing"
	"time"

	"github.com/connsync/connsync/fsm"
)

// The gate's previous primary comes from the state machine, not from this
// member's last view: a member that applies many entries at once (back from
// a partition) may have lost a bucket and got it back in between (chaos
// seed 7176).
func TestHandoff_GatesOnTheLogsPreviousPrimary(t *testing.T) {
	s := &Server{cfg: Config{MemberID: "m0", MemberLease: 500 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond}, fsm: fsm.New()}
	h := newHandoff(s)
	gate := func(as []fsm.Assignment, applied uint64) (handoffGate, bool) {
		h.updateLocked(as, applied)
		g, ok := h.gates[0]
		return g, ok
	}
	// First view: primary since 5, taken from m1.
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m1", Since: 5, Epoch: 5}}, 10); !ok || g.from != "m1" || g.epoch != 5 {
		t.Fatalf("first view: gate %+v (%v), want one from m1 at epoch 5", g, ok)
	}
	delete(h.gates, 0) // m1 applied it
	if _, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m1", Since: 5, Epoch: 8}}, 20); ok {
		t.Fatal("still primary since 5 (a backup changed): no new gate")
	}
	// The next view this member sees is 30 entries later: meanwhile the
	// bucket went to m2 and came back. Its last view named m0 as primary,
	// but m2 may be acting.
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m2", Since: 40, Epoch: 40}}, 50); !ok || g.from != "m2" || g.epoch != 40 {
		t.Fatalf("regained at 40 from m2: gate %+v (%v), want one from m2 at epoch 40", g, ok)
	}
	// Still pending, it is taken away and given back again (from m3): the
	// gate now waits for m3, with a new deadline.
	first := h.gates[0].deadline
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m3", Since: 60, Epoch: 60}}, 70); !ok || g.from != "m3" || g.epoch != 60 || g.deadline.Before(first) {
		t.Fatalf("retaken at 60 while pending: gate %+v (%v), want one from m3 at epoch 60", g, ok)
	}
	// Only a backup changed while pending: same gate, newer epoch.
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m3", Since: 60, Epoch: 65}}, 75); !ok || g.from != "m3" || g.epoch != 65 {
		t.Fatalf("backup changed while pending: gate %+v (%v), want one from m3 at epoch 65", g, ok)
	}
	// Not known (state from before Previous was recorded): every other member.
	h = newHandoff(s)
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Epoch: 7}}, 7); !ok || g.from != "" {
		t.Fatalf("unknown previous primary: gate %+v (%v), want one from every other member", g, ok)
	}
}

// Taken over from a failed member: it no longer acts, but the member it
// took the bucket from may (its gate unfinished when it failed), so every
// other alive member must have applied the flip.
func TestHandoff_FromAFailedMemberWaitsForEveryOther(t *testing.T) {
	s := &Server{cfg: Config{MemberID: "m0", MemberLease: 500 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond}, fsm: fsm.New()}
	h := newHandoff(s)
	failed := map[string]bool{"m2": true}
	h.updateLockedWith([]fsm.Assignment{{Primary: "m0", Previous: "m2", Since: 9, Epoch: 9}}, 9, failed)
	if g, ok := h.gates[0]; !ok || g.from != "" {
		t.Fatalf("taken over from failed m2: gate %+v (%v), want one from every other alive member", g, ok)
	}
	if d := time.Until(h.gates[0].deadline); d < 600*time.Millisecond {
		t.Fatalf("deadline in %v, want at least MemberLease + MemberLease/4 + HeartbeatInterval (675ms)", d)
	}
}
