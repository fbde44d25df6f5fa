package fsm

import (
	"testing"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

func TestFSM_ClaimUnknownMember(t *testing.T) {
	k := tcpKey(t, 1000)
	build := func() *FSM { f, _ := newSite(t, "m1"); return f }
	expectUnchanged(t, build, 10, t0, claimOp(k, "nobody"), ErrUnknownMember)
	f := build()
	expectErr(t, apply1(t, f, 10, t0, claimOp(k, "")), ErrUnknownMember)
	if o := f.Lookup(k)[0]; o.Claimed {
		t.Fatalf("claim recorded for unknown member: %+v", o)
	}
}

func TestFSM_ClaimBeforeInitSite(t *testing.T) {
	f := New()
	k := tcpKey(t, 1000)
	expectErr(t, apply1(t, f, 1, t0, registerOp("m1")), ErrSiteNotInitialised)
	expectErr(t, apply1(t, f, 2, t0, claimOp(k, "m1")), ErrUnknownMember)
	expectErr(t, apply1(t, f, 3, t0, assignOp(&ipb.BucketRecord{Bucket: 0})), ErrSiteNotInitialised)
	// Lookup on an uninitialised FSM does not panic and reports nothing.
	o := f.Lookup(k)[0]
	if o.Claimed || o.Owner() != "" || o.Bucket != 0 || o.Applied != 3 {
		t.Fatalf("Lookup = %+v", o)
	}
}

func TestFSM_InitSite(t *testing.T) {
	f, idx := newSite(t)
	expectOK(t, apply1(t, f, idx, t0, initSiteOp(testSite, DefaultBucketCount))) // repeat: no-op
	expectErr(t, apply1(t, f, idx+1, t0, initSiteOp("other", DefaultBucketCount)), ErrSiteMismatch)
	expectErr(t, apply1(t, f, idx+2, t0, initSiteOp(testSite, 1024)), ErrSiteMismatch)
	if s := f.Stats(); s.Site != testSite || s.BucketCount != DefaultBucketCount {
		t.Fatalf("Stats = %+v", s)
	}
	for _, n := range []uint32{0, 3, 4095, MaxBucketCount * 2} {
		expectErr(t, apply1(t, New(), 1, t0, initSiteOp(testSite, n)), ErrInvalid)
	}
	expectErr(t, apply1(t, New(), 1, t0, initSiteOp("-bad", 16)), ErrInvalid)
	// A member of another site is refused.
	m := &ipb.Op{Op: &ipb.Op_RegisterMember{RegisterMember: &ipb.RegisterMemberOp{Member: &pb.Member{Id: "x", Site: "other"}}}}
	expectErr(t, apply1(t, f, idx+3, t0, m), ErrSiteMismatch)
}

func TestFSM_ClaimGrantsEpoch(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	r := apply1(t, f, idx, t0, claimOp(k, "m1"))
	expectOK(t, r)
	if r.Epoch == 0 || r.MemberID != "m1" {
		t.Fatalf("claim result %+v, want epoch > 0 for m1", r)
	}
	o := f.Lookup(k)[0]
	if !o.Claimed || o.Claim != (Claim{"m1", r.Epoch}) || o.Owner() != "m1" || o.Applied != idx ||
		o.Key != k || o.Bucket != k.Bucket(DefaultBucketCount) {
		t.Fatalf("Lookup = %+v", o)
	}
	if s := f.Stats(); s.Claims != 1 {
		t.Fatalf("Stats.Claims = %d", s.Claims)
	}
	// The reverse direction of the flow is the same claim.
	rev := mustParse(t, "", 6, "10.0.0.2", 80, "10.0.0.1", 1000)
	if o := f.Lookup(rev)[0]; !o.Claimed || o.Owner() != "m1" {
		t.Fatalf("reverse Lookup = %+v", o)
	}
}

func TestFSM_ReclaimIsIdempotent(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	first := apply1(t, f, idx, t0, claimOp(k, "m1"))
	expectOK(t, first)
	again := apply1(t, f, idx+1, sec(1), claimOp(k, "m1"))
	expectOK(t, again)
	if again != first {
		t.Fatalf("re-claim = %+v, want %+v", again, first)
	}
	// The counter did not move: the next claim gets first.Epoch+1.
	next := apply1(t, f, idx+2, sec(2), claimOp(tcpKey(t, 1001), "m2"))
	if next.Epoch != first.Epoch+1 {
		t.Fatalf("next epoch %d, want %d", next.Epoch, first.Epoch+1)
	}
}

func TestFSM_ClaimConflict(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	var held Result
	build := func() *FSM {
		f, i := newSite(t, "m1", "m2")
		held = apply1(t, f, i, t0, claimOp(k, "m1"))
		expectOK(t, held)
		idx = i + 1
		return f
	}
	build()
	expectUnchanged(t, build, idx, sec(1), claimOp(k, "m2"), ErrClaimConflict)

	f := build()
	r := apply1(t, f, idx, sec(1), claimOp(k, "m2"))
	expectErr(t, r, ErrClaimConflict)
	if r.MemberID != "m1" || r.Epoch != held.Epoch {
		t.Fatalf("conflict result %+v, want holder m1 epoch %d", r, held.Epoch)
	}
	if o := f.Lookup(k)[0]; o.Owner() != "m1" || o.Claim.Epoch != held.Epoch {
		t.Fatalf("Lookup after conflict = %+v", o)
	}
}

func TestFSM_ReleaseByNonOwner(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	var held Result
	build := func() *FSM {
		f, i := newSite(t, "m1", "m2")
		held = apply1(t, f, i, t0, claimOp(k, "m1"))
		idx = i + 1
		return f
	}
	build()
	expectUnchanged(t, build, idx, t0, releaseOp(k, "m2", held.Epoch), ErrClaimConflict)
	r := apply1(t, build(), idx, t0, releaseOp(k, "m2", held.Epoch))
	if r.MemberID != "m1" || r.Epoch != held.Epoch {
		t.Fatalf("release by non-owner result %+v, want holder m1", r)
	}
}

func TestFSM_ReleaseEpochMismatch(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	var held Result
	build := func() *FSM {
		f, i := newSite(t, "m1", "m2")
		held = apply1(t, f, i, t0, claimOp(k, "m1"))
		idx = i + 1
		return f
	}
	build()
	expectUnchanged(t, build, idx, t0, releaseOp(k, "m1", held.Epoch+1), ErrEpochMismatch)
	expectUnchanged(t, build, idx, t0, releaseOp(k, "m1", held.Epoch+100), ErrEpochMismatch)

	f := build()
	r := apply1(t, f, idx, t0, releaseOp(k, "m1", held.Epoch+1))
	if r.Epoch != held.Epoch || r.MemberID != "m1" {
		t.Fatalf("mismatch result %+v, want current epoch %d", r, held.Epoch)
	}
	// The right epoch releases.
	r = apply1(t, f, idx+1, t0, releaseOp(k, "m1", held.Epoch))
	expectOK(t, r)
	if r.Epoch != held.Epoch {
		t.Fatalf("release result %+v", r)
	}
	if o := f.Lookup(k)[0]; o.Claimed {
		t.Fatalf("still claimed after release: %+v", o)
	}
	// Epoch 0 releases whatever the current epoch is.
	c := apply1(t, f, idx+2, t0, claimOp(k, "m1"))
	expectOK(t, apply1(t, f, idx+3, t0, releaseOp(k, "m1", 0)))
	if o := f.Lookup(k)[0]; o.Claimed {
		t.Fatalf("still claimed after release with epoch 0 (claim epoch %d): %+v", c.Epoch, o)
	}
}

func TestFSM_ReleaseUnclaimed(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	build := func() *FSM {
		f, i := newSite(t, "m1")
		idx = i
		return f
	}
	build()
	expectUnchanged(t, build, idx, t0, releaseOp(k, "m1", 0), ErrNotClaimed)
	expectUnchanged(t, build, idx, t0, releaseOp(k, "m1", 5), ErrNotClaimed)

	// Double release: the second is ErrNotClaimed.
	f := build()
	c := apply1(t, f, idx, t0, claimOp(k, "m1"))
	expectOK(t, apply1(t, f, idx+1, t0, releaseOp(k, "m1", c.Epoch)))
	expectErr(t, apply1(t, f, idx+2, t0, releaseOp(k, "m1", c.Epoch)), ErrNotClaimed)
}

func TestFSM_ReleaseThenClaimByOther(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	c1 := apply1(t, f, idx, t0, claimOp(k, "m1"))
	expectOK(t, apply1(t, f, idx+1, t0, releaseOp(k, "m1", c1.Epoch)))
	c2 := apply1(t, f, idx+2, t0, claimOp(k, "m2"))
	expectOK(t, c2)
	if c2.Epoch <= c1.Epoch || c2.MemberID != "m2" {
		t.Fatalf("second claim %+v, want epoch > %d for m2", c2, c1.Epoch)
	}
	// The old owner's stale epoch cannot release the new claim.
	expectErr(t, apply1(t, f, idx+3, t0, releaseOp(k, "m1", c1.Epoch)), ErrClaimConflict)
	expectErr(t, apply1(t, f, idx+4, t0, releaseOp(k, "m2", c1.Epoch)), ErrEpochMismatch)
	if o := f.Lookup(k)[0]; o.Owner() != "m2" || o.Claim.Epoch != c2.Epoch {
		t.Fatalf("Lookup = %+v", o)
	}
}

func TestFSM_ClaimByMemberNotAlive(t *testing.T) {
	for _, st := range []pb.MemberState{pb.MemberState_MEMBER_STATE_LEFT, pb.MemberState_MEMBER_STATE_FAILED} {
		t.Run(st.String(), func(t *testing.T) {
			k := tcpKey(t, 1000)
			var idx uint64
			build := func() *FSM {
				f, i := newSite(t, "m1", "m2")
				expectOK(t, apply1(t, f, i, t0, setStateOp("m2", st)))
				idx = i + 1
				return f
			}
			build()
			expectUnchanged(t, build, idx, t0, claimOp(k, "m2"), ErrMemberNotAlive)
			expectUnchanged(t, build, idx, t0, acquireOp(k, "m2", 10e9), ErrMemberNotAlive)

			f := build()
			if m, ok := f.Member("m2"); !ok || m.State != st {
				t.Fatalf("Member(m2) = %+v, %v", m, ok)
			}
			// Registering again brings the member back, keeping its join index.
			joined := f.Members()[1].JoinedIndex
			r := apply1(t, f, idx, t0, registerOp("m2"))
			expectOK(t, r)
			if r.Epoch != joined {
				t.Fatalf("re-register JoinedIndex %d, want %d", r.Epoch, joined)
			}
			expectOK(t, apply1(t, f, idx+1, t0, claimOp(k, "m2")))
		})
	}
	t.Run("invalid state", func(t *testing.T) {
		f, idx := newSite(t, "m1")
		expectErr(t, apply1(t, f, idx, t0, setStateOp("m1", pb.MemberState_MEMBER_STATE_UNSPECIFIED)), ErrInvalid)
		expectErr(t, apply1(t, f, idx+1, t0, setStateOp("m1", pb.MemberState(42))), ErrInvalid)
		expectErr(t, apply1(t, f, idx+2, t0, setStateOp("nobody", pb.MemberState_MEMBER_STATE_LEFT)), ErrUnknownMember)
		if m, _ := f.Member("m1"); m.State != pb.MemberState_MEMBER_STATE_ALIVE {
			t.Fatalf("state changed to %v", m.State)
		}
	})
}

func TestFSM_LookupOwnerFallsBackToPrimary(t *testing.T) {
	f, idx := newSite(t, "m1", "m2", "m3")
	k := tcpKey(t, 1000)
	b := k.Bucket(DefaultBucketCount)

	o := f.Lookup(k)[0]
	if o.Claimed || o.Owner() != "" || o.Bucket != b || o.Assignment != (Assignment{}) {
		t.Fatalf("Lookup before assignment = %+v", o)
	}

	r := apply1(t, f, idx, t0, assignOp(&ipb.BucketRecord{Bucket: b, Primary: "m1", LocalBackup: "m2",
		RemoteBackup: "elsewhere"}))
	expectOK(t, r)
	if r.Epoch != idx {
		t.Fatalf("SetAssignments epoch %d, want entry index %d", r.Epoch, idx)
	}
	want := Assignment{Primary: "m1", LocalBackup: "m2", RemoteBackup: "elsewhere", Epoch: idx, Revision: idx, Since: idx}
	if a, ok := f.Assignment(b); !ok || a != want {
		t.Fatalf("Assignment(%d) = %+v, %v, want %+v", b, a, ok, want)
	}
	if _, ok := f.Assignment(DefaultBucketCount); ok {
		t.Fatalf("Assignment(out of range) reported ok")
	}
	o = f.Lookup(k)[0]
	if o.Claimed || o.Owner() != "m1" || o.Assignment != want || o.Bucket != b || o.Applied != idx {
		t.Fatalf("Lookup after assignment = %+v", o)
	}

	// A claim overrides the primary; releasing it falls back again.
	c := apply1(t, f, idx+1, t0, claimOp(k, "m3"))
	o = f.Lookup(k)[0]
	if !o.Claimed || o.Owner() != "m3" || o.Assignment != want || o.Applied != idx+1 {
		t.Fatalf("Lookup after claim = %+v", o)
	}
	expectOK(t, apply1(t, f, idx+2, t0, releaseOp(k, "m3", c.Epoch)))
	if o = f.Lookup(k)[0]; o.Owner() != "m1" || o.Applied != idx+2 {
		t.Fatalf("Lookup after release = %+v", o)
	}

	// Reassignment: the epoch is the new entry's index.
	r = apply1(t, f, idx+7, t0, assignOp(&ipb.BucketRecord{Bucket: b, Primary: "m2"}))
	if r.Epoch != idx+7 {
		t.Fatalf("reassignment epoch %d, want %d", r.Epoch, idx+7)
	}
	if o = f.Lookup(k)[0]; o.Owner() != "m2" || o.Assignment.Epoch != idx+7 || o.Assignment.LocalBackup != "" {
		t.Fatalf("Lookup after reassignment = %+v", o)
	}

	// Lookup of several keys in one call.
	k2 := tcpKey(t, 2000)
	os := f.Lookup(k, k2)
	if len(os) != 2 || os[0].Key != k || os[1].Key != k2 || os[1].Bucket != k2.Bucket(DefaultBucketCount) {
		t.Fatalf("Lookup(k, k2) = %+v", os)
	}
}

func TestFSM_SetAssignmentsAllOrNothing(t *testing.T) {
	var idx uint64
	build := func() *FSM {
		f, i := newSite(t, "m1", "m2")
		expectOK(t, apply1(t, f, i, t0, assignOp(&ipb.BucketRecord{Bucket: 7, Primary: "m1"})))
		idx = i + 1
		return f
	}
	build()
	cases := []struct {
		name string
		op   *ipb.Op
		want *Error
	}{
		{"out of range last", assignOp(
			&ipb.BucketRecord{Bucket: 1, Primary: "m1"},
			&ipb.BucketRecord{Bucket: 7, Primary: "m2"},
			&ipb.BucketRecord{Bucket: DefaultBucketCount, Primary: "m1"}), ErrInvalid},
		{"out of range first", assignOp(
			&ipb.BucketRecord{Bucket: 1 << 31, Primary: "m1"},
			&ipb.BucketRecord{Bucket: 7, Primary: "m2"}), ErrInvalid},
		{"unknown primary", assignOp(
			&ipb.BucketRecord{Bucket: 1, Primary: "m1"},
			&ipb.BucketRecord{Bucket: 7, Primary: "m9"}), ErrUnknownMember},
		{"unknown local backup", assignOp(
			&ipb.BucketRecord{Bucket: 7, Primary: "m2"},
			&ipb.BucketRecord{Bucket: 8, Primary: "m1", LocalBackup: "ghost"}), ErrUnknownMember},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			expectUnchanged(t, build, idx, t0, c.op, c.want)
			f := build()
			expectErr(t, apply1(t, f, idx, t0, c.op), c.want)
			for b, want := range map[uint32]Assignment{1: {}, 7: {Primary: "m1", Epoch: idx - 1, Revision: idx - 1, Since: idx - 1}, 8: {}} {
				if a, _ := f.Assignment(b); a != want {
					t.Fatalf("bucket %d = %+v, want %+v", b, a, want)
				}
			}
		})
	}
	// All valid: every bucket changes, all with the entry's index as epoch.
	f := build()
	expectOK(t, apply1(t, f, idx, t0, assignOp(
		&ipb.BucketRecord{Bucket: 1, Primary: "m1"},
		&ipb.BucketRecord{Bucket: 7, Primary: "m2", RemoteBackup: "not-a-local-member"})))
	for b, want := range map[uint32]Assignment{1: {Primary: "m1", Epoch: idx, Revision: idx, Since: idx},
		7: {Primary: "m2", RemoteBackup: "not-a-local-member", Epoch: idx, Revision: idx, Previous: "m1", Since: idx}} {
		if a, _ := f.Assignment(b); a != want {
			t.Fatalf("bucket %d = %+v, want %+v", b, a, want)
		}
	}
}

func TestFSM_OpsOfOneProposalApplyInOrder(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	res := apply(t, f, idx, t0,
		claimOp(k, "m1"),
		claimOp(k, "m2"),          // conflict with the claim just made
		releaseOp(k, "m1", 0),     // releases it
		claimOp(k, "m2"),          // now free
		releaseOp(k, "nobody", 0), // conflict: held by m2
	)
	expectOK(t, res[0])
	expectErr(t, res[1], ErrClaimConflict)
	expectOK(t, res[2])
	expectOK(t, res[3])
	expectErr(t, res[4], ErrClaimConflict)
	if res[3].Epoch != res[0].Epoch+1 || res[4].MemberID != "m2" {
		t.Fatalf("results %+v", res)
	}
	if o := f.Lookup(k)[0]; o.Owner() != "m2" {
		t.Fatalf("Lookup = %+v", o)
	}
}

func TestFSM_Members(t *testing.T) {
	f, idx := newSite(t, "m3", "m1", "m2")
	ms := f.Members()
	if len(ms) != 3 || ms[0].ID != "m1" || ms[1].ID != "m2" || ms[2].ID != "m3" {
		t.Fatalf("Members() = %+v", ms)
	}
	m, ok := f.Member("m3")
	if !ok || m.JoinedIndex != 2 || m.Weight != 1 || m.Site != testSite || m.RaftAddr != "m3:7000" ||
		m.State != pb.MemberState_MEMBER_STATE_ALIVE {
		t.Fatalf("Member(m3) = %+v", m)
	}
	if p := m.Proto(); p.Id != "m3" || p.JoinedIndex != 2 || p.GrpcAddr != "m3:7001" {
		t.Fatalf("Proto() = %v", p)
	}
	if _, ok := f.Member("m9"); ok {
		t.Fatalf("Member(m9) found")
	}
	bad := &ipb.Op{Op: &ipb.Op_RegisterMember{RegisterMember: &ipb.RegisterMemberOp{Member: &pb.Member{Id: "a b", Site: testSite}}}}
	expectErr(t, apply1(t, f, idx, t0, bad), ErrInvalid)
	nilMember := &ipb.Op{Op: &ipb.Op_RegisterMember{RegisterMember: &ipb.RegisterMemberOp{}}}
	expectErr(t, apply1(t, f, idx+1, t0, nilMember), ErrInvalid)
	if s := f.Stats(); s.Members != 3 {
		t.Fatalf("Stats.Members = %d", s.Members)
	}
}
