package server

import (
	"strconv"
	"sync"
	"time"
)

// A follower's state machine refuses a snapshot older than what it applied
// (fsm.FSM.Restore; hashicorp/raft#697). Raft's leader then keeps sending the
// same snapshot until it has a newer one, which with the default threshold
// can be thousands of entries away, and the follower applies nothing
// meanwhile. So the follower says so in its heartbeats
// (HeartbeatRequest.snapshot_wanted) and the leader takes a snapshot.

// staleWindow is how long after its last refusal a member keeps asking.
const staleWindow = 2 * time.Second

// snapshotWanted returns the index to ask the leader for a snapshot at, or
// 0. Called once per heartbeat by the lease loop.
func (l *leaseKeeper) snapshotWanted(now time.Time) uint64 {
	n, at := l.s.fsm.StaleRestores()
	l.mu.Lock()
	defer l.mu.Unlock()
	if n != l.staleSeen {
		l.staleSeen, l.staleUntil = n, now.Add(staleWindow)
		l.s.logger.Warn("refused a snapshot from the leader older than the applied state; asking it for a newer one",
			"applied", at, "refusals", n)
	}
	if now.Before(l.staleUntil) {
		return at
	}
	return 0
}

// snapshotTaker takes the leader's snapshots that followers ask for: one at
// a time, at most one per snapshotGap, and only while the leader's last
// snapshot ends below the index asked for.
type snapshotTaker struct {
	s    *Server
	mu   sync.Mutex
	busy bool
	last time.Time
}

const snapshotGap = 500 * time.Millisecond

func (t *snapshotTaker) want(index uint64) {
	if index == 0 {
		return
	}
	t.mu.Lock()
	if t.busy || time.Since(t.last) < snapshotGap {
		t.mu.Unlock()
		return
	}
	t.busy, t.last = true, time.Now()
	t.mu.Unlock()
	go func() {
		defer func() {
			t.mu.Lock()
			t.busy = false
			t.mu.Unlock()
		}()
		last := t.s.LastSnapshotIndex()
		if last >= index {
			return
		}
		err := t.s.raft.Snapshot().Error()
		t.s.logger.Info("took a snapshot a follower asked for", "wanted", index, "previous", last, "error", err)
	}()
}

// LastSnapshotIndex is the last log index of this member's latest Raft
// snapshot (0: none). raft reports it only among its text Stats.
func (s *Server) LastSnapshotIndex() uint64 {
	idx, _ := strconv.ParseUint(s.raft.Stats()["last_snapshot_index"], 10, 64)
	return idx
}
