package fsm

import (
	"bytes"
	"errors"
	"testing"
	"time"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

const testSite = "site-a"

// t0 is an arbitrary log time (2023-11-14T22:13:20Z) the tests start from.
var t0 = time.Unix(1_700_000_000, 0).UnixNano()

// sec returns t0 + n seconds, in Unix nanoseconds.
func sec(n int64) int64 { return t0 + n*int64(time.Second) }

// apply applies one entry holding a single session-less proposal and returns
// that proposal's results.
func apply(t testing.TB, f *FSM, index uint64, now int64, ops ...*ipb.Op) ProposalResult {
	t.Helper()
	return applyProposal(t, f, index, now, &ipb.Proposal{Ops: ops})
}

// applyProposal applies one entry holding p and returns its results.
func applyProposal(t testing.TB, f *FSM, index uint64, now int64, p *ipb.Proposal) ProposalResult {
	t.Helper()
	out := f.ApplyEntry(index, &ipb.Entry{TimeUnixNano: now, Proposals: []*ipb.Proposal{p}})
	if len(out) != 1 {
		t.Fatalf("ApplyEntry returned %d proposal results, want 1", len(out))
	}
	if len(out[0]) != ResultCount(p) {
		t.Fatalf("ApplyEntry returned %d op results, want %d", len(out[0]), ResultCount(p))
	}
	if got := f.AppliedIndex(); got != index {
		t.Fatalf("AppliedIndex = %d after applying %d", got, index)
	}
	return out[0]
}

// apply1 applies one entry with a single op and returns its result.
func apply1(t testing.TB, f *FSM, index uint64, now int64, op *ipb.Op) Result {
	t.Helper()
	return apply(t, f, index, now, op)[0]
}

// mustParse parses a key from its API form or fails the test.
func mustParse(t testing.TB, zone string, proto uint32, src string, sport uint32, dst string, dport uint32) Key {
	t.Helper()
	k, err := ParseKey(&pb.ConnKey{Zone: zone, Protocol: proto, SrcIp: src, SrcPort: sport, DstIp: dst, DstPort: dport}, "key")
	if err != nil {
		t.Fatalf("ParseKey(%s %d %s:%d %s:%d): %v", zone, proto, src, sport, dst, dport, err)
	}
	return k
}

// tcpKey is a TCP key between 10.0.0.1:sport and 10.0.0.2:80.
func tcpKey(t testing.TB, sport uint32) Key {
	t.Helper()
	return mustParse(t, "", 6, "10.0.0.1", sport, "10.0.0.2", 80)
}

// newSite returns an FSM with the site initialised at index 1 (time t0) and
// members registered at indexes 2, 3, ... (one per entry, time t0). It returns
// the next free index.
func newSite(t testing.TB, members ...string) (*FSM, uint64) {
	t.Helper()
	f := New()
	expectOK(t, apply1(t, f, 1, t0, initSiteOp(testSite, DefaultBucketCount)))
	idx := uint64(2)
	for _, m := range members {
		r := apply1(t, f, idx, t0, registerOp(m))
		expectOK(t, r)
		if r.Epoch != idx {
			t.Fatalf("register %s: JoinedIndex %d, want %d", m, r.Epoch, idx)
		}
		idx++
	}
	return f, idx
}

// prop is a proposal of session client (0: none) with ops.
func prop(client, seq, acked uint64, ops ...*ipb.Op) *ipb.Proposal {
	return &ipb.Proposal{ClientId: client, Seq: seq, AckedSeq: acked, Ops: ops}
}

// Op constructors.

func initSiteOp(site string, buckets uint32) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_InitSite{InitSite: &ipb.InitSiteOp{Site: site, BucketCount: buckets}}}
}

func registerOp(id string) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_RegisterMember{RegisterMember: &ipb.RegisterMemberOp{Member: &pb.Member{
		Id: id, Site: testSite, RaftAddr: id + ":7000", GrpcAddr: id + ":7001"}}}}
}

func setStateOp(id string, s pb.MemberState) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_SetMemberState{SetMemberState: &ipb.SetMemberStateOp{MemberId: id, State: s}}}
}

func assignOp(buckets ...*ipb.BucketRecord) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_SetAssignments{SetAssignments: &ipb.SetAssignmentsOp{Buckets: buckets}}}
}

func claimOp(k Key, member string) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_Claim{Claim: &ipb.ClaimOp{Key: []byte(k), MemberId: member}}}
}

func releaseOp(k Key, member string, epoch uint64) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_Release{Release: &ipb.ReleaseOp{Key: []byte(k), MemberId: member, Epoch: epoch}}}
}

func acquireOp(k Key, member string, ttl time.Duration) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_AcquireLock{AcquireLock: &ipb.AcquireLockOp{Key: []byte(k), MemberId: member,
		TtlNanos: int64(ttl)}}}
}

func renewOp(k Key, member string, token uint64, ttl time.Duration) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_RenewLock{RenewLock: &ipb.RenewLockOp{Key: []byte(k), MemberId: member,
		Token: token, TtlNanos: int64(ttl)}}}
}

func releaseLockOp(k Key, member string, token uint64) *ipb.Op {
	return &ipb.Op{Op: &ipb.Op_ReleaseLock{ReleaseLock: &ipb.ReleaseLockOp{Key: []byte(k), MemberId: member,
		Token: token}}}
}

// Assertions.

func expectOK(t testing.TB, r Result) {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("unexpected error: %v (result %+v)", r.Err, r)
	}
}

func expectErr(t testing.TB, r Result, want *Error) {
	t.Helper()
	if r.Err == nil {
		t.Fatalf("got success %+v, want %v", r, want)
	}
	if !errors.Is(r.Err, want) {
		t.Fatalf("got error %v, want %v", r.Err, want)
	}
	var e *Error
	if !errors.As(r.Err, &e) {
		t.Fatalf("error %T is not a domain *Error", r.Err)
	}
}

// expectUnchanged applies op to f at index/now and an empty entry at the same
// index/now to a twin built by build, and fails unless both end up in the
// same state: the failed operation wrote nothing (not even a token).
func expectUnchanged(t *testing.T, build func() *FSM, index uint64, now int64, op *ipb.Op, want *Error) {
	t.Helper()
	f, twin := build(), build()
	expectErr(t, apply1(t, f, index, now, op), want)
	twin.ApplyEntry(index, &ipb.Entry{TimeUnixNano: now})
	sameState(t, "after failed op", f, twin)
}

// snapshotBytes returns f's state in snapshot form.
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := f.WriteSnapshot(&buf); err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	return buf.Bytes()
}

// sameState fails the test if a and b do not hold byte-identical state.
func sameState(t testing.TB, what string, a, b *FSM) {
	t.Helper()
	sa, sb := snapshotBytes(t, a), snapshotBytes(t, b)
	if !bytes.Equal(sa, sb) {
		t.Fatalf("%s: snapshots differ (%d vs %d bytes)\nA stats %+v\nB stats %+v", what, len(sa), len(sb),
			a.Stats(), b.Stats())
	}
}

// emptyEntry is an entry without proposals: it only advances log time.
func emptyEntry(now int64) *ipb.Entry { return &ipb.Entry{TimeUnixNano: now} }
