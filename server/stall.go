package server

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// stallWatch notices when this process stops running for a while (SIGSTOP,
// a VM pause, heavy swapping) so that leadership is not confirmed on
// evidence from before the stall.
//
// Why: Raft's VerifyLeader counts any AppendEntries answer that arrives after
// it is asked, and an answer to a heartbeat sent before a pause arrives right
// after the pause, though a new leader may have been elected meanwhile. A
// deposed leader that had been paused could so confirm its leadership, grant
// leases (its own included) with a state machine that no longer knows where
// its buckets went, and act for them beside their new primaries (the chaos
// suite saw 350 ms of it after a 1.3 s SIGSTOP).
//
// So, after a stall (no tick for longer than limit):
//   - only a leadership check that started after the stall counts
//     (evidenceFrom), and none while a stall may be in progress;
//   - for guard after it, checks commit a barrier entry instead of calling
//     VerifyLeader (check): a barrier commits only on answers to requests
//     sent after it was appended, so no answer from before the stall can
//     confirm it. After guard the old answers are consumed and VerifyLeader
//     is sound again.
//
// The watcher cannot tell a stopped process from a starved one (the race
// detector on two cores delays its ticker by more than limit at times). A
// false stall therefore costs one barrier round, a few milliseconds of
// refused grants, never a lease.
type stallWatch struct {
	limit, guard time.Duration

	mu      sync.Mutex
	last    time.Time // the watcher's last tick
	resumed time.Time // when the last stall ended
}

func newStallWatch(limit, guard time.Duration) *stallWatch {
	return &stallWatch{limit: limit, guard: guard, last: time.Now()}
}

// run ticks until stop.
func (w *stallWatch) run(stop <-chan struct{}) {
	t := time.NewTicker(w.limit / 10)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			w.tick(time.Now())
		}
	}
}

func (w *stallWatch) tick(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.last) > w.limit {
		w.resumed = now
	}
	w.last = now
}

// evidenceFrom returns the earliest time a leadership check may have started
// for its answer to count now: after the last stall, and not at all while a
// stall may be in progress (the watcher has not ticked for longer than the
// limit).
func (w *stallWatch) evidenceFrom(now time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.last) > w.limit {
		return time.Time{}, false
	}
	return w.resumed, true
}

// recent reports whether a leadership check starting now must not rely on
// answers that may predate a stall: one is in progress, or ended less than
// guard ago.
func (w *stallWatch) recent(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return now.Sub(w.last) > w.limit || (!w.resumed.IsZero() && now.Before(w.resumed.Add(w.guard)))
}

// checkLeadership starts a check that this member leads as of now (see
// stallWatch): VerifyLeader, or a barrier entry shortly after a stall.
func (s *Server) checkLeadership(now time.Time) raft.Future {
	if s.stall.recent(now) {
		return s.raft.Barrier(0)
	}
	return s.raft.VerifyLeader()
}
