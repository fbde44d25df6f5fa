package server

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// The gate's takeover comes from the state machine (Since), not from this
// member's last view: a member that applies many entries at once (back from
// a partition) may have lost a bucket and got it back in between (chaos
// seed 7176).
func TestHandoff_GatesOnTheLogsTakeover(t *testing.T) {
	s := &Server{cfg: Config{MemberID: "m0", MemberLease: 500 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond}, fsm: fsm.New()}
	h := newHandoff(s)
	gate := func(as []fsm.Assignment, applied uint64) (handoffGate, bool) {
		h.updateLocked(as, applied)
		g, ok := h.gates[0]
		return g, ok
	}
	// First view: primary since 5, taken from m1.
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m1", Since: 5, Epoch: 5}}, 10); !ok || g.epoch != 5 {
		t.Fatalf("first view: gate %+v (%v), want one at epoch 5", g, ok)
	}
	delete(h.gates, 0) // the others applied it
	if _, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m1", Since: 5, Epoch: 8}}, 20); ok {
		t.Fatal("still primary since 5 (a backup changed): no new gate")
	}
	// The next view this member sees is 30 entries later: meanwhile the
	// bucket went to m2 and came back. Its last view named m0 as primary,
	// but m2 may be acting.
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m2", Since: 40, Epoch: 40}}, 50); !ok || g.epoch != 40 {
		t.Fatalf("regained at 40 from m2: gate %+v (%v), want one at epoch 40", g, ok)
	}
	// Still pending, it is taken away and given back again: a new gate,
	// with a new deadline.
	first := h.gates[0].deadline
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m3", Since: 60, Epoch: 60}}, 70); !ok || g.since != 60 || g.epoch != 60 || g.deadline.Before(first) {
		t.Fatalf("retaken at 60 while pending: gate %+v (%v), want one at epoch 60", g, ok)
	}
	// Only a backup changed while pending: same gate, newer epoch.
	if g, ok := gate([]fsm.Assignment{{Primary: "m0", Previous: "m3", Since: 60, Epoch: 65}}, 75); !ok || g.since != 60 || g.epoch != 65 {
		t.Fatalf("backup changed while pending: gate %+v (%v), want the one since 60 at epoch 65", g, ok)
	}
	if d := time.Until(h.gates[0].deadline); d < 600*time.Millisecond {
		t.Fatalf("deadline in %v, want at least MemberLease + MemberLease/4 + HeartbeatInterval (675ms)", d)
	}
}

// fakeActive answers GetActive with a settable applied index.
type fakeActive struct {
	pb.UnimplementedAssignmentServiceServer
	applied atomic.Uint64
}

func (f *fakeActive) GetActive(context.Context, *pb.GetActiveRequest) (*pb.GetActiveResponse, error) {
	return &pb.GetActiveResponse{AppliedIndex: f.applied.Load()}, nil
}

func serveFakeActive(t *testing.T) (*fakeActive, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeActive{}
	g := grpc.NewServer()
	pb.RegisterAssignmentServiceServer(g, f)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return f, ln.Addr().String()
}

// handoffFSM returns a state machine of a one-bucket site with members
// (ID, gRPC address) registered at entries 2, 3, ..., and a function that
// applies one op as the entry at an index.
func handoffFSM(t *testing.T, members [][2]string) (*fsm.FSM, func(index uint64, op *ipb.Op)) {
	t.Helper()
	f := fsm.New()
	apply := func(index uint64, op *ipb.Op) {
		t.Helper()
		r := f.ApplyEntry(index, &ipb.Entry{TimeUnixNano: time.Now().UnixNano(), Proposals: []*ipb.Proposal{{Ops: []*ipb.Op{op}}}})
		if err := r[0][0].Err; err != nil {
			t.Fatalf("entry %d: %v", index, err)
		}
	}
	apply(1, &ipb.Op{Op: &ipb.Op_InitSite{InitSite: &ipb.InitSiteOp{Site: "s", BucketCount: 1}}})
	for i, m := range members {
		apply(uint64(2+i), &ipb.Op{Op: &ipb.Op_RegisterMember{RegisterMember: &ipb.RegisterMemberOp{
			Member: &pb.Member{Id: m[0], Site: "s", GrpcAddr: m[1]}}}})
	}
	return f, apply
}

// gateOn returns member self's handoff gates over f, set from f's view
// (lease 500 ms, heartbeat 50 ms; the other members asked over TCP).
func gateOn(f *fsm.FSM, self string) *handoff {
	s := &Server{cfg: Config{MemberID: self, MemberLease: 500 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond},
		fsm: f, peers: newPeerConns(TCPNetwork{})}
	h := newHandoff(s)
	h.update()
	return h
}

// A chain of takeovers with the first primary cut off (chaos seed 9255): m1
// acts under a lease granted before it was cut off; m1 -> m0 at 520 (a move
// that needs nothing more from m1: its sync to m0 had finished, or m0 was its
// synced backup), m0's gate waits for m1; then m0 -> m3 at 529. m0 has
// applied 529 and never acted, but m1 still acts: m3 must not act until m1
// has applied 529 too (or its lease has surely run out). It used to wait for
// m0 alone, the log's previous primary.
func TestHandoff_ChainedTakeoverWaitsForEveryAliveMember(t *testing.T) {
	m0, addr0 := serveFakeActive(t)
	m1, addr1 := serveFakeActive(t)
	f, apply := handoffFSM(t, [][2]string{{"m0", addr0}, {"m1", addr1}, {"m3", "127.0.0.1:1"}})
	move := func(index, prevRev uint64, primary, backup string) {
		apply(index, &ipb.Op{Op: &ipb.Op_Reassign{Reassign: &ipb.ReassignOp{Buckets: []*ipb.BucketChange{
			{Bucket: 0, PrevRevision: prevRev, Primary: primary, LocalBackup: backup, BackupSynced: true}}}}})
	}
	move(463, 0, "m1", "m0")
	move(520, 463, "m0", "m1")
	move(529, 520, "m3", "m1")
	if a, _ := f.Assignment(0); a.Primary != "m3" || a.Previous != "m0" || a.Since != 529 {
		t.Fatalf("bucket 0: %+v, want m3 primary since 529, taken from m0", a)
	}

	h := gateOn(f, "m3")
	m0.applied.Store(529) // the previous primary has applied the flip
	m1.applied.Store(512) // the one before it is cut off, still acting
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if h.release(ctx) || !h.pending(0, 529) {
		t.Fatal("m3 may act while m1, primary before m0 and cut off with its lease, has not applied 529")
	}
	m1.applied.Store(529)
	if !h.release(ctx) || h.pending(0, 529) {
		t.Fatal("still pending after every other alive member applied 529")
	}
}

// A member drained and removed (LEFT) while a takeover of one of its
// buckets is pending, cut off and acting under its lease, is still waited
// for: the gate asks the members alive when it was set. It used to ask only
// the members alive now.
func TestHandoff_RemovedMemberStillWaitedFor(t *testing.T) {
	m1, addr1 := serveFakeActive(t)
	f, apply := handoffFSM(t, [][2]string{{"m0", "127.0.0.1:1"}, {"m1", addr1}})
	apply(10, &ipb.Op{Op: &ipb.Op_Reassign{Reassign: &ipb.ReassignOp{Buckets: []*ipb.BucketChange{
		{Bucket: 0, Primary: "m1", LocalBackup: "m0", BackupSynced: true}}}}})
	apply(20, &ipb.Op{Op: &ipb.Op_Reassign{Reassign: &ipb.ReassignOp{Buckets: []*ipb.BucketChange{
		{Bucket: 0, PrevRevision: 10, Primary: "m0"}}}}}) // m1 drained

	h := gateOn(f, "m0")
	apply(21, setMemberStateOp("m1", pb.MemberState_MEMBER_STATE_LEFT)) // and removed at once
	h.update()
	m1.applied.Store(15) // cut off before the drain, acting
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if h.release(ctx) || !h.pending(0, 20) {
		t.Fatal("m0 may act while m1, removed but cut off under its lease, has not applied 20")
	}
	m1.applied.Store(21)
	if !h.release(ctx) || h.pending(0, 20) {
		t.Fatal("still pending after m1 applied 20")
	}
}
