package server

import (
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// The member acts only while its lease holds and its state machine has
// applied as far as every grant so far asked: a grant whose index it has
// not applied yet stops it acting, even under an earlier grant that still
// runs (a grant's index may come from a leader that has committed a flip
// this member has not applied); a refusal ends the lease.
func TestLease_ActsOnceEveryGrantsIndexIsApplied(t *testing.T) {
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
	if !l.acting() || !l.valid() {
		t.Fatal("not acting under a grant whose index is applied")
	}
	beat(0, true, 5)
	if l.acting() {
		t.Fatal("acting before the state machine applied a granted index")
	}
	if !l.valid() {
		t.Fatal("lease not valid")
	}
	beat(0, false, 0)
	if l.acting() || l.valid() {
		t.Fatal("lease still valid after a refusal")
	}
	beat(600*time.Millisecond, true, 0)
	if l.acting() || l.valid() {
		t.Fatal("a grant for a beat sent longer than a lease ago holds")
	}
}
