package server

import (
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// Each granted answer is a lease of its own that holds once the state
// machine has applied as far as the answer says: a member a few entries
// behind the newest grant keeps acting under an older one it has caught up
// with, until that one ends; a refusal ends them all.
func TestLease_EachGrantHoldsOnceItsIndexIsApplied(t *testing.T) {
	s := &Server{cfg: Config{MemberID: "m0", MemberLease: 500 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond}, fsm: fsm.New()}
	l := newLeaseKeeper(s)
	beat := func(sentAgo time.Duration, granted bool, index uint64) {
		l.seq++
		l.sent[l.seq] = time.Now().Add(-sentAgo)
		l.answer(&pb.HeartbeatResponse{Seq: l.seq, Granted: granted, AppliedIndex: index, MemberState: pb.MemberState_MEMBER_STATE_ALIVE})
	}
	// The state machine has applied nothing (index 0).
	if l.acting() {
		t.Fatal("acting without any grant")
	}
	beat(0, true, 0)
	if !l.acting() {
		t.Fatal("not acting under a grant whose index is applied")
	}
	beat(0, true, 5)
	if !l.acting() {
		t.Fatal("a newer grant not yet caught up with ended the older one that holds")
	}
	if !l.valid() {
		t.Fatal("lease not valid")
	}
	beat(0, false, 0)
	if l.acting() || l.valid() {
		t.Fatal("still acting after a refusal")
	}
	// A grant that already ended, and a live one the state machine has not
	// caught up with: no acting.
	beat(600*time.Millisecond, true, 0)
	beat(0, true, 5)
	if l.acting() {
		t.Fatal("acting under an ended grant or one whose index is not applied")
	}
	if len(l.grants) != 1 {
		t.Fatalf("%d grants kept, want the live one only", len(l.grants))
	}
}
