package integration

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
)

// TestProcess_PausedMemberNeverActsOnLostBuckets: a member SIGSTOPped for
// 2 s (four times its lease) is failed over while paused; once resumed it
// must never act as primary for a bucket at the epoch it lost it at. Its
// lease ran out while it was paused, so from its first answer on it acts for
// nothing until the leader has answered it again and its state machine shows
// the failover; later it joins again and takes new buckets, at new epochs.
//
// The leader case: a paused leader is deposed; on resuming, answers to
// heartbeats it sent before the pause confirmed its leadership to Raft's
// VerifyLeader, and it used to grant itself a lease on that and act for its
// old buckets beside their new primaries (found by the chaos suite). It now
// confirms its leadership with questions asked after the check began
// (server/confirm.go).
func TestProcess_PausedMemberNeverActsOnLostBuckets(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test skipped in -short mode")
	}
	for _, leaderCase := range []bool{false, true} {
		name := "member"
		if leaderCase {
			name = "leader"
		}
		t.Run(name, func(t *testing.T) { pausedNeverActs(t, leaderCase) })
	}
}

func pausedNeverActs(t *testing.T, pauseLeader bool) {
	ps := startProcSite(t, 3)
	cl := ps.client(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	leader, before := ps.leader(ctx, cl)
	victim := ps.procs[slices.IndexFunc(ps.procs, func(p *proc) bool { return (p == leader) == pauseLeader })]
	lost := map[uint32]uint64{} // bucket -> the epoch the victim held it at
	for _, a := range before {
		if a.Primary == victim.id {
			lost[a.Bucket] = a.Epoch
		}
	}
	vc, err := client.New(client.Config{Addrs: []string{victim.grpc}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	if act, err := vc.Active(ctx); err != nil || !act.LeaseValid || len(act.Buckets) != len(lost) {
		t.Fatalf("before the pause %s acts for %d buckets (lease %v, err %v), want its %d",
			victim.id, len(act.GetBuckets()), act.GetLeaseValid(), err, len(lost))
	}

	victim.signal(syscall.SIGSTOP)
	paused := time.Now()
	// The leader (a new one, if the victim led) fails it over once its lease
	// has run out. Asked with short deadlines: the paused member hangs calls.
	others := client.Config{Timeout: time.Second}
	for _, p := range ps.procs {
		if p != victim {
			others.Addrs = append(others.Addrs, p.grpc)
		}
	}
	oc, err := client.New(others)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	cluster.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		r, err := oc.Assignments(pctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return err
		}
		for _, a := range r.Assignments {
			if a.Primary == victim.id {
				return fmt.Errorf("bucket %d still has primary %s", a.Bucket, victim.id)
			}
		}
		return nil
	})
	t.Logf("paused %s was failed over after %v", victim.id, time.Since(paused))
	time.Sleep(time.Until(paused.Add(2 * time.Second))) // the pause itself: part of the scenario, not a wait for a condition
	victim.signal(syscall.SIGCONT)

	// Watch what it acts for, as often as it answers, until it has joined
	// again and holds buckets of its own.
	answers, acting := 0, 0
	cluster.CheckFor(t, 60*time.Second, 5*time.Millisecond, func() error {
		act, err := vc.Active(ctx)
		if err != nil {
			return err
		}
		answers++
		for _, be := range act.Buckets {
			if e, ok := lost[be.Bucket]; ok && be.Epoch <= e {
				t.Fatalf("after resuming, %s acts as primary of bucket %d at epoch %d, which it lost (held at %d)",
					victim.id, be.Bucket, be.Epoch, e)
			}
		}
		if len(act.Buckets) == 0 {
			return fmt.Errorf("%s acts for no bucket yet (lease %v)", victim.id, act.LeaseValid)
		}
		acting++
		return nil
	})
	t.Logf("%s answered %d times after resuming; acts for new buckets now", victim.id, answers)
	ps.waitPlaced(60*time.Second, len(ps.procs))
	_, after := ps.leader(ctx, cl)
	for i := range before {
		if after[i].Epoch < before[i].Epoch {
			t.Fatalf("bucket %d: epoch went back from %d to %d", i, before[i].Epoch, after[i].Epoch)
		}
	}
	m, err := cl.MemberDetails(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, mm := range m.Members {
		if mm.State != pb.MemberState_MEMBER_STATE_ALIVE {
			t.Errorf("member %s is %s at the end", mm.Id, mm.State)
		}
	}
}
