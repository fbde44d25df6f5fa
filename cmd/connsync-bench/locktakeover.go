package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/connsync/connsync/internal/proccluster"
)

// lockTakeoverFlags are the lock-takeover scenario's flags.
type lockTakeoverFlags struct {
	trials int
}

// runLockTakeover is the lock-takeover scenario: each trial, a non-leader
// member (round robin) holds a lock with a long TTL, a waiter on the
// leader's member ID asks for the same lock in a closed loop, and the
// holder's connsyncd is SIGKILLed at t0; the figure is t0 to the waiter's
// first granted acquire (the site fails the holder and drops its locks; the
// TTL, 30 s, plays no part). The holder then restarts and the site settles
// before the next trial.
func runLockTakeover(ctx context.Context, c *proccluster.Cluster, f lockTakeoverFlags, rep *reporter) (record, error) {
	admin, err := c.Client(10 * time.Second)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	prog, stop := newTrialProgress(rep, "lock-takeover", f.trials)
	defer stop()
	var took []time.Duration
	var rows [][]string
	for i := range f.trials {
		prog.trial(i + 1)
		prog.set("finding the leader")
		leader, err := c.Leader(ctx)
		if err != nil {
			return nil, err
		}
		members := c.Members()
		var others []int
		for j := range members {
			if j != leader {
				others = append(others, j)
			}
		}
		holder := others[i%len(others)]
		holderID, waiterID := members[holder].ID, members[leader].ID
		k := nextKey()
		prog.set("%s takes the lock", holderID)
		if _, err := admin.AcquireLock(ctx, k, holderID, lockTTL); err != nil {
			return nil, fmt.Errorf("trial %d: %s acquiring the lock: %w", i+1, holderID, err)
		}
		prog.set("SIGKILL %s, %s waiting for the lock", holderID, waiterID)
		t0 := time.Now()
		if err := c.Kill(holder); err != nil {
			return nil, err
		}
		var d time.Duration
		for {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if time.Since(t0) > takeoverTimeout {
				return nil, fmt.Errorf("trial %d: %s was not granted %s's lock within %v of its SIGKILL", i+1, waiterID, holderID, takeoverTimeout)
			}
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			lock, err := admin.AcquireLock(actx, k, waiterID, lockTTL)
			cancel()
			if err == nil {
				d = time.Since(t0)
				if err := admin.ReleaseLock(ctx, k, waiterID, lock.GetToken()); err != nil {
					return nil, fmt.Errorf("trial %d: releasing the lock: %w", i+1, err)
				}
				break
			}
			if code := status.Code(err); code != codes.FailedPrecondition && code != codes.Unavailable && code != codes.DeadlineExceeded {
				return nil, fmt.Errorf("trial %d: %s acquiring the lock: %w", i+1, waiterID, err)
			}
		}
		took = append(took, d)
		rep.event("trial", field{"trial", i + 1}, field{"holder", holderID}, field{"waiter", waiterID}, field{"ms", ms(d)})
		rows = append(rows, []string{strconv.Itoa(i + 1), holderID, waiterID, fmt.Sprintf("%.2f", ms(d))})
		prog.set("%s restarted, waiting for the site to settle", holderID)
		if _, err := restartAndSettle(ctx, c, holder); err != nil {
			return nil, fmt.Errorf("trial %d: %w", i+1, err)
		}
	}
	stop()
	rep.table([]string{"trial", "holder", "waiter", "takeover_ms"}, rows)
	if err := rep.plot("lock-takeover", distributionPlot("lock takeover: SIGKILL of the holder to the waiter granted", took, 200*time.Millisecond)); err != nil {
		return nil, err
	}
	fig := record{{"scenario", "lock-takeover"}}
	fig = append(fig, latencyFigures(took)...)
	return append(fig, field{"trials", len(took)}, field{"members", len(c.Members())}, field{"lock_ttl_s", lockTTL.Seconds()}), nil
}
