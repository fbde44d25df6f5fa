package fsm

import (
	"bytes"
	"io"
	"slices"
	"testing"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

func siteModeOp(standby bool) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_SetSiteMode{SetSiteMode: &ipb.SetSiteModeOp{Standby: standby, Reason: "test"}}}
}

// A standby site records its primaries' remote copies, activates once (every
// epoch grows), and keeps all of it over snapshot and restore.
func TestFSM_SiteModeAndRemoteCopies(t *testing.T) {
	f := New()
	expectOK(t, apply1(t, f, 1, t0, &ipb.Op{Op: &ipb.Op_InitSite{InitSite: &ipb.InitSiteOp{
		Site: testSite, BucketCount: DefaultBucketCount, Standby: true}}}))
	idx := uint64(2)
	for _, m := range []string{"m1", "m2"} {
		expectOK(t, apply1(t, f, idx, t0, registerOp(m)))
		idx++
	}
	if st := f.Stats(); !st.Standby || st.SiteEpoch != 0 {
		t.Fatalf("new standby site: %+v", st)
	}
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil,
		&ipb.BucketChange{Bucket: 1, Primary: "m1", LocalBackup: "m2"},
		&ipb.BucketChange{Bucket: 2, Primary: "m2", LocalBackup: "m1"})))
	ep := idx
	idx++
	// The primary of a standby site reports its remote copy; the local
	// backup's report is the ordinary one.
	r := apply1(t, f, idx, t0, markSyncedOp("m1", &pb.BucketEpoch{Bucket: 1, Epoch: ep}, &pb.BucketEpoch{Bucket: 2, Epoch: ep}))
	if expectOK(t, r); r.Epoch != 2 {
		t.Fatalf("%d reports recorded, want 2", r.Epoch)
	}
	idx++
	if a, _ := f.Assignment(1); !a.RemoteCopySynced || a.BackupSynced {
		t.Fatalf("bucket 1 = %+v, want the remote copy synced only", a)
	}
	// A move of the local backup keeps the primary's copy; a new primary has none.
	expectOK(t, apply1(t, f, idx, t0, reassignOp(nil,
		&ipb.BucketChange{Bucket: 1, PrevRevision: idx - 1, Primary: "m1"},
		&ipb.BucketChange{Bucket: 2, PrevRevision: idx - 1, Primary: "m1", LocalBackup: "m2"})))
	idx++
	if a, _ := f.Assignment(1); !a.RemoteCopySynced {
		t.Fatalf("bucket 1 lost its remote copy when its backup changed: %+v", a)
	}
	if a, _ := f.Assignment(2); a.RemoteCopySynced {
		t.Fatalf("bucket 2's new primary inherited a remote copy: %+v", a)
	}
	// Activation: every epoch becomes the entry's index; twice is refused.
	act := idx
	if r := apply1(t, f, act, t0, siteModeOp(false)); r.Err != nil || r.Epoch != act {
		t.Fatalf("activate: %+v", r)
	}
	idx++
	for _, b := range []uint32{0, 1, 2, 4095} {
		if a, _ := f.Assignment(b); a.Epoch != act || a.Revision != act {
			t.Fatalf("bucket %d after activation = %+v, want epoch %d", b, a, act)
		}
	}
	// The flag means a standby site's copy: kept past activation, it would
	// claim a synced copy the next time the site went standby.
	if a, _ := f.Assignment(1); a.RemoteCopySynced {
		t.Fatalf("activation kept the copy flag: %+v", a)
	}
	expectErr(t, apply1(t, f, idx, t0, siteModeOp(false)), ErrSiteMode)
	idx++
	// Active now: the primary's report is no remote copy any more.
	if r := apply1(t, f, idx, t0, markSyncedOp("m1", &pb.BucketEpoch{Bucket: 2, Epoch: act})); r.Epoch != 0 {
		t.Fatalf("an active site recorded a remote copy: %+v", r)
	}
	idx++
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	sameState(t, "restored", f, g)
	if st := g.Stats(); st.Standby || st.SiteEpoch != act {
		t.Fatalf("restored site: %+v", st)
	}
	// Back to standby: the copies must come anew.
	expectOK(t, apply1(t, f, idx, t0, siteModeOp(true)))
	if a, _ := f.Assignment(1); a.RemoteCopySynced || a.Epoch != idx {
		t.Fatalf("bucket 1 after going standby = %+v", a)
	}
}

// TestFSM_ActiveSiteRecordsLeaseEpoch: an active site records a higher
// site-lease epoch it holds without any other change; a lower one is
// refused, and so is any once the site is standby (a handover committed
// before the record: it must not activate the site again).
func TestFSM_ActiveSiteRecordsLeaseEpoch(t *testing.T) {
	f, idx := newSite(t, "m1")
	before, _ := f.Buckets()
	epoch := f.Stats().SiteEpoch
	op := func(lease uint64) *ipb.Op {
		return &ipb.Op{Op: &ipb.Op_SetSiteMode{SetSiteMode: &ipb.SetSiteModeOp{Reason: "site lease held", LeaseEpoch: lease, RecordOnly: true}}}
	}
	if r := apply1(t, f, idx, t0, op(9)); r.Err != nil || r.Epoch != epoch {
		t.Fatalf("recording epoch 9: %+v, want no error and site epoch %d", r, epoch)
	}
	idx++
	if st := f.Stats(); st.LeaseEpoch != 9 || st.Standby || st.SiteEpoch != epoch {
		t.Fatalf("after recording: %+v", st)
	}
	if after, _ := f.Buckets(); !slices.Equal(after, before) {
		t.Fatal("recording a lease epoch changed the bucket table")
	}
	expectErr(t, apply1(t, f, idx, t0, op(9)), ErrSiteMode)
	idx++
	expectErr(t, apply1(t, f, idx, t0, op(0)), ErrSiteMode)
	idx++
	// A handover committed first: the record must not activate the site again.
	if r := apply1(t, f, idx, t0, siteModeOp(true)); r.Err != nil {
		t.Fatalf("standby: %+v", r)
	}
	idx++
	standbyAt := f.Stats().SiteEpoch
	expectErr(t, apply1(t, f, idx, t0, op(12)), ErrSiteMode)
	if st := f.Stats(); !st.Standby || st.SiteEpoch != standbyAt || st.LeaseEpoch != 9 {
		t.Fatalf("a record after a handover changed the site: %+v", st)
	}
}
