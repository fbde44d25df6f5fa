package server

import (
	"sync"
	"time"
)

// stallWatch notices when this process stops running for a while (SIGSTOP,
// a VM pause, heavy swapping) and tells the leader not to grant leases on
// evidence older than the stall.
//
// Why: Raft's VerifyLeader counts heartbeat answers that arrive after it is
// asked, and an answer to a heartbeat sent before a pause arrives right after
// the pause, though a new leader may have been elected meanwhile. A deposed
// leader that had been paused could so confirm its leadership, grant leases
// (its own included) with a state machine that no longer knows where its
// buckets went, and act for them beside their new primaries (the chaos suite
// saw 350 ms of it after a 1.3 s SIGSTOP). After a stall (no tick for longer
// than limit), grants wait until a
// leadership check that started stallGuard after the process resumed has
// succeeded: by then the old answers are consumed, and fresh ones from a new
// term have made Raft step down.
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
// for its answer to count now: after the last stall's guard, and not at all
// while a stall may be in progress (the watcher has not ticked for longer
// than the limit).
func (w *stallWatch) evidenceFrom(now time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.last) > w.limit {
		return time.Time{}, false
	}
	if w.resumed.IsZero() {
		return time.Time{}, true
	}
	return w.resumed.Add(w.guard), true
}
