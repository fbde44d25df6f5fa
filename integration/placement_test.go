package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
)

// TestCluster_FormsPlaced: a new site spreads its buckets over its members
// with synced backups, and once placed (cluster.New waits for it) the
// leader moves nothing more for a while: under the race detector a bucket
// once moved after an earlier rule had taken a map one bucket off its share
// as placed.
func TestCluster_FormsPlaced(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	l := c.WaitForLeader(0)
	if err := cluster.Placed(l.Server.FSM(), true); err != nil {
		t.Fatal(err)
	}
	placed, at := l.Server.FSM().Buckets()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) { // nothing may change: watch the whole time
		if now, applied := l.Server.FSM().Buckets(); !slices.Equal(now, placed) {
			t.Fatalf("the bucket map changed (applied index %d) after the site was placed (at %d)", applied, at)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// primaryOf returns the buckets each member is primary of in as.
func primaryOf(as []fsm.Assignment, id string) []uint32 {
	var out []uint32
	for i, a := range as {
		if a.Primary == id {
			out = append(out, uint32(i))
		}
	}
	return out
}

// TestCluster_IsolatedMemberFailsOver: a member cut off from the rest of the
// site (Raft, gRPC and gossip) stops acting once its lease runs out, its
// buckets move to their synced backups, the voter it was is replaced by the
// non-voter, and after the cut heals it joins again and the site ends
// balanced with epochs that only grew.
func TestCluster_IsolatedMemberFailsOver(t *testing.T) {
	// No automatic rebalance: the check below sees the failover's choice,
	// not a rebalance that might follow it within the same poll.
	c := cluster.New(t, 4, cluster.Options{Tweak: func(cfg *server.Config) { cfg.AutoRebalance = false }})
	c.WaitForLeader(10 * time.Second)
	victim := c.Followers()[0]
	before := c.Assignments()
	mine := primaryOf(before, victim.ID)
	c.Isolate(victim)
	cluster.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		now := c.Assignments()
		for _, b := range mine {
			if now[b].Primary == victim.ID {
				return fmt.Errorf("bucket %d still on %s", b, victim.ID)
			}
			if !heldCopy(before[b], now[b].Primary) {
				t.Fatalf("bucket %d went to %s, which held no complete copy: %+v", b, now[b].Primary, before[b])
			}
		}
		return nil
	})
	// Cut off, it has no lease and acts for nothing.
	cluster.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		act, _ := victim.Server.Active()
		if len(act) > 0 {
			return fmt.Errorf("isolated %s still acts for %d buckets", victim.ID, len(act))
		}
		return nil
	})
	// A failed voter is replaced by the healthy non-voter: three voters, all
	// alive, the victim not among them.
	if v := waitVoters(t, c, 3); slices.Contains(v, victim.ID) {
		t.Fatalf("voters %v still include the failed %s", v, victim.ID)
	}
	c.HealAll()
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		m, _ := c.WaitForLeader(10 * time.Second).Server.FSM().Member(victim.ID)
		if m.State != pb.MemberState_MEMBER_STATE_ALIVE {
			return fmt.Errorf("%s is %s", victim.ID, m.State)
		}
		return nil
	})
	c.WaitPlaced(30 * time.Second)
	cluster.CheckEpochsGrew(t, before, c.Assignments())
	if p := primaryOf(c.Assignments(), victim.ID); len(p) == 0 {
		t.Fatalf("%s holds no bucket after it rejoined", victim.ID)
	}
}

// gate is a BackupSyncer whose syncs wait until it is opened.
type gate struct {
	once sync.Once
	open chan struct{}
}

func (g *gate) Sync(ctx context.Context, _ uint32, _ fsm.Assignment) error {
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stuckSyncer is a BackupSyncer whose syncs never finish by themselves: a
// primary that will never send the marker. It counts the syncs under way and
// those cancelled.
type stuckSyncer struct{ active, cancelled atomic.Int64 }

func (g *stuckSyncer) Sync(ctx context.Context, _ uint32, _ fsm.Assignment) error {
	g.active.Add(1)
	defer g.active.Add(-1)
	<-ctx.Done()
	g.cancelled.Add(1)
	return ctx.Err()
}

// TestCluster_SyncCancelledWhenItsRoleGoesAway: a member's full syncs whose
// role goes away (here: the moves to a joiner, undone by draining it) are
// cancelled through their context, as BackupSyncer's contract allows. The
// replicator's own Sync also gives up once the bucket's epoch moves on; a
// syncer that does not (this test's) held the member's few sync slots for
// good, and the member never synced again.
func TestCluster_SyncCancelledWhenItsRoleGoesAway(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	cl := c.Client()
	ctx := cluster.Context(t, 60*time.Second)
	g := &stuckSyncer{}
	joiner := c.AddMember(func(cfg *server.Config) { cfg.Syncer = g })
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if g.active.Load() == 0 {
			return fmt.Errorf("%s runs no sync yet", joiner.ID)
		}
		return nil
	})
	t.Logf("%s waits for %d syncs", joiner.ID, g.active.Load())
	if _, err := cl.Drain(ctx, joiner.ID); err != nil {
		t.Fatal(err)
	}
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for i, a := range c.Assignments() {
			if a.Primary == joiner.ID || a.LocalBackup == joiner.ID || a.Incoming == joiner.ID {
				return fmt.Errorf("bucket %d still uses %s: %+v", i, joiner.ID, a)
			}
		}
		if n := g.active.Load(); n != 0 {
			return fmt.Errorf("%d syncs of %s still wait, though it holds no role", n, joiner.ID)
		}
		return nil
	})
	if g.cancelled.Load() == 0 {
		t.Fatal("no sync was cancelled")
	}
}

// TestCluster_JoinUnderLoadIsMakeBeforeBreak: a member that joins while
// clients write takes buckets only after its full sync has finished; until
// then the buckets keep their primary and synced backup. No acknowledged
// write is lost and epochs only grow.
func TestCluster_JoinUnderLoadIsMakeBeforeBreak(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	cl := c.Client()
	ctx := cluster.Context(t, 60*time.Second)
	w := startClaimWriters(t, ctx, cl, "m1", 0, 4)
	w.waitMore(t, 50, 10*time.Second)
	before := c.Assignments()
	g := &gate{open: make(chan struct{})}
	joiner := c.AddMember(func(cfg *server.Config) { cfg.Syncer = g })
	// Moves to the joiner start, and wait for its sync.
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		n := 0
		for _, a := range c.Assignments() {
			if a.Incoming == joiner.ID && a.IncomingPrimary {
				n++
			}
		}
		if n == 0 {
			return fmt.Errorf("no bucket moving to %s yet", joiner.ID)
		}
		return nil
	})
	w.waitMore(t, 50, 10*time.Second)
	for i, a := range c.Assignments() {
		if a.Primary == joiner.ID || a.LocalBackup == joiner.ID {
			t.Fatalf("bucket %d gave %s a role before its sync finished: %+v", i, joiner.ID, a)
		}
		if a.Incoming == joiner.ID && (!a.BackupSynced || a.Primary != before[i].Primary) {
			t.Fatalf("bucket %d lost its primary or synced backup while moving: %+v (was %+v)", i, a, before[i])
		}
	}
	g.once.Do(func() { close(g.open) })
	c.WaitPlaced(30 * time.Second)
	if len(primaryOf(c.Assignments(), joiner.ID)) == 0 {
		t.Fatalf("%s is primary of nothing after its sync", joiner.ID)
	}
	w.waitMore(t, 50, 10*time.Second)
	w.halt()
	w.verify(t, ctx, cl)
	cluster.CheckEpochsGrew(t, before, c.Assignments())
}

// TestCluster_DrainLeader: draining the leader moves every bucket off it,
// hands leadership to another member, and lets it be removed.
func TestCluster_DrainLeader(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	leader := c.WaitForLeader(10 * time.Second)
	cl := c.Client()
	ctx := cluster.Context(t, 60*time.Second)
	before := c.Assignments()
	if _, err := cl.Drain(ctx, leader.ID); err != nil {
		t.Fatal(err)
	}
	newLeader := c.WaitForNewLeader(leader, 20*time.Second)
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for i, a := range c.Assignments() {
			if a.Primary == leader.ID || a.LocalBackup == leader.ID || a.Incoming == leader.ID {
				return fmt.Errorf("bucket %d still uses %s: %+v", i, leader.ID, a)
			}
		}
		return nil
	})
	if err := cl.RemoveMember(ctx, leader.ID); err != nil {
		t.Fatalf("remove drained %s: %v", leader.ID, err)
	}
	c.Stop(leader)
	c.WaitPlaced(30 * time.Second)
	cluster.CheckEpochsGrew(t, before, c.Assignments())
	t.Logf("drained %s; %s leads", leader.ID, newLeader.ID)
}

// TestCluster_WatchAssignmentsResumes: a watch from 0 gets the whole map;
// one resumed from a revision gets exactly the assignments changed since,
// and applying them to the old map gives the new one.
func TestCluster_WatchAssignmentsResumes(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	c.WaitForLeader(10 * time.Second)
	home := c.Followers()[0]
	wc, err := client.New(client.Config{Addrs: []string{home.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	ctx := cluster.Context(t, 60*time.Second)
	first := recvOne(t, ctx, wc, 0)
	if !first.FullMap || len(first.Assignments) != fsm.DefaultBucketCount {
		t.Fatalf("watch from 0: full %v, %d assignments", first.FullMap, len(first.Assignments))
	}
	known := map[uint32]*pb.Assignment{}
	for _, a := range first.Assignments {
		known[a.Bucket] = a
	}
	// Change the map: drain a member, and wait until the watcher's member
	// has applied the end state.
	victim := c.Followers()[1]
	if _, err := c.Client().Drain(ctx, victim.ID); err != nil {
		t.Fatal(err)
	}
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		as, _ := home.Server.FSM().Buckets()
		for i, a := range as {
			if a.Primary == victim.ID || a.LocalBackup == victim.ID || a.Incoming != "" {
				return fmt.Errorf("bucket %d: %+v", i, a)
			}
		}
		return nil
	})
	resumed := recvOne(t, ctx, wc, first.Revision)
	if resumed.FullMap || len(resumed.Assignments) == 0 || len(resumed.Assignments) == fsm.DefaultBucketCount {
		t.Fatalf("resumed watch: full %v, %d assignments; want only the changed ones", resumed.FullMap, len(resumed.Assignments))
	}
	for _, a := range resumed.Assignments {
		if a.Revision <= first.Revision {
			t.Fatalf("resumed watch sent bucket %d at revision %d <= %d", a.Bucket, a.Revision, first.Revision)
		}
		known[a.Bucket] = a
	}
	as, _ := home.Server.FSM().Buckets()
	for i, a := range as {
		if got := known[uint32(i)]; got.Primary != a.Primary || got.Epoch != a.Epoch || got.Revision != a.Revision {
			t.Fatalf("bucket %d: watcher has %v, member has %+v", i, got, a)
		}
	}
}

func recvOne(t *testing.T, ctx context.Context, wc *client.Client, from uint64) *pb.WatchAssignmentsResponse {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := wc.WatchAssignments(wctx, from)
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestCluster_StopMemberThenLeader: in a 5-member site, stopping a follower
// and then the leader each moves every bucket of the stopped member to its
// synced backup; the site ends placed over the three left, epochs grown.
func TestCluster_StopMemberThenLeader(t *testing.T) {
	c := cluster.New(t, 5, cluster.Options{Tweak: func(cfg *server.Config) { cfg.AutoRebalance = false }})
	first := c.Assignments()
	leader := c.WaitForLeader(10 * time.Second)
	for _, victim := range []*cluster.Member{c.Followers()[0], leader} {
		before := c.Assignments()
		mine := primaryOf(before, victim.ID)
		c.Stop(victim)
		cluster.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			now := c.Assignments()
			for _, b := range mine {
				if now[b].Primary == victim.ID {
					return fmt.Errorf("bucket %d still on %s", b, victim.ID)
				}
				if !heldCopy(before[b], now[b].Primary) {
					t.Fatalf("bucket %d of %s went to %s, which held no complete copy: %+v", b, victim.ID, now[b].Primary, before[b])
				}
			}
			return nil
		})
		c.WaitPlaced(30 * time.Second)
		cluster.CheckEpochsGrew(t, before, c.Assignments())
		waitVoters(t, c, 3)
	}
	cluster.CheckEpochsGrew(t, first, c.Assignments())
}

// heldCopy reports whether member held a complete copy of bucket a: it was
// its synced local backup or synced incoming member.
func heldCopy(a fsm.Assignment, member string) bool {
	return (a.LocalBackup == member && a.BackupSynced) || (a.Incoming == member && a.IncomingSynced)
}

// waitVoters waits until the leader's Raft configuration has n voters, all
// alive members, and returns them.
func waitVoters(t *testing.T, c *cluster.Cluster, n int) []string {
	t.Helper()
	var voters []string
	cluster.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		l := c.WaitForLeader(10 * time.Second)
		cf := l.Server.Raft().GetConfiguration()
		if err := cf.Error(); err != nil {
			return err
		}
		voters = nil
		for _, srv := range cf.Configuration().Servers {
			if srv.Suffrage != raft.Voter {
				continue
			}
			if m, _ := l.Server.FSM().Member(string(srv.ID)); m.State != pb.MemberState_MEMBER_STATE_ALIVE {
				return fmt.Errorf("voter %s is %s", srv.ID, m.State)
			}
			voters = append(voters, string(srv.ID))
		}
		if len(voters) != n {
			return fmt.Errorf("voters %v, want %d", voters, n)
		}
		return nil
	})
	return voters
}
