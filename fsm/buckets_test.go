package fsm

import (
	"bytes"
	"io"
	"testing"
	"time"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

func reassignOp(members []*ipb.SetMemberStateOp, buckets ...*ipb.BucketChange) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_Reassign{Reassign: &ipb.ReassignOp{Members: members, Buckets: buckets, Reason: "test"}}}
}

func markSyncedOp(member string, be ...*pb.BucketEpoch) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_MarkSynced{MarkSynced: &ipb.MarkSyncedOp{MemberId: member, Buckets: be}}}
}

func failed(id string) []*ipb.SetMemberStateOp {
	return []*ipb.SetMemberStateOp{{MemberId: id, State: pb.MemberState_MEMBER_STATE_FAILED}}
}

func TestFSM_ReassignEpochsAndRevisions(t *testing.T) {
	f, idx := newSite(t, "m1", "m2", "m3")
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil,
		&ipb.BucketChange{Bucket: 1, Primary: "m1", LocalBackup: "m2", BackupSynced: true},
		&ipb.BucketChange{Bucket: 2, Primary: "m2", LocalBackup: "m3"})))
	first := idx
	idx++
	want := Assignment{Primary: "m1", LocalBackup: "m2", BackupSynced: true, Epoch: first, Revision: first, Since: first}
	if a, _ := f.Assignment(1); a != want {
		t.Fatalf("bucket 1 = %+v, want %+v", a, want)
	}
	// Only the sync flag changes: the revision moves, the epoch does not
	// (no role changed hands).
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil,
		&ipb.BucketChange{Bucket: 2, PrevRevision: first, Primary: "m2", LocalBackup: "m3", BackupSynced: true})))
	if a, _ := f.Assignment(2); a.Epoch != first || a.Revision != idx || !a.BackupSynced {
		t.Fatalf("bucket 2 = %+v, want epoch %d revision %d synced", a, first, idx)
	}
	idx++
	// Previous and Since follow the primary as the log moves it: a backup
	// change keeps them, a new primary records the one before.
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil,
		&ipb.BucketChange{Bucket: 2, PrevRevision: idx - 1, Primary: "m3", LocalBackup: "m1"})))
	moved := idx
	idx++
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil,
		&ipb.BucketChange{Bucket: 2, PrevRevision: moved, Primary: "m3", LocalBackup: "m2"})))
	if a, _ := f.Assignment(2); a.Previous != "m2" || a.Since != moved || a.Epoch != idx {
		t.Fatalf("bucket 2 = %+v, want previous m2 since %d epoch %d", a, moved, idx)
	}
	idx++
	// A plan from an old epoch is refused whole.
	build := func() *FSM {
		g, i := newSite(t, "m1", "m2", "m3")
		expectOK(t, apply1(t, g, i, t0, reassignOp(nil,
			&ipb.BucketChange{Bucket: 1, Primary: "m1", LocalBackup: "m2", BackupSynced: true},
			&ipb.BucketChange{Bucket: 2, Primary: "m2", LocalBackup: "m3"})))
		return g
	}
	stale := reassignOp(failed("m1"),
		&ipb.BucketChange{Bucket: 2, PrevRevision: first, Primary: "m3"},
		&ipb.BucketChange{Bucket: 1, PrevRevision: first - 1, Primary: "m2"})
	expectUnchanged(t, build, first+1, t0, stale, ErrAssignmentChanged)
}

func TestFSM_ReassignRefusesBadChanges(t *testing.T) {
	build := func() *FSM {
		f, idx := newSite(t, "m1", "m2", "m3")
		expectOK(t, apply1(t, f, idx, t0, setStateOp("m3", pb.MemberState_MEMBER_STATE_LEFT)))
		return f
	}
	const idx = 6
	cases := []struct {
		name string
		op   *ipb.Op
		want *Error
	}{
		{"bucket out of range", reassignOp(nil, &ipb.BucketChange{Bucket: DefaultBucketCount, Primary: "m1"}), ErrInvalid},
		{"bucket twice", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m1"},
			&ipb.BucketChange{Bucket: 3, Primary: "m2"}), ErrInvalid},
		{"own backup", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m1", LocalBackup: "m1"}), ErrInvalid},
		{"incoming flags without incoming", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m1", IncomingPrimary: true}), ErrInvalid},
		{"incoming is the primary", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m1", Incoming: "m1"}), ErrInvalid},
		{"incoming is the backup", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m1", LocalBackup: "m2", Incoming: "m2"}), ErrInvalid},
		{"incoming has left", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m1", Incoming: "m3"}), ErrMemberNotAlive},
		{"unknown member", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "ghost"}), ErrUnknownMember},
		{"left member", reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m3"}), ErrMemberNotAlive},
		{"member failed in the same op", reassignOp(failed("m2"),
			&ipb.BucketChange{Bucket: 3, Primary: "m1", LocalBackup: "m2"}), ErrMemberNotAlive},
		{"unknown member state change", reassignOp(failed("ghost")), ErrUnknownMember},
		{"invalid state", reassignOp([]*ipb.SetMemberStateOp{{MemberId: "m1"}}), ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { expectUnchanged(t, build, idx, t0, c.op, c.want) })
	}
}

// A failover entry: the member is failed, its buckets change hands and its
// locks are released in the same step, tokens still growing.
func TestFSM_ReassignFailoverReleasesLocks(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	r := apply1(t, f, idx, t0, acquireOp(k, "m1", time.Minute))
	expectOK(t, r)
	token := r.Epoch
	idx++
	claimed := tcpKey(t, 2000)
	expectOK(t, apply1(t, f, idx, t0, claimOp(claimed, "m1")))
	idx++
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil, &ipb.BucketChange{Bucket: 5, Primary: "m1", LocalBackup: "m2"})))
	prev := idx
	idx++
	expectOK(t, apply1(t, f, idx, t0, reassignOp(failed("m1"),
		&ipb.BucketChange{Bucket: 5, PrevRevision: prev, Primary: "m2"})))
	if m, _ := f.Member("m1"); m.State != pb.MemberState_MEMBER_STATE_FAILED {
		t.Fatalf("m1 is %s", m.State)
	}
	if _, ok := f.GetLock(k); ok {
		t.Fatal("a failed member's lock survived its failover")
	}
	// A claim of the failed member no longer decides the owner.
	o := f.Lookup(claimed)[0]
	if !o.Claimed || !o.ClaimOrphaned || o.Owner() != o.Assignment.Primary {
		t.Fatalf("lookup of a failed member's claim: %+v, owner %q", o, o.Owner())
	}
	idx++
	r = apply1(t, f, idx, t0, acquireOp(k, "m2", time.Minute))
	expectOK(t, r)
	if r.Epoch <= token {
		t.Fatalf("new token %d not above the failed holder's %d", r.Epoch, token)
	}
}

func TestFSM_MarkSynced(t *testing.T) {
	f, idx := newSite(t, "m1", "m2", "m3", "m4")
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil,
		&ipb.BucketChange{Bucket: 1, Primary: "m1", LocalBackup: "m2", Incoming: "m4", IncomingPrimary: true},
		&ipb.BucketChange{Bucket: 2, Primary: "m1", LocalBackup: "m3"})))
	ep := idx
	idx++
	r := apply1(t, f, idx, t0, markSyncedOp("m2",
		&pb.BucketEpoch{Bucket: 1, Epoch: ep},      // recorded
		&pb.BucketEpoch{Bucket: 2, Epoch: ep},      // m2 is not its backup: skipped
		&pb.BucketEpoch{Bucket: 1, Epoch: ep},      // already recorded: skipped
		&pb.BucketEpoch{Bucket: 1 << 30, Epoch: 1}, // out of range: skipped
	))
	expectOK(t, r)
	if r.Epoch != 1 {
		t.Fatalf("%d buckets recorded, want 1", r.Epoch)
	}
	a, _ := f.Assignment(1)
	if !a.BackupSynced || a.IncomingSynced || a.Epoch != ep || a.Revision != idx {
		t.Fatalf("bucket 1 = %+v", a)
	}
	idx++
	// The incoming member reports too.
	if r := apply1(t, f, idx, t0, markSyncedOp("m4", &pb.BucketEpoch{Bucket: 1, Epoch: ep})); r.Epoch != 1 {
		t.Fatalf("incoming member's report: %+v", r)
	}
	if a, _ := f.Assignment(1); !a.IncomingSynced || a.Incoming != "m4" || !a.IncomingPrimary {
		t.Fatalf("bucket 1 after the incoming member synced = %+v", a)
	}
	idx++
	// A stale epoch is skipped.
	r = apply1(t, f, idx, t0, markSyncedOp("m3", &pb.BucketEpoch{Bucket: 2, Epoch: ep - 1}))
	if expectOK(t, r); r.Epoch != 0 {
		t.Fatalf("stale report recorded")
	}
	idx++
	expectErr(t, apply1(t, f, idx, t0, markSyncedOp("ghost", &pb.BucketEpoch{Bucket: 2, Epoch: ep})), ErrUnknownMember)
}

// The new assignment fields survive snapshot and restore.
func TestFSM_SnapshotKeepsAssignmentFlags(t *testing.T) {
	f, idx := newSite(t, "m1", "m2", "m3")
	expectOK(t, apply1(t, f, idx, t0, reassignOp(
		[]*ipb.SetMemberStateOp{{MemberId: "m2", State: pb.MemberState_MEMBER_STATE_DRAINING}},
		&ipb.BucketChange{Bucket: 9, Primary: "m2", LocalBackup: "m1", BackupSynced: true, Incoming: "m3",
			IncomingSynced: true, IncomingPrimary: true})))
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	sameState(t, "restored", f, g)
	a, _ := g.Assignment(9)
	if want := (Assignment{Primary: "m2", LocalBackup: "m1", BackupSynced: true, Epoch: idx, Revision: idx,
		Incoming: "m3", IncomingSynced: true, IncomingPrimary: true, Since: idx}); a != want {
		t.Fatalf("restored bucket 9 = %+v, want %+v", a, want)
	}
	if m, _ := g.Member("m2"); m.State != pb.MemberState_MEMBER_STATE_DRAINING {
		t.Fatalf("restored m2 is %s", m.State)
	}
}

func TestFSM_WatchWakesOnTopologyChanges(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	_, ch := f.Watch()
	gen := f.Generation()
	apply(t, f, idx, t0, claimOp(tcpKey(t, 1), "m1")) // not a topology change
	select {
	case <-ch:
		t.Fatal("woken by a claim")
	default:
	}
	if f.Generation() != gen {
		t.Fatal("a claim changed the generation")
	}
	idx++
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil, &ipb.BucketChange{Bucket: 3, Primary: "m1", LocalBackup: "m2"})))
	select {
	case <-ch:
	default:
		t.Fatal("not woken by a reassignment")
	}
	if f.Generation() == gen {
		t.Fatal("a reassignment left the generation as it was")
	}
	applied, ch := f.Watch()
	if applied != idx {
		t.Fatalf("Watch applied %d, want %d", applied, idx)
	}
	bs, as, _ := f.ChangedSince(idx - 1)
	if len(bs) != 1 || bs[0] != 3 || as[0].Primary != "m1" {
		t.Fatalf("ChangedSince = %v %+v", bs, as)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("not woken by a restore")
	}
}
