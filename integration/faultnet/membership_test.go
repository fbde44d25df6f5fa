package faultnet_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"

	"github.com/connsync/connsync/integration/faultnet"
	"github.com/connsync/connsync/integration/testkit"
	"github.com/connsync/connsync/membership"
)

// Net carries gossip for the server (server.GossipNetwork, declared there).
var _ interface {
	GossipTransport(bindAddr string, logger hclog.Logger) (memberlist.Transport, error)
} = (*faultnet.Net)(nil)

// member is a gossip pool on a faultnet transport, with its events recorded.
type member struct {
	*membership.Pool
	id     string
	mu     sync.Mutex
	events []membership.Event
}

func startMember(t *testing.T, h *faultnet.Hub, id string) *member {
	t.Helper()
	logger := hclog.New(&hclog.LoggerOptions{Name: id, Level: hclog.Error, Output: testkit.NewLogWriter(t)})
	tr, err := h.Node(id).GossipTransport("", logger)
	if err != nil {
		t.Fatal(err)
	}
	cfg := membership.DefaultConfig()
	cfg.MemberID = id
	cfg.BindAddr = tr.(*faultnet.GossipTransport).Addr()
	cfg.Transport = tr
	cfg.Meta = membership.Meta{Site: "s1", GRPCAddr: "127.0.0.1:7420", RaftAddr: "127.0.0.1:7421", Weight: 1}
	cfg.Logger = logger
	p, err := membership.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := &member{Pool: p, id: id}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range p.Events() {
			m.mu.Lock()
			m.events = append(m.events, e)
			m.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		p.Shutdown()
		<-done
	})
	return m
}

func (m *member) saw(kind membership.EventKind, id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.events {
		if e.Kind == kind && e.Node.ID == id {
			return true
		}
	}
	return false
}

// sees checks that m lists exactly ids as members.
func (m *member) sees(ids ...string) error {
	ms := m.Members()
	got := make([]string, len(ms))
	for i, n := range ms {
		got[i] = n.ID
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		return fmt.Errorf("%s sees %v, want %v", m.id, got, ids)
	}
	return nil
}

func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	testkit.CheckFor(t, timeout, 20*time.Millisecond, fn)
}

// Isolating a member's gossip makes the others declare it failed (and it
// them); after the cut heals and it joins again, everyone is alive.
func TestGossip_IsolateFailsHealRejoins(t *testing.T) {
	h := faultnet.NewHub()
	ms := []*member{startMember(t, h, "m0"), startMember(t, h, "m1"), startMember(t, h, "m2")}
	for _, m := range ms[1:] {
		if _, err := m.Join([]string{ms[0].LocalAddr()}); err != nil {
			t.Fatal(err)
		}
	}
	all := func() error {
		for _, m := range ms {
			if err := m.sees("m0", "m1", "m2"); err != nil {
				return err
			}
		}
		return nil
	}
	checkFor(t, 20*time.Second, all)

	h.Isolate("m2", []string{"m0", "m1"})
	checkFor(t, 20*time.Second, func() error {
		for _, m := range ms[:2] {
			if !m.saw(membership.EventFailed, "m2") {
				return fmt.Errorf("%s has not reported m2 failed", m.id)
			}
			if err := m.sees("m0", "m1"); err != nil {
				return err
			}
		}
		return ms[2].sees("m2")
	})
	for _, m := range ms[:2] {
		if n, _ := m.Node("m2"); n.State != membership.StateDead {
			t.Errorf("%s: Node(m2) = %+v, want dead", m.id, n)
		}
	}

	h.HealAll()
	if _, err := ms[2].Join([]string{ms[0].LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, all)
	for _, m := range ms[:2] {
		if n, _ := m.Node("m2"); n.State != membership.StateAlive || n.Meta != ms[2].Meta() {
			t.Errorf("%s: Node(m2) = %+v, want alive with %+v", m.id, n, ms[2].Meta())
		}
	}
}
