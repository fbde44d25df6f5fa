package integration

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
)

// TestCluster_IsolatedLeaderCannotCommit cuts the leader off from the other
// members (a client can still reach it). The majority elects a new leader and
// keeps accepting writes; a write sent to the isolated old leader is never
// acknowledged and, after the heal, is not in anyone's state.
func TestCluster_IsolatedLeaderCannotCommit(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	old := c.WaitForLeader(10 * time.Second)
	c.Isolate(old)

	isolated, err := client.New(client.Config{Addrs: []string{old.Addr()}, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer isolated.Close()
	_, err = isolated.Claim(cluster.Context(t, 3*time.Second), key(500), "m0")
	if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("claim through the isolated leader: %v, want Unavailable or DeadlineExceeded", err)
	}

	newLeader := c.WaitForNewLeader(old, 20*time.Second)
	majority, err := client.New(client.Config{Addrs: []string{newLeader.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer majority.Close()
	ctx := cluster.Context(t, 30*time.Second)
	claim, err := majority.Claim(ctx, key(501), "m1")
	if err != nil {
		t.Fatalf("claim on the majority side: %v", err)
	}

	c.HealAll()
	c.WaitConverged(30 * time.Second)
	own, err := majority.LookupBatch(ctx, []*pb.ConnKey{key(500), key(501)}, linear)
	if err != nil {
		t.Fatal(err)
	}
	if own[0].Claim != nil {
		t.Errorf("write sent to the isolated leader is present after heal: %v", own[0].Claim)
	}
	if own[1].Claim.GetEpoch() != claim.Epoch {
		t.Errorf("majority-side claim = %v, want epoch %d", own[1].Claim, claim.Epoch)
	}
}

// TestCluster_FollowerCatchesUpBySnapshot stops a follower, writes enough that
// the leader snapshots and compacts its log past the follower's position, and
// restarts the follower: it must install the snapshot and end identical.
func TestCluster_FollowerCatchesUpBySnapshot(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{Tweak: func(cfg *server.Config) {
		cfg.SnapshotThreshold = 64
		cfg.TrailingLogs = 8
	}})
	leader := c.WaitForLeader(10 * time.Second)
	f := c.Followers()[0]
	c.Stop(f)
	cl := c.Client()
	ctx := cluster.Context(t, 60*time.Second)
	const n = 300
	lock, err := cl.AcquireLock(ctx, key(0), "m0", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ { // one entry each, so the log outgrows the threshold
		if _, err := cl.Claim(ctx, key(i), "m0"); err != nil {
			t.Fatalf("claim %d: %v", i, err)
		}
	}
	if err := leader.Server.Raft().Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	c.Start(f)
	c.WaitConverged(30 * time.Second)
	// Raft restores the FSM before it records the installed snapshot in its
	// stats, so the FSMs can already be equal here: poll for the record.
	cluster.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if f.Server.LastSnapshotIndex() == 0 {
			return fmt.Errorf("follower has no snapshot (stats %v): InstallSnapshot was not exercised", f.Server.Raft().Stats())
		}
		return nil
	})
	if got := f.Server.FSM().Stats().Claims; got != n {
		t.Fatalf("follower has %d claims after snapshot install, want %d", got, n)
	}
	if l, ok := f.Server.FSM().GetLock(mustKey(t, key(0))); !ok || l.Token != lock.Token {
		t.Fatalf("follower's lock after snapshot install = %+v %v, want token %d", l, ok, lock.Token)
	}
	// The whole site restarts from snapshots plus logs and still agrees.
	for _, m := range c.Members {
		c.Stop(m)
	}
	for _, m := range c.Members {
		c.Start(m)
	}
	c.WaitForLeader(20 * time.Second)
	c.WaitConverged(30 * time.Second)
	if got := c.Members[0].Server.FSM().Stats().Claims; got != n {
		t.Fatalf("after a full restart: %d claims, want %d", got, n)
	}
}

// TestCluster_StaleSnapshotRefused reproduces the state behind
// hashicorp/raft#697, which the chaos suite hit as a follower panic: the
// leader cannot find the entry before a follower's next one and falls back to
// its latest snapshot, which is older than what the follower applied and
// compacted away. Installed, it would move the follower's applied index back
// over entries it no longer has (its state machine goes back in time, and the
// next commit panics). The follower must refuse it, ask for a newer one in
// its heartbeats, and the leader must take one, so the follower catches up.
// The leader's missing entry is injected by hiding already-applied entries
// from its log store; the rest is the real path.
func TestCluster_StaleSnapshotRefused(t *testing.T) {
	hidden := map[string]*atomic.Uint64{}
	for i := range 3 {
		hidden[fmt.Sprintf("m%d", i)] = new(atomic.Uint64)
	}
	c := cluster.New(t, 3, cluster.Options{Tweak: func(cfg *server.Config) {
		cfg.SnapshotThreshold = 1 << 40 // snapshots only when the test (or a follower) asks
		cfg.TrailingLogs = 8
		h := hidden[cfg.MemberID]
		if h == nil {
			t.Fatalf("member %q: the test expects IDs m0..m2", cfg.MemberID)
		}
		cfg.WrapLogStore = func(ls raft.LogStore) raft.LogStore { return &hidingStore{LogStore: ls, upTo: h} }
	}})
	leader := c.WaitForLeader(10 * time.Second)
	cl := c.Client()
	ctx := cluster.Context(t, 60*time.Second)
	claims := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := cl.Claim(ctx, key(i), "m0"); err != nil {
				t.Fatalf("claim %d: %v", i, err)
			}
		}
	}
	lastSnap := func(m *cluster.Member) uint64 { return m.Server.LastSnapshotIndex() }
	claims(0, 20)
	if err := leader.Server.Raft().Snapshot().Error(); err != nil {
		t.Fatalf("leader snapshot: %v", err)
	}
	old := lastSnap(leader)
	claims(20, 120)
	c.WaitConverged(30 * time.Second)
	followers := c.Followers()
	applied := map[string]uint64{}
	for _, f := range followers {
		if err := f.Server.Raft().Snapshot().Error(); err != nil {
			t.Fatalf("%s snapshot: %v", f.ID, err)
		}
		applied[f.ID] = f.Server.FSM().AppliedIndex()
		if lastSnap(f) <= old {
			t.Fatalf("%s's last snapshot is at %d, not past the leader's %d", f.ID, lastSnap(f), old)
		}
	}
	// Watch the followers' state machines: they must never go back.
	stop := make(chan struct{})
	back := make(chan string, 1)
	go func() {
		for {
			for _, f := range followers {
				if got := f.Server.FSM().AppliedIndex(); got < applied[f.ID] {
					select {
					case back <- fmt.Sprintf("%s's state machine went back from index %d to %d", f.ID, applied[f.ID], got):
					default:
					}
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	defer close(stop)
	// Hide the leader's applied entries until a follower has refused its
	// old snapshot (entries it has applied are never read for applying).
	h := hidden[leader.ID]
	wentBack := func() {
		t.Helper()
		select {
		case msg := <-back:
			t.Fatal(msg)
		default:
		}
	}
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		wentBack()
		h.Store(leader.Server.Raft().AppliedIndex())
		for _, f := range followers {
			if n, _ := f.Server.FSM().StaleRestores(); n > 0 {
				return nil
			}
		}
		return fmt.Errorf("no follower refused the leader's snapshot at %d yet", old)
	})
	// The leader takes a newer snapshot on the follower's word, and the
	// site goes on committing with the entries still hidden.
	cluster.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if got := lastSnap(leader); got <= old {
			return fmt.Errorf("leader's last snapshot is still at %d", got)
		}
		return nil
	})
	claims(120, 140)
	h.Store(0)
	claims(140, 160)
	c.WaitConverged(30 * time.Second)
	wentBack()
	for _, f := range followers {
		n, at := f.Server.FSM().StaleRestores()
		t.Logf("%s refused %d stale snapshots (applied %d at the last)", f.ID, n, at)
	}
	if got := leader.Server.FSM().Stats().Claims; got != 160 {
		t.Fatalf("%d claims, want 160", got)
	}
}

// hidingStore answers ErrLogNotFound for the entries up to upTo (0: none).
type hidingStore struct {
	raft.LogStore
	upTo *atomic.Uint64
}

func (s *hidingStore) GetLog(index uint64, l *raft.Log) error {
	if index <= s.upTo.Load() {
		return raft.ErrLogNotFound
	}
	return s.LogStore.GetLog(index, l)
}

// TestCluster_LeaderCutOffWithNonvoterConfirmsNothing cuts the leader off
// together with a non-voter: it holds one of the three voters, so it no
// longer leads, though Raft keeps it leader until its leader lease (long
// here) runs out. It must neither answer a linearizable read nor go on
// acting as primary. hashicorp/raft's VerifyLeader counted the non-voter's
// heartbeat answers towards the voters' quorum and confirmed it (chaos seed
// 7176); leadership is now confirmed by asking the voters (server/confirm.go).
func TestCluster_LeaderCutOffWithNonvoterConfirmsNothing(t *testing.T) {
	c := cluster.New(t, 4, cluster.Options{Tweak: func(cfg *server.Config) {
		// Raft steps a leader down only after this long without a quorum.
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 4*time.Second, 4*time.Second, 4*time.Second
	}})
	c.WaitPlaced(60 * time.Second)
	voters := waitVoters(t, c, 3)
	l := c.WaitForLeader(10 * time.Second)
	var nonvoter string
	for _, m := range c.Members {
		if !slices.Contains(voters, m.ID) {
			nonvoter = m.ID
		}
	}
	var rest []string
	for _, id := range voters {
		if id != l.ID {
			rest = append(rest, id)
		}
	}
	if active, _ := l.Server.Active(); len(active) == 0 {
		t.Fatalf("leader %s acts for no bucket before the cut", l.ID)
	}
	c.Hub.Partition([]string{l.ID, nonvoter}, rest)
	t.Logf("cut off leader %s with non-voter %s from voters %v", l.ID, nonvoter, rest)

	// Its lease, and so its acting, lasts at most a member lease after its
	// last confirmation; Raft keeps it leader for 4-8 s.
	cluster.CheckFor(t, 1500*time.Millisecond, 10*time.Millisecond, func() error {
		if l.Server.Raft().State() != raft.Leader {
			t.Fatalf("Raft stepped %s down before its lease ran out: the test proves nothing", l.ID)
		}
		if active, _ := l.Server.Active(); len(active) > 0 {
			return fmt.Errorf("%s still acts for %d buckets", l.ID, len(active))
		}
		return nil
	})
	cl, err := client.New(client.Config{Addrs: []string{l.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.LookupBatch(cluster.Context(t, time.Second), []*pb.ConnKey{key(1)}, linear); err == nil {
		t.Fatalf("a linearizable read at %s, cut off from two of three voters, succeeded", l.ID)
	}
	if l.Server.Raft().State() != raft.Leader {
		t.Fatalf("Raft stepped %s down before the checks ended: the test proves nothing", l.ID)
	}
}
