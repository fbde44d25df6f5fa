package membership

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/connsync/connsync/integration/faultnet"
	"github.com/connsync/connsync/integration/testkit"
)

// freeAddr returns a loopback address free for both TCP and UDP.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	a, err := faultnet.FreeAddr()
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// checkFor is testkit.CheckFor.
var checkFor = testkit.CheckFor

// testLogger logs to the test log at Warn and above until the test ends.
func testLogger(tb testing.TB, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Warn, Output: testkit.NewLogWriter(tb)})
}

// testConfig is DefaultConfig for member id on a free loopback port.
func testConfig(tb testing.TB, id string) Config {
	cfg := DefaultConfig()
	cfg.MemberID = id
	cfg.BindAddr = freeAddr(tb)
	cfg.Meta = Meta{Site: "s1", GRPCAddr: "127.0.0.1:7420", RaftAddr: "127.0.0.1:7421", Weight: 1}
	cfg.Logger = testLogger(tb, id)
	return cfg
}

// watched is a pool whose events are recorded by a goroutine.
type watched struct {
	*Pool
	mu     sync.Mutex
	events []Event
	at     []time.Time // when each event was received
	closed bool
}

// startPool starts a pool and records its events; it is shut down when the
// test ends.
func startPool(tb testing.TB, cfg Config) *watched {
	tb.Helper()
	p, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	w := &watched{Pool: p}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range p.Events() {
			w.mu.Lock()
			w.events = append(w.events, e)
			w.at = append(w.at, time.Now())
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
	}()
	tb.Cleanup(func() {
		p.Shutdown()
		<-done
	})
	return w
}

// startPools starts n pools m0..m(n-1) and joins them all through m0.
func startPools(tb testing.TB, n int) []*watched {
	tb.Helper()
	ps := make([]*watched, n)
	for i := range ps {
		cfg := testConfig(tb, fmt.Sprintf("m%d", i))
		cfg.Meta.Weight = uint32(i + 1)
		ps[i] = startPool(tb, cfg)
	}
	for _, p := range ps[1:] {
		if _, err := p.Join([]string{ps[0].LocalAddr()}); err != nil {
			tb.Fatal(err)
		}
	}
	waitMembers(tb, ps, ps)
	return ps
}

// waitMembers waits until every pool in observers lists exactly the pools in
// want as members, with their current Meta.
func waitMembers(tb testing.TB, observers, want []*watched) {
	tb.Helper()
	checkFor(tb, 20*time.Second, 20*time.Millisecond, func() error {
		for _, o := range observers {
			ms := o.Members()
			if len(ms) != len(want) {
				return fmt.Errorf("%s sees %d members %v, want %d", o.cfg.MemberID, len(ms), ms, len(want))
			}
			for i, w := range want {
				m := ms[i]
				if m.ID != w.cfg.MemberID || m.Addr != w.LocalAddr() || m.Meta != w.Meta() || m.State != StateAlive {
					return fmt.Errorf("%s sees %+v, want %s at %s with %+v, alive", o.cfg.MemberID, m, w.cfg.MemberID, w.LocalAddr(), w.Meta())
				}
			}
		}
		return nil
	})
}

// waitEvent waits until the pool has delivered an event matching ok and
// returns the first one.
func (w *watched) waitEvent(tb testing.TB, timeout time.Duration, what string, ok func(Event) bool) Event {
	e, _ := w.waitEventAt(tb, timeout, what, ok)
	return e
}

// waitEventAt is waitEvent that also returns when the event was received.
func (w *watched) waitEventAt(tb testing.TB, timeout time.Duration, what string, ok func(Event) bool) (Event, time.Time) {
	tb.Helper()
	var found Event
	var at time.Time
	checkFor(tb, timeout, 5*time.Millisecond, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		for i, e := range w.events {
			if ok(e) {
				found, at = e, w.at[i]
				return nil
			}
		}
		return fmt.Errorf("%s has not delivered %s; events: %v", w.cfg.MemberID, what, w.events)
	})
	return found, at
}

// hasEvent reports whether the pool has delivered an event matching ok.
func (w *watched) hasEvent(ok func(Event) bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.events {
		if ok(e) {
			return true
		}
	}
	return false
}

func is(kind EventKind, id string) func(Event) bool {
	return func(e Event) bool { return e.Kind == kind && e.Node.ID == id }
}
