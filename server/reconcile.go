package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/placement"
)

// reconcileLoop is the leader's control loop (Consul's leader.go idea). It
// starts once this member is a ready leader (its barrier is applied, so its
// state machine holds every committed entry) and stops with the term. Each
// pass:
//
//  1. fails the members liveness says are dead or out of lease: one Raft
//     entry per member that marks it failed and promotes the local backups of
//     its buckets (placement.Failover);
//  2. gives every bucket a primary and a local backup (placement.Assign);
//  3. completes moves whose incoming member has synced (placement.Flip);
//  4. starts make-before-break moves toward an even spread (placement.
//     Rebalance), moves the buckets of draining members, and spreads local
//     backups (placement.RebalanceBackups);
//  5. keeps the configured number of Raft voters.
//
// Failures are checked every HeartbeatInterval/2 and on every liveness
// signal; steps 2-5 run when the state machine's members or assignments
// change and once a second (a failed voter is replaced at once, so that a
// second failure soon after finds a full set of voters). Every entry names the revisions it was planned
// from, so a plan from a stale view is refused by the state machine and made
// again.
func (s *Server) reconcileLoop(ctx context.Context) {
	s.live.start()
	defer s.live.stop()
	s.wg.Add(1)
	go s.live.verifyLoop(ctx)
	// Probe every other member once: a leader that died is confirmed dead in
	// milliseconds instead of after its lease, and so is any member that died
	// while there was no leader.
	for _, m := range s.fsm.Members() {
		if active(m.State) {
			s.live.suspect(m.ID, "new leader")
		}
	}
	tick := time.NewTicker(max(s.cfg.HeartbeatInterval/2, time.Millisecond))
	defer tick.Stop()
	full := time.NewTicker(time.Second)
	defer full.Stop()
	topology, fullPass := true, true
	// The watch channel is renewed only when it fires (see repl.Run): a
	// change that lands while a tick is chosen must not be missed.
	_, changed := s.fsm.Watch()
	for {
		err := s.reconcile(ctx, topology, fullPass)
		switch {
		case errors.Is(err, fsm.ErrAssignmentChanged):
			// A sync report or an operator's change landed between the plan
			// and its commit: plan again from the new state at once.
			s.logger.Debug("reconcile: plan raced a change; planning again", "error", err)
			topology = true
			continue
		case err != nil && ctx.Err() == nil:
			s.logger.Warn("reconcile", "error", err)
		}
		topology, fullPass = false, false
		select {
		case <-ctx.Done():
			return
		case <-s.live.kick:
			topology = true
		case <-changed:
			topology = true
			_, changed = s.fsm.Watch() // before reconcile reads the state
		case <-tick.C:
		case <-full.C:
			topology, fullPass = true, true
		}
	}
}

// active reports whether a member in state st may hold buckets.
func active(st pb.MemberState) bool {
	return st == pb.MemberState_MEMBER_STATE_ALIVE || st == pb.MemberState_MEMBER_STATE_DRAINING
}

func (s *Server) reconcile(ctx context.Context, topology, fullPass bool) error {
	if err := s.reregisterSelf(ctx); err != nil {
		return err
	}
	var candidates []fsm.Member
	for _, m := range s.fsm.Members() {
		if active(m.State) {
			candidates = append(candidates, m)
		}
	}
	holding := map[string]bool{}
	as, _ := s.fsm.Buckets()
	for _, a := range as {
		holding[a.Primary], holding[a.LocalBackup], holding[a.Incoming] = true, true, true
	}
	fails := s.live.failures(candidates, holding)
	for _, id := range sortedIDs(fails) {
		if err := s.failMember(ctx, id, fails[id]); err != nil {
			return err
		}
		topology = true
	}
	if !topology {
		return nil
	}
	if err := s.place(ctx); err != nil {
		return err
	}
	if err := s.reconcileVoters(); err != nil {
		return fmt.Errorf("voters: %w", err)
	}
	return s.finishDrain()
}

// replan runs plan, which plans from the current state and commits, again
// when the commit finds the state changed under it (another writer of
// assignments, such as a sync report, came first); a few times at most.
func replan(plan func() error) error {
	var err error
	for range 5 {
		if err = plan(); !errors.Is(err, fsm.ErrAssignmentChanged) {
			return err
		}
	}
	return err
}

// failMember commits one entry: id is failed, the local backups of its
// buckets take over, and every bucket role it (or any other gone member)
// held gets a new holder.
func (s *Server) failMember(ctx context.Context, id, why string) error {
	start := time.Now()
	var cur []fsm.Assignment
	var changes []placement.Change
	var unsynced []uint32
	err := replan(func() error {
		cur, _ = s.fsm.Buckets()
		gone := s.goneMembers()
		gone[id] = true
		changes, unsynced = placement.Failover(toPlacement(cur), gone, s.eligible(gone))
		ms := []*ipb.SetMemberStateOp{{MemberId: id, State: pb.MemberState_MEMBER_STATE_FAILED}}
		return s.reassign(ctx, "failover "+id, ms, changes, cur)
	})
	if err != nil {
		return err
	}
	s.live.forget(id)
	promoted := 0
	for _, c := range changes {
		if cur[c.Bucket].Primary == id {
			promoted++
		}
	}
	s.logger.Warn("member failed over", "id", id, "why", why, "buckets_promoted", promoted,
		"without_synced_backup", len(unsynced), "took", time.Since(start))
	return nil
}

// reregisterSelf records this leader's own process when the state machine
// has an earlier one (leaderSetup leaves that to this loop): buckets the
// earlier process held fail over first, since it lost what it held in memory.
func (s *Server) reregisterSelf(ctx context.Context) error {
	me, ok := s.fsm.Member(s.cfg.MemberID)
	if !ok || me.Incarnation == s.incarnation {
		return nil
	}
	if active(me.State) && me.Incarnation != 0 {
		if err := s.failMember(ctx, s.cfg.MemberID, "this leader's process restarted"); err != nil {
			return err
		}
	}
	_, err := s.applyDirect(registerMemberOp(s.selfMember()))
	return err
}

// goneMembers returns the members that may hold no bucket role: failed,
// left, or unknown.
func (s *Server) goneMembers() map[string]bool {
	out := map[string]bool{}
	for _, m := range s.fsm.Members() {
		if !active(m.State) {
			out[m.ID] = true
		}
	}
	return out
}

// eligible returns the members that may receive new roles: alive (not
// draining), heard from within their lease, and not in skip.
func (s *Server) eligible(skip map[string]bool) []placement.Member {
	var out []placement.Member
	for _, m := range s.fsm.Members() {
		if m.State == pb.MemberState_MEMBER_STATE_ALIVE && !skip[m.ID] && s.live.healthy(m.ID) {
			out = append(out, placement.Member{ID: m.ID, Weight: m.Weight})
		}
	}
	return out
}

// place runs the placement steps that need no failure: roles held by gone
// members, unfilled roles, synced moves, and rebalancing.
func (s *Server) place(ctx context.Context) error {
	gone := s.goneMembers()
	steps := []struct {
		reason   string
		optional bool // a move for balance only, that no failure asks for
		plan     func(cur []placement.Bucket, el []placement.Member) []placement.Change
	}{
		{"failover of gone members", false, func(cur []placement.Bucket, el []placement.Member) []placement.Change {
			c, _ := placement.Failover(cur, gone, el)
			return c
		}},
		{"assign", false, placement.Assign},
		{"complete moves", false, placement.Flip},
		{"rebalance", true, s.rebalancePlan},
		{"rebalance backups", true, func(cur []placement.Bucket, el []placement.Member) []placement.Change {
			if !s.cfg.AutoRebalance {
				return nil
			}
			return placement.RebalanceBackups(cur, el, s.cfg.MaxMoves, placement.BackupTolerance)
		}},
	}
	for _, step := range steps {
		cur, _ := s.fsm.Buckets()
		el := s.eligible(gone)
		if len(el) == 0 {
			return nil
		}
		pc := toPlacement(cur)
		if s.fsm.Standby() {
			// A standby site serves nothing and syncs nothing within itself
			// (its backups are synced when it is activated): every move
			// completes at once, and the new primary of a bucket gets the
			// other site's full sync as its remote copy.
			for i := range pc {
				pc[i].Synced, pc[i].IncomingSynced = true, pc[i].Incoming != ""
			}
		}
		changes := step.plan(pc, el)
		if step.optional && s.fsm.Standby() && !s.peerActiveAndReachable() {
			// A standby site's move takes a bucket's remote copy away from
			// the member holding it; the new primary gets it again only from
			// an active site that reaches it. Without one, a move for balance
			// alone loses the copy if this site has to take over (chaos seeds
			// 701, 757: both sites standby for a moment, a restarted member
			// got buckets from members holding them, and the site activated
			// them empty). A bucket may hold data without its copy flagged
			// synced once the site has changed mode (the change clears the
			// flags, not the tables); a site that never did holds nothing
			// where the flag is clear, and places freely (its formation).
			changedMode := s.fsm.Stats().SiteEpoch > 0
			changes = slices.DeleteFunc(changes, func(c placement.Change) bool {
				a := cur[c.Bucket]
				movesPrimary := c.To.Primary != a.Primary || (c.To.IncomingPrimary && c.To.Incoming != "")
				return movesPrimary && (a.RemoteCopySynced || changedMode)
			})
		}
		if len(changes) > 0 {
			if err := s.reassign(ctx, step.reason, nil, changes, cur); err != nil {
				return err
			}
		}
	}
	return nil
}

// peerActiveAndReachable reports whether this member's link reaches the other
// site and that site is active: the one that sends remote copies.
func (s *Server) peerActiveAndReachable() bool {
	if s.siteLink == nil || !s.siteLink.isUp() {
		return false
	}
	p, _ := s.siteLink.watch()
	return p != nil && !p.Standby
}

// rebalancePlan is placement.Rebalance, limited to the buckets of draining
// members when AutoRebalance is off.
func (s *Server) rebalancePlan(cur []placement.Bucket, el []placement.Member) []placement.Change {
	changes := placement.Rebalance(cur, el, s.cfg.MaxMoves)
	if s.cfg.AutoRebalance {
		return changes
	}
	draining := map[string]bool{}
	for _, m := range s.fsm.Members() {
		draining[m.ID] = m.State == pb.MemberState_MEMBER_STATE_DRAINING
	}
	return slices.DeleteFunc(changes, func(c placement.Change) bool { return !draining[cur[c.Bucket].Primary] })
}

// reassign commits a ReassignOp planned from cur.
func (s *Server) reassign(ctx context.Context, reason string, ms []*ipb.SetMemberStateOp, changes []placement.Change, cur []fsm.Assignment) error {
	op := &ipb.ReassignOp{Members: ms, Reason: reason}
	for _, c := range changes {
		a := cur[c.Bucket]
		op.Buckets = append(op.Buckets, &ipb.BucketChange{Bucket: c.Bucket, PrevRevision: a.Revision,
			Primary: c.To.Primary, LocalBackup: c.To.LocalBackup, RemoteBackup: a.RemoteBackup,
			BackupSynced: c.To.Synced, Incoming: c.To.Incoming, IncomingSynced: c.To.IncomingSynced,
			IncomingPrimary: c.To.IncomingPrimary})
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
	defer cancel()
	res, err := s.proposer.propose(ctx, &ipb.Proposal{Ops: []*ipb.Op{{Op: &ipb.Op_Reassign{Reassign: op}}}})
	if err != nil {
		return fmt.Errorf("%s: %w", reason, err)
	}
	if res[0].Err != nil {
		return fmt.Errorf("%s: %w", reason, res[0].Err)
	}
	if len(op.Buckets) > 0 {
		s.logger.Debug("reassigned", "reason", reason, "buckets", len(op.Buckets), "index", res[0].Epoch)
	}
	return nil
}

func toPlacement(as []fsm.Assignment) []placement.Bucket {
	out := make([]placement.Bucket, len(as))
	for i, a := range as {
		out[i] = placement.Bucket{Primary: a.Primary, LocalBackup: a.LocalBackup, Synced: a.BackupSynced,
			Incoming: a.Incoming, IncomingSynced: a.IncomingSynced, IncomingPrimary: a.IncomingPrimary}
	}
	return out
}

// reconcileVoters keeps cfg.Voters voters that are members in good standing
// (alive or draining in the state machine): it promotes alive, heard-from
// non-voters while there are fewer, then removes voters that have failed or
// left while there are more, then demotes surplus voters (draining ones
// first, never itself). A
// failed voter is only removed once a replacement votes, so the quorum never
// shrinks below what it was. A voter that is merely slow to heartbeat still
// counts: only a committed failure replaces it.
func (s *Server) reconcileVoters() error {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	servers := cf.Configuration().Servers
	standing := func(id string) bool {
		m, ok := s.fsm.Member(id)
		return ok && active(m.State)
	}
	voters, good := 0, 0
	for _, srv := range servers {
		if srv.Suffrage == raft.Voter {
			voters++
			if standing(string(srv.ID)) {
				good++
			}
		}
	}
	for _, srv := range servers {
		if good >= s.cfg.Voters {
			break
		}
		m, _ := s.fsm.Member(string(srv.ID))
		if srv.Suffrage != raft.Nonvoter || m.Nonvoter || m.State != pb.MemberState_MEMBER_STATE_ALIVE ||
			!s.live.healthy(string(srv.ID)) {
			continue
		}
		if err := s.raft.AddVoter(srv.ID, srv.Address, 0, s.cfg.ApplyTimeout).Error(); err != nil {
			return err
		}
		s.logger.Info("promoted to voter", "id", srv.ID)
		voters++
		good++
	}
	for _, srv := range servers {
		if voters <= s.cfg.Voters || srv.Suffrage != raft.Voter || string(srv.ID) == s.cfg.MemberID || standing(string(srv.ID)) {
			continue
		}
		if err := s.raft.RemoveServer(srv.ID, 0, s.cfg.ApplyTimeout).Error(); err != nil {
			return err
		}
		s.logger.Info("removed failed voter", "id", srv.ID)
		voters--
	}
	for _, want := range []pb.MemberState{pb.MemberState_MEMBER_STATE_DRAINING, pb.MemberState_MEMBER_STATE_ALIVE} {
		for _, srv := range servers {
			m, _ := s.fsm.Member(string(srv.ID))
			if voters <= s.cfg.Voters || srv.Suffrage != raft.Voter || string(srv.ID) == s.cfg.MemberID || m.State != want {
				continue
			}
			if err := s.raft.DemoteVoter(srv.ID, 0, s.cfg.ApplyTimeout).Error(); err != nil {
				return err
			}
			s.logger.Info("demoted surplus voter", "id", srv.ID)
			voters--
		}
	}
	return nil
}

// finishDrain hands leadership away once this member is draining and holds
// no bucket role, so it can then be removed.
func (s *Server) finishDrain() error {
	me, ok := s.fsm.Member(s.cfg.MemberID)
	if !ok || me.State != pb.MemberState_MEMBER_STATE_DRAINING {
		return nil
	}
	cur, _ := s.fsm.Buckets()
	for _, a := range cur {
		if a.Primary == s.cfg.MemberID || a.LocalBackup == s.cfg.MemberID {
			return nil
		}
	}
	s.logger.Info("drained: transferring leadership")
	if err := s.raft.LeadershipTransfer().Error(); err != nil && !errors.Is(err, raft.ErrNotLeader) {
		return fmt.Errorf("leadership transfer after drain: %w", err)
	}
	return nil
}
