package chaos

import (
	"strings"
	"testing"
	"time"
)

func claimOp(client int, kind Kind, member string, call, ret int64, out Outcome, reason, owner string, epoch uint64) Op {
	return Op{Client: client, Kind: kind, Key: "k", Member: member, Call: call, Return: ret,
		Outcome: out, Reason: reason, Owner: owner, Epoch: epoch}
}

func checkClaims(ops []Op) Verdict {
	return CheckLinearizable("claims", ClaimModel(), ops, []Kind{Claim, Release, Lookup}, 10*time.Second)
}

func TestClaimModel(t *testing.T) {
	ok := []Op{
		claimOp(0, Claim, "a", 0, 10, OK, "", "", 5),
		claimOp(1, Claim, "b", 5, 15, Failed, Conflict, "", 0),
		claimOp(1, Lookup, "", 20, 25, OK, "", "a", 5),
		claimOp(0, Release, "a", 30, 40, Unknown, "", "", 0),
		claimOp(1, Claim, "b", 50, 60, OK, "", "", 9), // the unknown release took effect
		claimOp(0, Lookup, "", 70, 80, OK, "", "b", 9),
	}
	if v := checkClaims(ok); !v.OK() {
		t.Fatalf("linearizable history refused: %v", v)
	}
	bad := [][]Op{
		{ // two members granted one connection
			claimOp(0, Claim, "a", 0, 10, OK, "", "", 5),
			claimOp(1, Claim, "b", 20, 30, OK, "", "", 6),
		},
		{ // an acknowledged claim lost (S4)
			claimOp(0, Claim, "a", 0, 10, OK, "", "", 5),
			claimOp(1, Lookup, "", 20, 30, OK, "", "", 0),
		},
		{ // a stale read
			claimOp(0, Claim, "a", 0, 10, OK, "", "", 5),
			claimOp(0, Release, "a", 20, 30, OK, "", "", 0),
			claimOp(1, Lookup, "", 40, 50, OK, "", "a", 5),
		},
		{ // an epoch that does not grow
			claimOp(0, Claim, "a", 0, 10, OK, "", "", 5),
			claimOp(0, Release, "a", 20, 30, OK, "", "", 0),
			claimOp(1, Claim, "b", 40, 50, OK, "", "", 5),
		},
	}
	for i, h := range bad {
		if v := checkClaims(h); v.OK() {
			t.Errorf("history %d: violation not caught: %v", i, v)
		}
	}
}

func lockOp(client int, kind Kind, member string, token uint64, ttl, call, ret int64, out Outcome, reason, owner string, tok uint64, exp int64) Op {
	return Op{Client: client, Kind: kind, Key: "k", Member: member, Token: token, TTL: ttl, Call: call, Return: ret,
		Outcome: out, Reason: reason, Owner: owner, Epoch: tok, Expires: exp}
}

func checkLocks(ops []Op, dropped ...string) Verdict {
	mayDrop := func(m string) bool {
		for _, d := range dropped {
			if d == m {
				return true
			}
		}
		return false
	}
	return CheckLinearizable("locks", LockModel(mayDrop), ops, []Kind{Acquire, Renew, Unlock, GetLock}, 10*time.Second)
}

func TestLockModel(t *testing.T) {
	ok := []Op{
		lockOp(0, Acquire, "a", 0, 100, 0, 10, OK, "", "", 3, 105),
		lockOp(1, Acquire, "b", 0, 100, 20, 30, Failed, Held, "", 0, 0),
		lockOp(0, Renew, "a", 3, 100, 40, 50, OK, "", "", 3, 145),
		lockOp(1, GetLock, "", 0, 0, 60, 70, OK, "", "a", 3, 145),
		lockOp(1, Acquire, "b", 0, 100, 200, 210, OK, "", "", 8, 305), // a's lease ran out at 145
		lockOp(0, Renew, "a", 3, 100, 220, 230, Failed, Mismatch, "", 0, 0),
		lockOp(0, Acquire, "a", 0, 50, 240, 250, Unknown, "", "", 0, 0),
		lockOp(1, Unlock, "b", 8, 0, 260, 270, OK, "", "", 0, 0),
	}
	if v := checkLocks(ok); !v.OK() {
		t.Fatalf("linearizable history refused: %v", v)
	}
	dropped := []Op{ // b failed: the state machine dropped its lock early
		lockOp(0, Acquire, "b", 0, 1000, 0, 10, OK, "", "", 3, 1005),
		lockOp(1, Acquire, "a", 0, 100, 20, 30, OK, "", "", 4, 125),
	}
	if v := checkLocks(dropped, "b"); !v.OK() {
		t.Fatalf("a failed member's dropped lock refused: %v", v)
	}
	bad := [][]Op{
		dropped, // the same, when b never failed: two holders
		{ // renewed after someone else got it
			lockOp(0, Acquire, "a", 0, 100, 0, 10, OK, "", "", 3, 105),
			lockOp(1, Acquire, "b", 0, 100, 200, 210, OK, "", "", 4, 305),
			lockOp(0, Renew, "a", 3, 100, 220, 230, OK, "", "", 3, 325),
		},
		{ // a token that does not grow
			lockOp(0, Acquire, "a", 0, 100, 0, 10, OK, "", "", 3, 105),
			lockOp(0, Unlock, "a", 3, 0, 20, 30, OK, "", "", 0, 0),
			lockOp(1, Acquire, "b", 0, 100, 40, 50, OK, "", "", 2, 145),
		},
		{ // released, yet read as held
			lockOp(0, Acquire, "a", 0, 100, 0, 10, OK, "", "", 3, 105),
			lockOp(0, Unlock, "a", 3, 0, 20, 30, OK, "", "", 0, 0),
			lockOp(1, GetLock, "", 0, 0, 40, 50, OK, "", "a", 3, 105),
		},
	}
	for i, h := range bad {
		if v := checkLocks(h); v.OK() {
			t.Errorf("history %d: violation not caught: %v", i, v)
		}
	}
}

func TestFencing(t *testing.T) {
	f := NewFencing()
	f.Grant("k", "a", 3, 0, 10)
	f.Grant("k", "b", 7, 20, 30)
	if !f.Write("k", 7) || f.Write("k", 3) {
		t.Fatal("resource must accept token 7 and then refuse 3")
	}
	if _, _, _, v := f.Check(); len(v) != 0 {
		t.Fatalf("growing tokens flagged: %v", v)
	}
	f.Grant("k", "c", 5, 40, 50) // asked for after b's grant of 7 was answered
	f.Grant("j", "a", 9, 0, 10)
	f.Grant("j", "b", 9, 20, 30)
	_, _, _, v := f.Check()
	if len(v) != 2 {
		t.Fatalf("want 2 violations (token going back, token granted twice), got %v", v)
	}
}

func TestActivations(t *testing.T) {
	a := NewActivations()
	ms := int64(time.Millisecond)
	a.Observe("a", 0, map[uint32]uint64{1: 5, 2: 5})
	a.Observe("b", 1*ms, nil)
	a.Observe("a", 2*ms, map[uint32]uint64{1: 5}) // bucket 2 handed over
	a.Observe("b", 3*ms, map[uint32]uint64{2: 6})
	a.Observe("a", 4*ms, map[uint32]uint64{1: 5})
	if r := a.Check(); len(r.Violations) != 0 || r.Activations != 3 {
		t.Fatalf("clean hand-over flagged: %+v", r)
	}
	a.Observe("b", 5*ms, map[uint32]uint64{1: 7, 2: 6}) // a still acting for 1 at 4ms...
	a.Observe("a", 6*ms, map[uint32]uint64{1: 5})       // ...and at 6ms
	a.Observe("b", 7*ms, map[uint32]uint64{1: 7, 2: 6})
	a.Observe("a", 8*ms, map[uint32]uint64{2: 4}) // and back on 2 with an older epoch
	r := a.Check()
	if r.Overlaps != 1 || r.Longest != time.Millisecond {
		t.Fatalf("want one overlap of 1ms on bucket 1, got %+v", r)
	}
	if !strings.Contains(strings.Join(r.Violations, "\n"), "epoch 4 after b at epoch 6") {
		t.Fatalf("epoch going back not flagged: %v", r.Violations)
	}
}

func TestSiteActivations(t *testing.T) {
	a := NewSiteActivations()
	ms := int64(time.Millisecond)
	a.Observe("a", 0, map[uint32]uint64{1: 9, 2: 9})
	a.Observe("b", 1*ms, nil)
	a.Observe("a", 2*ms, nil)                           // site a went standby...
	a.Observe("b", 3*ms, map[uint32]uint64{1: 2, 2: 2}) // ...then site b took over, at its own (lower) epochs
	if r := a.Check(); len(r.Violations) != 0 || r.Activations != 4 {
		t.Fatalf("clean site failover flagged: %+v", r)
	}
	a.Observe("a", 4*ms, map[uint32]uint64{2: 9}) // site a acts again while b does
	a.Observe("b", 5*ms, map[uint32]uint64{1: 2, 2: 2})
	if r := a.Check(); r.Overlaps != 1 || len(r.Violations) != 1 || !strings.Contains(r.Violations[0], "bucket 2") {
		t.Fatalf("want one overlap on bucket 2, got %+v", r)
	}
}

func TestTermsAndDurable(t *testing.T) {
	tm := NewTerms()
	tm.Leader(2, "a")
	tm.Leader(2, "a")
	tm.Leader(3, "b")
	if n, v := tm.Check(); n != 2 || len(v) != 0 {
		t.Fatalf("terms %d, violations %v", n, v)
	}
	tm.Leader(3, "c")
	if _, v := tm.Check(); len(v) != 1 {
		t.Fatalf("two leaders of term 3 not flagged: %v", v)
	}

	ops := []Op{
		{Key: "x", Kind: Claim, Member: "a", Call: 0, Return: 10, Outcome: OK, Epoch: 4},
		{Key: "y", Kind: Claim, Member: "a", Call: 0, Return: 10, Outcome: OK, Epoch: 5},
		{Key: "y", Kind: Release, Member: "a", Call: 20, Return: 30, Outcome: Unknown},
	}
	final := map[string]Op{"x": {Outcome: OK, Owner: "a", Epoch: 4}}
	if n, miss := CheckDurable(ops, final); n != 1 || len(miss) != 0 {
		t.Fatalf("checked %d, missing %v", n, miss)
	}
	if _, miss := CheckDurable(ops, map[string]Op{}); len(miss) != 1 {
		t.Fatalf("lost claim not flagged: %v", miss)
	}
}
