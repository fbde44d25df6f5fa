package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
)

func raftIDs(t *testing.T, m *cluster.Member) []string {
	t.Helper()
	f := m.Server.Raft().GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		ids = append(ids, fmt.Sprintf("%s@%s/%s", s.ID, s.Address, s.Suffrage))
	}
	return ids
}

func sameIDs(a, b []string) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// TestCluster_EmptyMemberMeansFirstAddress: a client whose first address is
// member A claims with member "" for A, also after its calls moved to other
// members because A went down (the meaning must not drift): the claim is then
// refused because A has been failed over, and never made for another member.
func TestCluster_EmptyMemberMeansFirstAddress(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	c.WaitForLeader(10 * time.Second)
	home := c.Followers()[0]
	addrs := []string{home.Addr()}
	for _, m := range c.Members {
		if m != home {
			addrs = append(addrs, m.Addr())
		}
	}
	cl, err := client.New(client.Config{Addrs: addrs, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := cluster.Context(t, 30*time.Second)
	first, err := cl.Claim(ctx, key(1), "")
	if err != nil || first.MemberId != home.ID {
		t.Fatalf("claim with empty member via %s = %v, %v; want member %s", home.ID, first, err, home.ID)
	}
	c.Stop(home) // calls now go elsewhere
	second, err := cl.Claim(ctx, key(2), "")
	switch {
	case err == nil && second.MemberId != home.ID:
		t.Fatalf("claim with empty member after %s stopped went to %s", home.ID, second.MemberId)
	case err != nil && (status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), home.ID)):
		t.Fatalf("claim with empty member after %s stopped = %v; want success for %s or FailedPrecondition naming it", home.ID, err, home.ID)
	}
}

// TestCluster_RefusedJoinChangesNothing: a join that collides with another
// member's address, or that would move the leader, is refused and leaves the
// Raft configuration exactly as it was.
func TestCluster_RefusedJoinChangesNothing(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	leader := c.WaitForLeader(10 * time.Second)
	fs := c.Followers()
	before := raftIDs(t, leader)
	op := pb.NewOperatorServiceClient(dial(t, leader.Addr()))
	ctx := cluster.Context(t, 20*time.Second)
	for name, req := range map[string]*pb.JoinRequest{
		"address of another member": {MemberId: fs[0].ID, Site: "site1", RaftAddr: fs[1].Config.RaftAdvertise, GrpcAddr: fs[0].Addr()},
		"new member, taken address": {MemberId: "m9", Site: "site1", RaftAddr: fs[1].Config.RaftAdvertise, GrpcAddr: "127.0.0.1:1"},
		"move the leader":           {MemberId: leader.ID, Site: "site1", RaftAddr: "127.0.0.1:1", GrpcAddr: leader.Addr()},
	} {
		_, err := op.Join(ctx, req)
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: join = %v, want FailedPrecondition", name, err)
		}
		if after := raftIDs(t, leader); !sameIDs(before, after) {
			t.Fatalf("%s: configuration changed by a refused join: %v -> %v", name, before, after)
		}
	}
	// Joining again with the same addresses is a no-op that succeeds.
	if _, err := op.Join(ctx, &pb.JoinRequest{MemberId: fs[0].ID, Site: "site1",
		RaftAddr: fs[0].Config.RaftAdvertise, GrpcAddr: fs[0].Addr()}); err != nil {
		t.Fatalf("idempotent re-join: %v", err)
	}
	if after := raftIDs(t, leader); !sameIDs(before, after) {
		t.Fatalf("configuration changed by a re-join: %v -> %v", before, after)
	}
}

// TestCluster_RemoveMember: the leader refuses to remove itself (nothing
// changes); a follower that still holds buckets is refused until drained;
// removing the drained follower takes it out of Raft and marks it left, and
// a repeat succeeds without changing anything.
func TestCluster_RemoveMember(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	leader := c.WaitForLeader(10 * time.Second)
	victim := c.Followers()[0]
	cl := c.Client()
	ctx := cluster.Context(t, 30*time.Second)
	before := raftIDs(t, leader)
	if err := cl.RemoveMember(ctx, leader.ID); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("remove the leader: %v, want FailedPrecondition", err)
	}
	if after := raftIDs(t, leader); !sameIDs(before, after) {
		t.Fatalf("refused removal changed the configuration: %v -> %v", before, after)
	}
	if m, _ := leader.Server.FSM().Member(leader.ID); m.State != pb.MemberState_MEMBER_STATE_ALIVE {
		t.Fatalf("refused removal left the leader %s", m.State)
	}
	if err := cl.RemoveMember(ctx, victim.ID); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "drain") {
		t.Fatalf("remove %s holding buckets: %v, want FailedPrecondition telling to drain", victim.ID, err)
	}
	if _, err := cl.Drain(ctx, victim.ID); err != nil {
		t.Fatalf("drain %s: %v", victim.ID, err)
	}
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		as, _ := c.WaitForLeader(10 * time.Second).Server.FSM().Buckets()
		for i, a := range as {
			if a.Primary == victim.ID || a.LocalBackup == victim.ID {
				return fmt.Errorf("bucket %d still on %s: %+v", i, victim.ID, a)
			}
		}
		return nil
	})
	for i := 0; i < 2; i++ {
		if err := cl.RemoveMember(ctx, victim.ID); err != nil {
			t.Fatalf("remove %s (attempt %d): %v", victim.ID, i+1, err)
		}
	}
	cluster.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		l := c.Leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		for _, s := range raftIDs(t, l) {
			if s[:len(victim.ID)+1] == victim.ID+"@" {
				return fmt.Errorf("%s still in %v", victim.ID, raftIDs(t, l))
			}
		}
		if m, _ := l.Server.FSM().Member(victim.ID); m.State != pb.MemberState_MEMBER_STATE_LEFT {
			return fmt.Errorf("%s is %s", victim.ID, m.State)
		}
		return nil
	})
}

// TestCluster_SingleVoterTransferRefused: with one voter there is nobody to
// hand leadership to; that is a FailedPrecondition, not an internal error.
func TestCluster_SingleVoterTransferRefused(t *testing.T) {
	c := cluster.New(t, 1, cluster.Options{})
	c.WaitForLeader(10 * time.Second)
	_, err := c.Client().TransferLeadership(cluster.Context(t, 10*time.Second), "")
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("transfer on a single voter: %v, want FailedPrecondition", err)
	}
}

// TestCluster_WrongSiteAbdicates: a member restarted with another site name
// than its data directory holds is given leadership; it must not serve (its
// configuration contradicts the replicated state) and must hand leadership
// on, so the site keeps accepting writes.
func TestCluster_WrongSiteAbdicates(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	c.WaitForLeader(10 * time.Second)
	bad := c.Followers()[0]
	c.Stop(bad)
	bad.Config.Site = "elsewhere"
	c.Start(bad)
	c.WaitConverged(20 * time.Second)
	cl := c.Client()
	ctx := cluster.Context(t, 30*time.Second)
	if _, err := cl.TransferLeadership(ctx, bad.ID); err != nil {
		t.Fatalf("transfer to %s: %v", bad.ID, err)
	}
	// A healthy leader takes over and writes go on.
	var healthy string
	cluster.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if bad.Server.IsLeader() {
			return fmt.Errorf("misconfigured %s reports ready", bad.ID)
		}
		l := c.Leader()
		if l == nil || l == bad {
			return fmt.Errorf("no healthy ready leader")
		}
		healthy = l.ID
		return nil
	})
	if _, err := cl.Claim(ctx, key(1), healthy); err != nil {
		t.Fatalf("claim for %s after the misconfigured %s abdicated: %v", healthy, bad.ID, err)
	}
	if bad.Server.IsLeader() {
		t.Fatalf("misconfigured %s became a ready leader", bad.ID)
	}
}

// TestCluster_WrongSiteAloneNeverServes: alone, a misconfigured member wins
// the election but never becomes ready, so it serves no writes.
func TestCluster_WrongSiteAloneNeverServes(t *testing.T) {
	c := cluster.New(t, 1, cluster.Options{})
	m := c.WaitForLeader(10 * time.Second)
	c.Stop(m)
	m.Config.Site = "elsewhere"
	c.Start(m)
	cluster.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if m.Server.Raft().State() != raft.Leader {
			return fmt.Errorf("not leader yet")
		}
		return nil
	})
	cl, err := client.New(client.Config{Addrs: []string{m.Addr()}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = cl.Claim(ctx, key(1), "m0")
	if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("write to a leader whose site is wrong: %v, want Unavailable", err)
	}
	if m.Server.IsLeader() {
		t.Fatal("a leader whose configured site contradicts its state reports ready")
	}
}

// TestCluster_CallOnceSkipsDeadMember: a call that must not be repeated
// (rebalance, leadership transfer) still gets past a member that refuses
// connections: the call never reached it, so sending it on is safe.
func TestCluster_CallOnceSkipsDeadMember(t *testing.T) {
	c := cluster.New(t, 1, cluster.Options{})
	dead := freeAddr(t) // nothing listens there
	cl, err := client.New(client.Config{Addrs: []string{dead, c.Members[0].Addr()}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := cluster.Context(t, 20*time.Second)
	if _, err := cl.Rebalance(ctx, true); err != nil {
		t.Fatalf("rebalance with a dead first address: %v", err)
	}
	if _, err := cl.TransferLeadership(ctx, c.Members[0].ID); err != nil {
		t.Fatalf("transfer-leader with a dead first address: %v", err)
	}
}
