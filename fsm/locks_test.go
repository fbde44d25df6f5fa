package fsm

import (
	"testing"
	"time"
)

const ttl10s = 10 * time.Second

func expectLock(t *testing.T, f *FSM, k Key, want Lock) {
	t.Helper()
	l, ok := f.GetLock(k)
	if !ok || l != want {
		t.Fatalf("GetLock = %+v, %v; want %+v", l, ok, want)
	}
}

func expectNoLock(t *testing.T, f *FSM, k Key) {
	t.Helper()
	if l, ok := f.GetLock(k); ok {
		t.Fatalf("GetLock = %+v, want no live lock", l)
	}
}

func TestFSM_LockAcquire(t *testing.T) {
	f, idx := newSite(t, "m1")
	k := tcpKey(t, 1000)
	expectNoLock(t, f, k)
	r := apply1(t, f, idx, sec(1), acquireOp(k, "m1", ttl10s))
	expectOK(t, r)
	want := Lock{MemberID: "m1", Token: r.Epoch, Expires: sec(1) + int64(ttl10s), TTL: int64(ttl10s)}
	if r.Epoch == 0 || r.MemberID != "m1" || r.Expires != want.Expires || r.TTL != want.TTL {
		t.Fatalf("acquire result %+v", r)
	}
	expectLock(t, f, k, want)
	if s := f.Stats(); s.Locks != 1 {
		t.Fatalf("Stats.Locks = %d", s.Locks)
	}
	// Locks and claims are independent namespaces.
	if o := f.Lookup(k)[0]; o.Claimed {
		t.Fatalf("lock shows as claim: %+v", o)
	}
}

func TestFSM_TokensStrictlyGrowAcrossLocksAndClaims(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	var last uint64
	check := func(what string, r Result) {
		t.Helper()
		expectOK(t, r)
		if r.Epoch <= last {
			t.Fatalf("%s: token %d after %d", what, r.Epoch, last)
		}
		last = r.Epoch
	}
	now := sec(0)
	for i := uint32(0); i < 20; i++ {
		k := tcpKey(t, 1000+i)
		check("claim", apply1(t, f, idx, now, claimOp(k, "m1")))
		idx++
		check("acquire", apply1(t, f, idx, now, acquireOp(k, "m2", time.Second)))
		idx++
		// Failures in between consume no token.
		expectErr(t, apply1(t, f, idx, now, claimOp(k, "m2")), ErrClaimConflict)
		idx++
		expectErr(t, apply1(t, f, idx, now, acquireOp(k, "m1", time.Second)), ErrLockHeld)
		idx++
		// Renew keeps the token.
		rn := apply1(t, f, idx, now, renewOp(k, "m2", last, time.Second))
		expectOK(t, rn)
		if rn.Epoch != last {
			t.Fatalf("renew changed token %d -> %d", last, rn.Epoch)
		}
		idx++
		// After expiry, a re-acquire gets a new, larger token.
		now += int64(2 * time.Second)
		check("re-acquire", apply1(t, f, idx, now, acquireOp(k, "m1", time.Second)))
		idx++
	}
	if last != 60 {
		t.Fatalf("last token %d, want 60: one counter, bumped once per grant", last)
	}
}

func TestFSM_LockHeld(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	var held Result
	build := func() *FSM {
		f, i := newSite(t, "m1", "m2")
		held = apply1(t, f, i, sec(0), acquireOp(k, "m1", ttl10s))
		expectOK(t, held)
		idx = i + 1
		return f
	}
	build()
	for _, m := range []string{"m2", "m1"} {
		expectUnchanged(t, build, idx, sec(5), acquireOp(k, m, ttl10s), ErrLockHeld)
		r := apply1(t, build(), idx, sec(5), acquireOp(k, m, ttl10s))
		expectErr(t, r, ErrLockHeld)
		if r.MemberID != "m1" || r.Epoch != held.Epoch || r.Expires != held.Expires || r.TTL != held.TTL {
			t.Fatalf("acquire by %s: result %+v, want holder %+v", m, r, held)
		}
	}
}

func TestFSM_LockExpiresInLogTime(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	first := apply1(t, f, idx, sec(0), acquireOp(k, "m1", ttl10s))
	expectOK(t, first)
	// One nanosecond before expiry it is still held.
	expectErr(t, apply1(t, f, idx+1, sec(10)-1, acquireOp(k, "m2", ttl10s)), ErrLockHeld)
	expectLock(t, f, k, Lock{"m1", first.Epoch, sec(10), int64(ttl10s)})
	// At the expiry instant it is free: GetLock reflects it even before any op
	// touches the key.
	f.ApplyEntry(idx+2, emptyEntry(sec(10)))
	expectNoLock(t, f, k)
	second := apply1(t, f, idx+3, sec(10), acquireOp(k, "m2", ttl10s))
	expectOK(t, second)
	if second.Epoch <= first.Epoch || second.MemberID != "m2" {
		t.Fatalf("second acquire %+v, want token > %d", second, first.Epoch)
	}
	expectLock(t, f, k, Lock{"m2", second.Epoch, sec(20), int64(ttl10s)})
	// The old holder is fenced off.
	expectErr(t, apply1(t, f, idx+4, sec(11), renewOp(k, "m1", first.Epoch, ttl10s)), ErrTokenMismatch)
	expectErr(t, apply1(t, f, idx+5, sec(11), releaseLockOp(k, "m1", first.Epoch)), ErrTokenMismatch)
}

func TestFSM_LockRenew(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k := tcpKey(t, 1000)
	a := apply1(t, f, idx, sec(0), acquireOp(k, "m1", ttl10s))
	r := apply1(t, f, idx+1, sec(8), renewOp(k, "m1", a.Epoch, 30*time.Second))
	expectOK(t, r)
	want := Lock{"m1", a.Epoch, sec(38), int64(30 * time.Second)}
	if r.Epoch != a.Epoch || r.MemberID != "m1" || r.Expires != want.Expires || r.TTL != want.TTL {
		t.Fatalf("renew result %+v, want %+v", r, want)
	}
	expectLock(t, f, k, want)
	// Past the original expiry, still held thanks to the renewal.
	expectErr(t, apply1(t, f, idx+2, sec(20), acquireOp(k, "m2", ttl10s)), ErrLockHeld)
	// Renewing with a shorter TTL sets expiry to entry time + ttl.
	r = apply1(t, f, idx+3, sec(21), renewOp(k, "m1", a.Epoch, time.Second))
	expectOK(t, r)
	expectLock(t, f, k, Lock{"m1", a.Epoch, sec(22), int64(time.Second)})
	expectOK(t, apply1(t, f, idx+4, sec(22), acquireOp(k, "m2", ttl10s)))
}

func TestFSM_LockTokenMismatch(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	var held Result
	build := func() *FSM {
		f, i := newSite(t, "m1", "m2")
		held = apply1(t, f, i, sec(0), acquireOp(k, "m1", ttl10s))
		idx = i + 1
		return f
	}
	build()
	wrong := map[string]struct {
		member string
		token  uint64
	}{
		"wrong token":          {"m1", held.Epoch + 1},
		"zero token":           {"m1", 0},
		"wrong member":         {"m2", held.Epoch},
		"unknown member":       {"ghost", held.Epoch},
		"wrong member & token": {"m2", held.Epoch + 1},
	}
	for name, w := range wrong {
		t.Run(name, func(t *testing.T) {
			expectUnchanged(t, build, idx, sec(1), renewOp(k, w.member, w.token, ttl10s), ErrTokenMismatch)
			expectUnchanged(t, build, idx, sec(1), releaseLockOp(k, w.member, w.token), ErrTokenMismatch)
			f := build()
			r := apply1(t, f, idx, sec(1), releaseLockOp(k, w.member, w.token))
			if r.MemberID != "m1" || r.Epoch != held.Epoch {
				t.Fatalf("mismatch result %+v, want the holder's", r)
			}
			expectLock(t, f, k, Lock{"m1", held.Epoch, sec(10), int64(ttl10s)})
		})
	}
	// The right member and token release.
	f := build()
	r := apply1(t, f, idx, sec(1), releaseLockOp(k, "m1", held.Epoch))
	expectOK(t, r)
	if r.Epoch != held.Epoch {
		t.Fatalf("release result %+v", r)
	}
	expectNoLock(t, f, k)
	if s := f.Stats(); s.Locks != 0 {
		t.Fatalf("Stats.Locks = %d after release", s.Locks)
	}
}

func TestFSM_LockNotHeld(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	var held Result
	build := func() *FSM {
		f, i := newSite(t, "m1", "m2")
		held = apply1(t, f, i, sec(0), acquireOp(k, "m1", ttl10s))
		idx = i + 1
		return f
	}
	build()
	// Expired: renew and release fail even with the right token.
	f := build()
	expectErr(t, apply1(t, f, idx, sec(10), renewOp(k, "m1", held.Epoch, ttl10s)), ErrLockNotHeld)
	expectErr(t, apply1(t, f, idx+1, sec(10), releaseLockOp(k, "m1", held.Epoch)), ErrLockNotHeld)
	expectNoLock(t, f, k)
	// Never locked.
	other := tcpKey(t, 2000)
	expectUnchanged(t, build, idx, sec(1), renewOp(other, "m1", held.Epoch, ttl10s), ErrLockNotHeld)
	expectUnchanged(t, build, idx, sec(1), releaseLockOp(other, "m1", held.Epoch), ErrLockNotHeld)
	// Released.
	f = build()
	expectOK(t, apply1(t, f, idx, sec(1), releaseLockOp(k, "m1", held.Epoch)))
	expectErr(t, apply1(t, f, idx+1, sec(1), releaseLockOp(k, "m1", held.Epoch)), ErrLockNotHeld)
	expectErr(t, apply1(t, f, idx+2, sec(1), renewOp(k, "m1", held.Epoch, ttl10s)), ErrLockNotHeld)
}

func TestFSM_LockInvalidTTL(t *testing.T) {
	k := tcpKey(t, 1000)
	var idx uint64
	var held Result
	build := func() *FSM {
		f, i := newSite(t, "m1")
		held = apply1(t, f, i, sec(0), acquireOp(k, "m1", ttl10s))
		idx = i + 1
		return f
	}
	build()
	free := tcpKey(t, 2000)
	for _, ttl := range []time.Duration{0, -1, -time.Hour, MaxLockTTL + 1, 100 * time.Hour} {
		expectUnchanged(t, build, idx, sec(1), acquireOp(free, "m1", ttl), ErrInvalid)
		expectUnchanged(t, build, idx, sec(1), renewOp(k, "m1", held.Epoch, ttl), ErrInvalid)
		// TTL is checked before anything else.
		expectUnchanged(t, build, idx, sec(1), acquireOp(free, "ghost", ttl), ErrInvalid)
	}
	f := build()
	r := apply1(t, f, idx, sec(1), acquireOp(free, "m1", MaxLockTTL))
	expectOK(t, r)
	if r.Expires != sec(1)+int64(MaxLockTTL) {
		t.Fatalf("max TTL acquire %+v", r)
	}
	expectOK(t, apply1(t, f, idx+1, sec(1), renewOp(k, "m1", held.Epoch, 1)))
	expectLock(t, f, k, Lock{"m1", held.Epoch, sec(1) + 1, 1})
}

func TestFSM_LogTimeNeverRunsBackwards(t *testing.T) {
	f, idx := newSite(t, "m1", "m2")
	k, k2 := tcpKey(t, 1000), tcpKey(t, 2000)
	a := apply1(t, f, idx, sec(100), acquireOp(k, "m1", ttl10s))
	expectOK(t, a)

	// An entry stamped earlier (a new leader with a slow clock) does not move
	// "now" back.
	f.ApplyEntry(idx+1, emptyEntry(sec(0)))
	if s := f.Stats(); s.Now != sec(100) {
		t.Fatalf("Stats.Now = %d, want %d", s.Now, sec(100))
	}
	// Leases granted or renewed in such an entry count from the max time, so
	// they are not shorter than asked.
	r := apply1(t, f, idx+2, sec(0), acquireOp(k2, "m2", ttl10s))
	expectOK(t, r)
	if r.Expires != sec(110) {
		t.Fatalf("acquire in old-stamped entry expires %d, want %d", r.Expires, sec(110))
	}
	r = apply1(t, f, idx+3, sec(50), renewOp(k, "m1", a.Epoch, ttl10s))
	expectOK(t, r)
	if r.Expires != sec(110) {
		t.Fatalf("renew in old-stamped entry expires %d, want %d", r.Expires, sec(110))
	}
	expectLock(t, f, k, Lock{"m1", a.Epoch, sec(110), int64(ttl10s)})

	// Let both expire, then apply an entry stamped before the expiry: the
	// locks stay expired.
	f.ApplyEntry(idx+4, emptyEntry(sec(111)))
	expectNoLock(t, f, k)
	expectNoLock(t, f, k2)
	f.ApplyEntry(idx+5, emptyEntry(sec(105)))
	expectNoLock(t, f, k)
	expectNoLock(t, f, k2)
	expectErr(t, apply1(t, f, idx+6, sec(105), renewOp(k, "m1", a.Epoch, ttl10s)), ErrLockNotHeld)
	b := apply1(t, f, idx+7, sec(101), acquireOp(k, "m2", ttl10s))
	expectOK(t, b)
	if b.Expires != sec(121) {
		t.Fatalf("acquire expires %d, want %d", b.Expires, sec(121))
	}
	if s := f.Stats(); s.Now != sec(111) {
		t.Fatalf("Stats.Now = %d, want %d", s.Now, sec(111))
	}
}

// TestFSM_ApplyIgnoresWallClock applies entries stamped far from the machine's
// clock: expiry decisions follow the entries' times only.
func TestFSM_ApplyIgnoresWallClock(t *testing.T) {
	for _, year := range []int{2001, 2150} {
		base := time.Date(year, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
		at := func(d time.Duration) int64 { return base + int64(d) }
		f := New()
		expectOK(t, apply1(t, f, 1, at(0), initSiteOp(testSite, 16)))
		expectOK(t, apply1(t, f, 2, at(0), registerOp("m1")))
		expectOK(t, apply1(t, f, 3, at(0), registerOp("m2")))
		k := tcpKey(t, 1000)
		a := apply1(t, f, 4, at(0), acquireOp(k, "m1", time.Minute))
		expectOK(t, a)
		if a.Expires != at(time.Minute) {
			t.Fatalf("%d: expires %d, want %d", year, a.Expires, at(time.Minute))
		}
		// By the wall clock this lock expired long ago (2001) or is valid for
		// another century (2150); by log time it is held for a minute.
		expectLock(t, f, k, Lock{"m1", a.Epoch, at(time.Minute), int64(time.Minute)})
		expectErr(t, apply1(t, f, 5, at(30*time.Second), acquireOp(k, "m2", time.Minute)), ErrLockHeld)
		expectOK(t, apply1(t, f, 6, at(50*time.Second), renewOp(k, "m1", a.Epoch, time.Minute)))
		expectErr(t, apply1(t, f, 7, at(109*time.Second), acquireOp(k, "m2", time.Minute)), ErrLockHeld)
		f.ApplyEntry(8, emptyEntry(at(110*time.Second)))
		expectNoLock(t, f, k)
		b := apply1(t, f, 9, at(110*time.Second), acquireOp(k, "m2", time.Minute))
		expectOK(t, b)
		if b.Epoch <= a.Epoch {
			t.Fatalf("%d: token %d after %d", year, b.Epoch, a.Epoch)
		}
		if s := f.Stats(); s.Now != at(110*time.Second) {
			t.Fatalf("%d: Stats.Now = %d", year, s.Now)
		}
	}
}

func TestFSM_SweepDropsExpiredLocks(t *testing.T) {
	f, idx := newSite(t, "m1") // the entries at t0 swept at t0
	k := tcpKey(t, 1000)
	expectOK(t, apply1(t, f, idx, t0, acquireOp(k, "m1", 100*time.Millisecond)))
	f.ApplyEntry(idx+1, emptyEntry(t0+int64(500*time.Millisecond)))
	// Expired but not yet swept: invisible to GetLock, still in the state.
	expectNoLock(t, f, k)
	if s := f.Stats(); s.Locks != 1 {
		t.Fatalf("Stats.Locks = %d before the sweep, want 1", s.Locks)
	}
	f.ApplyEntry(idx+2, emptyEntry(t0+int64(sweepInterval)))
	if s := f.Stats(); s.Locks != 0 {
		t.Fatalf("Stats.Locks = %d after the sweep, want 0", s.Locks)
	}
}
