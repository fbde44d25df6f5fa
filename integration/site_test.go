package integration

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
)

var linear = pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE

func key(i int) *pb.ConnKey {
	return &pb.ConnKey{Protocol: 6, SrcIp: fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), SrcPort: uint32(1024 + i%60000),
		DstIp: "192.0.2.1", DstPort: 443}
}

// TestCluster_ClaimLockAndLeaderKill elects a leader, claims and locks through
// the client, stops the leader while writers keep going, and checks that no
// acknowledged claim is lost and every member converges.
func TestCluster_ClaimLockAndLeaderKill(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	cl := c.Client()
	ctx := cluster.Context(t, 60*time.Second)
	leader := c.WaitForLeader(10 * time.Second)

	claim, err := cl.Claim(ctx, key(0), "m1")
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if claim.MemberId != "m1" || claim.Epoch == 0 {
		t.Fatalf("claim = %v, want member m1 and an epoch", claim)
	}
	lock, err := cl.AcquireLock(ctx, key(0), "m2", 30*time.Second)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	if lock.Token <= claim.Epoch {
		t.Fatalf("lock token %d not above earlier claim epoch %d: tokens must only grow", lock.Token, claim.Epoch)
	}
	if _, err := cl.AcquireLock(ctx, key(0), "m1", time.Second); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("acquire of held lock: got %v, want FailedPrecondition", err)
	}

	// Writers claim distinct keys while the leader is stopped under them.
	w := startClaimWriters(t, ctx, cl, "m1", 1, 4)
	w.waitMore(t, 100, 20*time.Second)
	c.Stop(leader)
	c.WaitForNewLeader(leader, 20*time.Second)
	w.waitMore(t, 100, 20*time.Second)
	w.halt()
	w.verify(t, ctx, cl)

	// The old leader comes back from its data directory and catches up.
	c.Start(leader)
	c.WaitConverged(30 * time.Second)
	if l, ok := leader.Server.FSM().GetLock(mustKey(t, key(0))); !ok || l.Token != lock.Token {
		t.Errorf("restarted member's lock = %v, %v; want token %d", l, ok, lock.Token)
	}
}

// TestCluster_RestartCatchesUp stops a follower, writes, restarts it from its
// data directory and checks it has every write.
func TestCluster_RestartCatchesUp(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	cl := c.Client()
	ctx := cluster.Context(t, 60*time.Second)
	c.WaitForLeader(10 * time.Second)
	f := c.Followers()[0]
	c.Stop(f)
	keys := make([]*pb.ConnKey, 500)
	for i := range keys {
		keys[i] = key(i)
	}
	res, err := cl.ClaimBatch(ctx, keys, "m0")
	if err != nil {
		t.Fatalf("claim batch: %v", err)
	}
	for i, r := range res {
		if r.Status.Code != 0 {
			t.Fatalf("item %d: %v", i, r.Status)
		}
	}
	c.Start(f)
	c.WaitConverged(30 * time.Second)
	if n := f.Server.FSM().Stats().Claims; n != len(keys) {
		t.Fatalf("restarted follower has %d claims, want %d", n, len(keys))
	}
}

// followerClient starts a site of three and returns a follower and a
// client that talks to it alone (closed when the test ends).
func followerClient(t *testing.T) (*cluster.Member, *client.Client) {
	t.Helper()
	c := cluster.New(t, 3, cluster.Options{})
	c.WaitForLeader(10 * time.Second)
	f := c.Followers()[0]
	cl, err := client.New(client.Config{Addrs: []string{f.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return f, cl
}

// TestCluster_FollowerForwardsWrites sends writes to a follower only: they
// are forwarded to the leader, and an empty member ID means the follower.
func TestCluster_FollowerForwardsWrites(t *testing.T) {
	f, cl := followerClient(t)
	ctx := cluster.Context(t, 30*time.Second)
	claim, err := cl.Claim(ctx, key(7), "")
	if err != nil {
		t.Fatalf("claim via follower: %v", err)
	}
	if claim.MemberId != f.ID {
		t.Fatalf("claim with empty member_id sent to %s was recorded for %q", f.ID, claim.MemberId)
	}
	// A linearizable read through the follower sees it at once.
	own, err := cl.Lookup(ctx, key(7), linear)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	if own.Owner != f.ID || own.Claim.GetEpoch() != claim.Epoch {
		t.Fatalf("lookup = %v, want owner %s epoch %d", own, f.ID, claim.Epoch)
	}
	// The reverse direction of the flow is the same connection.
	k := key(7)
	rev := &pb.ConnKey{Protocol: 6, SrcIp: k.DstIp, SrcPort: k.DstPort, DstIp: k.SrcIp, DstPort: k.SrcPort}
	own, err = cl.Lookup(ctx, rev, linear)
	if err != nil || own.Owner != f.ID {
		t.Fatalf("lookup of reverse tuple = %v, %v; want owner %s", own, err, f.ID)
	}
}

// TestCluster_LockBatches: AcquireLockBatch and ReleaseLockBatch through a
// follower (forwarded to the leader). Each item behaves as its single call
// would: fresh keys are granted with growing tokens, a key another member
// holds is refused with its holder named; releases need the current token.
func TestCluster_LockBatches(t *testing.T) {
	f, cl := followerClient(t)
	ctx := cluster.Context(t, 30*time.Second)
	held, err := cl.AcquireLock(ctx, key(3), "m2", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	keys := []*pb.ConnKey{key(1), key(2), key(3), key(4)}
	res, err := cl.AcquireLockBatch(ctx, keys, "", 30*time.Second)
	if err != nil {
		t.Fatalf("acquire batch via follower: %v", err)
	}
	if len(res) != len(keys) {
		t.Fatalf("%d results for %d keys", len(res), len(keys))
	}
	var last uint64
	var mine []*pb.HeldLock
	for i, r := range res {
		if i == 2 {
			if codes.Code(r.Status.GetCode()) != codes.FailedPrecondition || r.Lock.GetMemberId() != "m2" || r.Lock.GetToken() != held.Token {
				t.Fatalf("key held by m2: %v, want FAILED_PRECONDITION naming m2's lock (token %d)", r, held.Token)
			}
			continue
		}
		if r.Status.GetCode() != 0 || r.Lock.GetMemberId() != f.ID || r.Lock.GetToken() <= max(last, held.Token) {
			t.Fatalf("item %d: %v, want granted to %s with a token above %d", i, r, f.ID, max(last, held.Token))
		}
		last = r.Lock.GetToken()
		mine = append(mine, &pb.HeldLock{Key: keys[i], Token: last})
	}
	mine[0].Token++ // not the current token: refused alone
	st, err := cl.ReleaseLockBatch(ctx, mine, "")
	if err != nil {
		t.Fatalf("release batch: %v", err)
	}
	if codes.Code(st[0].GetCode()) != codes.FailedPrecondition || st[1].GetCode() != 0 || st[2].GetCode() != 0 {
		t.Fatalf("release results %v, want the first refused (wrong token), the others done", st)
	}
	for i, k := range []*pb.ConnKey{key(1), key(2), key(4)} {
		_, err := cl.GetLock(ctx, k, linear)
		if free := status.Code(err) == codes.NotFound; free != (i > 0) {
			t.Fatalf("lock %d after the release batch: %v (free %v, want %v)", i, err, free, i > 0)
		}
	}
}

// TestCluster_NoQuorumIsUnavailable stops two of three members: writes fail
// with UNAVAILABLE (or time out) and nothing is half-applied.
func TestCluster_NoQuorumIsUnavailable(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	l := c.WaitForLeader(10 * time.Second)
	for _, f := range c.Followers() {
		c.Stop(f)
	}
	cl, err := client.New(client.Config{Addrs: []string{l.Addr()}, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	keys := []*pb.ConnKey{key(1), key(2), key(3)}
	_, err = cl.ClaimBatch(cluster.Context(t, 3*time.Second), keys, "m0")
	if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("write without quorum: got %v, want Unavailable", err)
	}
	// Bring the site back: the batch is either wholly applied or not at all.
	for _, m := range c.Members {
		if m.Server == nil {
			c.Start(m)
		}
	}
	c.WaitForLeader(20 * time.Second)
	c.WaitConverged(30 * time.Second)
	own, err := c.Client().LookupBatch(cluster.Context(t, 10*time.Second), keys, linear)
	if err != nil {
		t.Fatal(err)
	}
	claimed := 0
	for _, o := range own {
		if o.Claim != nil {
			claimed++
		}
	}
	if claimed != 0 && claimed != len(keys) {
		t.Fatalf("%d of %d claims of one batch applied: half-applied write", claimed, len(keys))
	}
}

// TestCluster_RetryAfterTheMemberFailedGetsTheFirstAnswer: a claim applied
// while its member was alive, retried (same header) after the member
// failed, answers what the first attempt did; a new claim for the failed
// member is refused (chaos seed 104 of TestChaos_Namespaces: the retry was
// refused as "member is FAILED", telling the client a claim that took effect
// did not).
func TestCluster_RetryAfterTheMemberFailedGetsTheFirstAnswer(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	l := c.WaitForLeader(10 * time.Second)
	var victim *cluster.Member
	for _, m := range c.Members {
		if m != l {
			victim = m
			break
		}
	}
	ctx := cluster.Context(t, 20*time.Second)
	own := pb.NewOwnershipServiceClient(dial(t, l.Addr()))
	req := &pb.ClaimRequest{Header: &pb.RequestHeader{ClientId: 43, Seq: 1}, Key: key(5), MemberId: victim.ID}
	first, err := own.Claim(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	c.Stop(victim)
	cluster.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if m, _ := l.Server.FSM().Member(victim.ID); m.State != pb.MemberState_MEMBER_STATE_FAILED {
			return fmt.Errorf("%s is %s", victim.ID, m.State)
		}
		return nil
	})
	again, err := own.Claim(ctx, req)
	if err != nil {
		t.Fatalf("retried claim after %s failed: %v (a retry must get the first outcome)", victim.ID, err)
	}
	if again.Claim.Epoch != first.Claim.Epoch || again.Claim.MemberId != victim.ID {
		t.Fatalf("retry got %v, first got %v", again.Claim, first.Claim)
	}
	req.Header.Seq = 2
	req.Key = key(6)
	if _, err := own.Claim(ctx, req); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a new claim for failed %s: got %v, want FailedPrecondition", victim.ID, err)
	}
	if _, err := own.Claim(ctx, &pb.ClaimRequest{Key: key(7), MemberId: victim.ID}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a claim without header for failed %s: got %v, want FailedPrecondition", victim.ID, err)
	}
}

// TestCluster_RetriedWriteAppliedOnce replays a request header: the site
// answers the first outcome instead of applying again.
func TestCluster_RetriedWriteAppliedOnce(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	l := c.WaitForLeader(10 * time.Second)
	ctx := cluster.Context(t, 20*time.Second)
	conn := dial(t, l.Addr())
	locks := pb.NewLockServiceClient(conn)
	req := &pb.AcquireLockRequest{Header: &pb.RequestHeader{ClientId: 42, Seq: 1, AckedSeq: 1},
		Key: key(3), MemberId: "m1", Ttl: durationpb.New(time.Minute)}
	first, err := locks.AcquireLock(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := locks.AcquireLock(ctx, req) // the "retry" after an unknown outcome
	if err != nil {
		t.Fatalf("retried acquire: %v (a retry must get the first outcome, not ErrLockHeld)", err)
	}
	if again.Lock.Token != first.Lock.Token {
		t.Fatalf("retry got token %d, first got %d: applied twice", again.Lock.Token, first.Lock.Token)
	}
	req.Header.Seq = 2
	if _, err := locks.AcquireLock(ctx, req); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a new request for a held lock: got %v, want FailedPrecondition", err)
	}
}
