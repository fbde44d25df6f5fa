package proccluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/server/placement"
)

// pollInterval is how often the Wait functions ask the site.
const pollInterval = 50 * time.Millisecond

// callTimeout bounds each question the Wait functions ask, so a poll loop
// keeps its pace while members die and restart.
const callTimeout = 2 * time.Second

// poll runs check every pollInterval until it returns nil, ctx ends (the
// error then says what check last reported) or a member dies unexpectedly.
func (c *Cluster) poll(ctx context.Context, what string, check func(ctx context.Context) error) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last seen: %v)", what, ctx.Err(), last)
		case <-c.died:
			return c.Err()
		case <-t.C:
		}
	}
}

// WaitReady waits until the site has a leader and every member of the
// cluster is ALIVE in its state machine (a linearizable read, so the leader
// has confirmed it).
func (c *Cluster) WaitReady(ctx context.Context) error {
	cl, err := c.Client(callTimeout)
	if err != nil {
		return err
	}
	defer cl.Close()
	return c.poll(ctx, "waiting for a leader and every member ALIVE", func(ctx context.Context) error {
		ms, err := cl.Members(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return err
		}
		state := map[string]pb.MemberState{}
		for _, m := range ms {
			state[m.Id] = m.State
		}
		for _, m := range c.members {
			if s := state[m.ID]; s != pb.MemberState_MEMBER_STATE_ALIVE {
				return fmt.Errorf("member %s is %v", m.ID, s)
			}
		}
		return nil
	})
}

// Leader returns the index of the member that says it is the Raft leader
// (the one with the highest term if, briefly, two do), waiting for one.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	leader := -1
	err := c.poll(ctx, "waiting for a leader", func(ctx context.Context) error {
		var term uint64
		leader = -1
		for i, m := range c.members {
			if !c.Running(i) {
				continue
			}
			st, err := statusOf(ctx, m.GRPC)
			if err != nil {
				continue
			}
			if st.RaftState == "Leader" && st.MemberId == m.ID && (leader < 0 || st.Term > term) {
				leader, term = i, st.Term
			}
		}
		if leader < 0 {
			return errors.New("no member says it leads")
		}
		return nil
	})
	return leader, err
}

// statusOf asks the member at addr for its own status (no redirection).
func statusOf(ctx context.Context, addr string) (*pb.StatusResponse, error) {
	cl, err := client.New(client.Config{Addrs: []string{addr}, Timeout: callTimeout})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return cl.Status(ctx)
}

// WaitSettled waits until the site is settled (see Settled) with every
// member of the cluster ALIVE. With rebalance set it asks the leader for a
// rebalance while the primaries are uneven, as a site started with
// -auto-rebalance=false needs.
func (c *Cluster) WaitSettled(ctx context.Context, rebalance bool) error {
	cl, err := c.Client(callTimeout)
	if err != nil {
		return err
	}
	defer cl.Close()
	var asked time.Time
	return c.poll(ctx, "waiting for the site to settle", func(ctx context.Context) error {
		ms, err := cl.Members(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return err
		}
		r, err := cl.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return err
		}
		err = Settled(ms, r.Assignments, len(c.members), false, !rebalance)
		if err != nil && rebalance && time.Since(asked) > 250*time.Millisecond {
			asked = time.Now()
			_, _ = cl.Rebalance(ctx, false) // refused while the map changes: the next poll asks again
		}
		return err
	})
}

// Settled applies the rule the integration tests call "placed" (see
// integration/cluster.Placed) to a site's members and bucket map: want
// members are ALIVE (0: any number), every bucket's primary is alive, its
// local backup is another alive member and fully synced (when more than one
// member is alive), no make-before-break move is under way, and the leader's
// planner would start none: every alive member is primary of exactly its
// weighted share (so placement.Rebalance plans nothing) and, with backups (the
// site rebalances local backups on its own: AutoRebalance), no member holds
// more local backups than placement.RebalanceBackups tolerates. A settled map
// stays as it is until a member joins, leaves or fails. A standby site syncs
// no local backups (docs/SITES.md), so for one they need not be synced. It
// returns nil, or the first thing that is not settled yet.
func Settled(members []*pb.Member, as []*pb.Assignment, want int, standby, backups bool) error {
	var alive []placement.Member
	ok := map[string]bool{}
	for _, m := range members {
		if m.State == pb.MemberState_MEMBER_STATE_ALIVE {
			alive = append(alive, placement.Member{ID: m.Id, Weight: m.Weight})
			ok[m.Id] = true
		}
	}
	if want > 0 && len(alive) != want {
		return fmt.Errorf("%d members ALIVE, want %d", len(alive), want)
	}
	if len(as) == 0 {
		return errors.New("the bucket map is empty")
	}
	primaries := map[string]int{}
	cur := make([]placement.Bucket, len(as))
	for i, a := range as {
		cur[i] = placement.Bucket{Primary: a.Primary, LocalBackup: a.LocalBackup, Synced: a.BackupSynced || standby,
			Incoming: a.Incoming, IncomingSynced: a.IncomingSynced, IncomingPrimary: a.IncomingPrimary}
		switch {
		case !ok[a.Primary]:
			return fmt.Errorf("bucket %d: primary %q is not an alive member", a.Bucket, a.Primary)
		case len(alive) > 1 && (!ok[a.LocalBackup] || a.LocalBackup == a.Primary):
			return fmt.Errorf("bucket %d: local backup %q (primary %s)", a.Bucket, a.LocalBackup, a.Primary)
		case len(alive) > 1 && !a.BackupSynced && !standby:
			return fmt.Errorf("bucket %d: backup %s not synced yet", a.Bucket, a.LocalBackup)
		case a.Incoming != "":
			return fmt.Errorf("bucket %d: move to %s under way", a.Bucket, a.Incoming)
		}
		primaries[a.Primary]++
	}
	target := placement.Targets(len(as), alive)
	for _, m := range alive {
		if primaries[m.ID] != target[m.ID] {
			return fmt.Errorf("%s is primary of %d buckets, its share is %d", m.ID, primaries[m.ID], target[m.ID])
		}
	}
	// Every member exactly at its share and no move under way: placement.
	// Rebalance plans nothing (it moves only from members above their share).
	if !backups {
		return nil
	}
	if ch := placement.RebalanceBackups(cur, alive, 0, placement.BackupTolerance); len(ch) > 0 {
		return fmt.Errorf("bucket %d: the leader would move its local backup (rebalance backups)", ch[0].Bucket)
	}
	return nil
}
