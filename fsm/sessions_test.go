package fsm

import (
	"reflect"
	"testing"
	"time"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
)

func TestFSM_SessionRetryReturnsCachedResult(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k, k2 := tcpKey(t, 1000), tcpKey(t, 2000)
	p := prop(42, 1, 1, acquireOp(k, "m1", time.Minute), claimOp(k2, "m1"), claimOp(k2, "m2"))
	first := applyProposal(t, f, idx, sec(1), p)
	expectOK(t, first[0])
	expectOK(t, first[1])
	expectErr(t, first[2], ErrClaimConflict)

	// The retry (same client and seq) arrives in a later entry: same outcome,
	// including the cached error, and nothing applied again.
	retry := applyProposal(t, f, idx+1, sec(2), prop(42, 1, 1, acquireOp(k, "m1", time.Minute), claimOp(k2, "m1"), claimOp(k2, "m2")))
	if !reflect.DeepEqual(retry, first) {
		t.Fatalf("retry = %+v, want %+v", retry, first)
	}
	expectLock(t, f, k, Lock{"m1", first[0].Epoch, sec(1) + int64(time.Minute), int64(time.Minute)})
	// The counter did not move.
	next := apply1(t, f, idx+2, sec(2), claimOp(tcpKey(t, 3000), "m2"))
	if next.Epoch != first[1].Epoch+1 {
		t.Fatalf("next grant %d, want %d: the retry bumped the counter", next.Epoch, first[1].Epoch+1)
	}

	// Even after the state changed, the retry still reports the first
	// outcome and does not re-acquire the released lock.
	r := applyProposal(t, f, idx+3, sec(3), prop(42, 2, 1, releaseLockOp(k, "m1", first[0].Epoch)))
	expectOK(t, r[0])
	expectNoLock(t, f, k)
	retry = applyProposal(t, f, idx+4, sec(4), prop(42, 1, 1, acquireOp(k, "m1", time.Minute), claimOp(k2, "m1"), claimOp(k2, "m2")))
	if !reflect.DeepEqual(retry, first) {
		t.Fatalf("late retry = %+v, want %+v", retry, first)
	}
	expectNoLock(t, f, k)
	if s := f.Stats(); s.Sessions != 1 {
		t.Fatalf("Stats.Sessions = %d", s.Sessions)
	}
}

// TestFSM_SessionRetryTwinState checks that a retry changes nothing: an FSM
// that receives the retry and one that receives an empty entry at the same
// index and log time (so the session's last-seen is the same) hold
// byte-identical state.
func TestFSM_SessionRetryTwinState(t *testing.T) {
	k, k2 := tcpKey(t, 1000), tcpKey(t, 2000)
	ops := func() []*ipb.Op {
		return []*ipb.Op{acquireOp(k, "m1", time.Minute), claimOp(k2, "m2"), releaseOp(k2, "m2", 0)}
	}
	build := func() (*FSM, uint64) {
		f, idx := newSite(t, "m1", "m2")
		res := applyProposal(t, f, idx, sec(5), prop(9, 1, 0, ops()...))
		for _, r := range res {
			expectOK(t, r)
		}
		return f, idx + 1
	}
	a, idx := build()
	b, _ := build()
	applyProposal(t, a, idx, sec(5), prop(9, 1, 0, ops()...))
	b.ApplyEntry(idx, emptyEntry(sec(5)))
	sameState(t, "retry vs. empty entry", a, b)
}

func TestFSM_SessionRetryInSameEntry(t *testing.T) {
	f, idx := newSite(t, "m1")
	k := tcpKey(t, 1000)
	p := func() *ipb.Proposal { return prop(5, 1, 0, acquireOp(k, "m1", time.Minute)) }
	out := f.ApplyEntry(idx, &ipb.Entry{TimeUnixNano: sec(1), Proposals: []*ipb.Proposal{p(), p()}})
	expectOK(t, out[0][0])
	if !reflect.DeepEqual(out[0], out[1]) {
		t.Fatalf("duplicate in one entry: %+v vs %+v", out[0], out[1])
	}
}

func TestFSM_SessionStaleAfterAck(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	c1 := applyProposal(t, f, idx, sec(1), prop(7, 1, 1, claimOp(k, "m1")))
	expectOK(t, c1[0])
	// seq 2 says everything below 2 completed: seq 1's outcome is forgotten.
	r2 := applyProposal(t, f, idx+1, sec(1), prop(7, 2, 2, releaseOp(k, "m1", c1[0].Epoch)))
	expectOK(t, r2[0])

	retry := applyProposal(t, f, idx+2, sec(2), prop(7, 1, 1, claimOp(k, "m1"), claimOp(k, "m2")))
	if len(retry) != 2 {
		t.Fatalf("stale retry returned %d results", len(retry))
	}
	for i, r := range retry {
		expectErr(t, r, ErrStaleRequest)
		if r.Epoch != 0 || r.MemberID != "" {
			t.Fatalf("stale result %d carries data: %+v", i, r)
		}
	}
	if o := f.Lookup(k)[0]; o.Claimed {
		t.Fatalf("stale retry was applied: %+v", o)
	}
	// seq 2 is still remembered (acked_seq 2 keeps seq >= 2).
	again := applyProposal(t, f, idx+3, sec(2), prop(7, 2, 2, releaseOp(k, "m1", c1[0].Epoch)))
	if !reflect.DeepEqual(again, r2) {
		t.Fatalf("retry of seq 2 = %+v, want %+v", again, r2)
	}
	// A lower acked_seq in a later proposal does not bring seq 1 back.
	retry = applyProposal(t, f, idx+4, sec(3), prop(7, 1, 0, claimOp(k, "m1")))
	expectErr(t, retry[0], ErrStaleRequest)
	if o := f.Lookup(k)[0]; o.Claimed {
		t.Fatalf("stale retry was applied: %+v", o)
	}
	// New sequence numbers are applied normally.
	c3 := applyProposal(t, f, idx+5, sec(3), prop(7, 3, 2, claimOp(k, "m2")))
	expectOK(t, c3[0])
	if c3[0].Epoch <= c1[0].Epoch {
		t.Fatalf("new claim epoch %d", c3[0].Epoch)
	}
}

func TestFSM_SessionClientZeroNeverDeduplicated(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	p := func() *ipb.Proposal { return prop(0, 1, 0, acquireOp(k, "m1", time.Minute)) }
	first := applyProposal(t, f, idx, sec(1), p())
	expectOK(t, first[0])
	second := applyProposal(t, f, idx+1, sec(1), p())
	expectErr(t, second[0], ErrLockHeld)
	if second[0].Epoch != first[0].Epoch {
		t.Fatalf("held result %+v, want holder token %d", second[0], first[0].Epoch)
	}
	// A claim applied twice without a session is an idempotent re-claim, but
	// a release applied twice fails the second time.
	c := applyProposal(t, f, idx+2, sec(1), prop(0, 2, 0, claimOp(k, "m2")))
	expectOK(t, applyProposal(t, f, idx+3, sec(1), prop(0, 3, 0, releaseOp(k, "m2", c[0].Epoch)))[0])
	expectErr(t, applyProposal(t, f, idx+4, sec(1), prop(0, 3, 0, releaseOp(k, "m2", c[0].Epoch)))[0], ErrNotClaimed)
	if s := f.Stats(); s.Sessions != 0 {
		t.Fatalf("Stats.Sessions = %d, want 0", s.Sessions)
	}
}

func TestFSM_SessionsAreSeparate(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	a := applyProposal(t, f, idx, sec(1), prop(1, 1, 0, acquireOp(k, "m1", time.Minute)))
	expectOK(t, a[0])
	// Same seq from another client is a different request.
	b := applyProposal(t, f, idx+1, sec(1), prop(2, 1, 0, acquireOp(k, "m2", time.Minute)))
	expectErr(t, b[0], ErrLockHeld)
	// Acking in client 2 does not affect client 1.
	applyProposal(t, f, idx+2, sec(1), prop(2, 5, 5))
	again := applyProposal(t, f, idx+3, sec(1), prop(1, 1, 0, acquireOp(k, "m1", time.Minute)))
	if !reflect.DeepEqual(again, a) {
		t.Fatalf("client 1 retry = %+v, want %+v", again, a)
	}
	if s := f.Stats(); s.Sessions != 2 {
		t.Fatalf("Stats.Sessions = %d", s.Sessions)
	}
}

func TestFSM_SessionsExpireInLogTime(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	start := sec(1)
	first := applyProposal(t, f, idx, start, prop(11, 1, 0, acquireOp(k, "m1", time.Minute)))
	expectOK(t, first[0])
	applyProposal(t, f, idx+1, start, prop(12, 1, 0))
	if s := f.Stats(); s.Sessions != 2 {
		t.Fatalf("Stats.Sessions = %d, want 2", s.Sessions)
	}
	// Client 12 stays active; client 11 goes idle.
	applyProposal(t, f, idx+2, start+int64(SessionTTL/2), prop(12, 2, 2))
	// Idle for exactly SessionTTL: kept (a sweep runs at this entry).
	f.ApplyEntry(idx+3, emptyEntry(start+int64(SessionTTL)))
	if s := f.Stats(); s.Sessions != 2 {
		t.Fatalf("Stats.Sessions = %d after exactly SessionTTL, want 2", s.Sessions)
	}
	// Idle for longer, at the next sweep: dropped. Client 12 was seen
	// SessionTTL/2 ago and is kept.
	f.ApplyEntry(idx+4, emptyEntry(start+int64(SessionTTL)+int64(sweepInterval)))
	if s := f.Stats(); s.Sessions != 1 {
		t.Fatalf("Stats.Sessions = %d after idling, want 1", s.Sessions)
	}
	// The client's retry is now applied afresh: the lock it took expired long
	// ago, so it gets a new, larger token rather than the cached one.
	retry := applyProposal(t, f, idx+5, start+int64(SessionTTL)+int64(2*sweepInterval),
		prop(11, 1, 0, acquireOp(k, "m1", time.Minute)))
	expectOK(t, retry[0])
	if retry[0].Epoch <= first[0].Epoch {
		t.Fatalf("retry after session expiry got token %d, want > %d", retry[0].Epoch, first[0].Epoch)
	}
	if s := f.Stats(); s.Sessions != 2 {
		t.Fatalf("Stats.Sessions = %d, want 2", s.Sessions)
	}
}

func TestFSM_SessionsExpireNotOnOldEntries(t *testing.T) {
	// An entry stamped earlier than "now" does not reset the session clock.
	f, idx := newSite(t, "m1")
	applyProposal(t, f, idx, sec(1000), prop(3, 1, 0))
	applyProposal(t, f, idx+1, sec(0), prop(3, 2, 0)) // last-seen = now = sec(1000)
	f.ApplyEntry(idx+2, emptyEntry(sec(1000)+int64(SessionTTL)+int64(sweepInterval)))
	if s := f.Stats(); s.Sessions != 0 {
		t.Fatalf("Stats.Sessions = %d, want 0", s.Sessions)
	}
}

func TestFSM_SessionResponsesBounded(t *testing.T) {
	f, idx := newSite(t, "m1")
	n := maxSessionResponses + 1
	props := make([]*ipb.Proposal, n)
	for i := range props {
		props[i] = prop(77, uint64(i+1), 0, claimOp(tcpKey(t, uint32(i+1)), "m1"))
	}
	out := f.ApplyEntry(idx, &ipb.Entry{TimeUnixNano: sec(1), Proposals: props})
	for i, r := range out {
		expectOK(t, r[0])
		if i > 0 && r[0].Epoch != out[i-1][0].Epoch+1 {
			t.Fatalf("epochs not consecutive at %d", i)
		}
	}
	// The oldest outcome was dropped to make room; its retry is stale.
	r := applyProposal(t, f, idx+1, sec(1), prop(77, 1, 0, claimOp(tcpKey(t, 1), "m1")))
	expectErr(t, r[0], ErrStaleRequest)
	// The next one is still remembered.
	r = applyProposal(t, f, idx+2, sec(1), prop(77, 2, 0, claimOp(tcpKey(t, 2), "m1")))
	if !reflect.DeepEqual(r, out[1]) {
		t.Fatalf("retry of seq 2 = %+v, want %+v", r, out[1])
	}
}
