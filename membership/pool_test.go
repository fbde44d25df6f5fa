package membership

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// eventWait is generous: detection takes well under a second on an idle
// machine, but -race on 2 busy cores is another matter.
const eventWait = 20 * time.Second

func TestPool_JoinSeesMembersWithMeta(t *testing.T) {
	ps := startPools(t, 3)
	for _, p := range ps {
		if n, ok := p.Node("m1"); !ok || n.Meta.Weight != 2 || n.Meta.Incarnation == 0 {
			t.Errorf("%s: Node(m1) = %+v, %v", p.cfg.MemberID, n, ok)
		}
		for _, id := range []string{"m0", "m1", "m2"} {
			p.waitEvent(t, eventWait, "joined "+id, is(EventJoined, id))
		}
	}
	if _, ok := ps[0].Node("nobody"); ok {
		t.Error("Node(nobody) found")
	}
	// The three incarnations were drawn independently.
	if a, b, c := ps[0].Meta().Incarnation, ps[1].Meta().Incarnation, ps[2].Meta().Incarnation; a == b || b == c || a == c {
		t.Errorf("incarnations not distinct: %d %d %d", a, b, c)
	}
}

func TestPool_JoinIgnoresOwnAddress(t *testing.T) {
	p := startPool(t, testConfig(t, "m0"))
	n, err := p.Join([]string{p.LocalAddr(), p.cfg.BindAddr})
	if n != 0 || err != nil {
		t.Fatalf("Join(self) = %d, %v; want 0, nil", n, err)
	}
	q := startPool(t, testConfig(t, "m1"))
	n, err = q.Join([]string{q.LocalAddr(), p.LocalAddr()})
	if n != 1 || err != nil {
		t.Fatalf("Join(self, other) = %d, %v; want 1, nil", n, err)
	}
	waitMembers(t, []*watched{p, q}, []*watched{p, q})
}

func TestPool_JoinUnreachable(t *testing.T) {
	cfg := testConfig(t, "m0")
	cfg.TCPTimeout = 500 * time.Millisecond
	p := startPool(t, cfg)
	n, err := p.Join([]string{freeAddr(t)}) // nobody listens there
	if n != 0 || !errors.Is(err, ErrJoin) {
		t.Fatalf("Join = %d, %v; want 0, ErrJoin", n, err)
	}
}

func TestPool_UpdateMetaPropagates(t *testing.T) {
	ps := startPools(t, 3)
	m := ps[1].Meta()
	inc := m.Incarnation
	m.Weight, m.GRPCAddr, m.Incarnation = 50, "127.0.0.1:9999", 0
	if err := ps[1].UpdateMeta(m); err != nil {
		t.Fatal(err)
	}
	if got := ps[1].Meta(); got.Weight != 50 || got.Incarnation != inc {
		t.Fatalf("local meta after update: %+v (incarnation was %d)", got, inc)
	}
	waitMembers(t, ps, ps)
	for _, p := range ps {
		e := p.waitEvent(t, eventWait, "updated m1", is(EventUpdated, "m1"))
		if e.Node.Meta.Weight != 50 || e.Node.State != StateAlive {
			t.Errorf("%s: %+v", p.cfg.MemberID, e)
		}
	}
	m.Incarnation = inc + 1
	if err := ps[1].UpdateMeta(m); !errors.Is(err, ErrInvalidMeta) {
		t.Errorf("UpdateMeta with another incarnation: %v, want ErrInvalidMeta", err)
	}
}

func TestPool_LeaveGivesLeft(t *testing.T) {
	ps := startPools(t, 3)
	if err := ps[2].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps[:2] {
		e := p.waitEvent(t, eventWait, "left m2", is(EventLeft, "m2"))
		if e.Node.State != StateLeft || e.Node.Meta != ps[2].Meta() {
			t.Errorf("%s: %+v", p.cfg.MemberID, e)
		}
		if n, _ := p.Node("m2"); n.State != StateLeft {
			t.Errorf("%s: Node(m2) = %+v", p.cfg.MemberID, n)
		}
	}
	waitMembers(t, ps[:2], ps[:2])
	// The leaver reports itself as left too, and can do nothing more.
	ps[2].waitEvent(t, eventWait, "left m2 (self)", is(EventLeft, "m2"))
	if err := ps[2].Leave(time.Second); err != nil {
		t.Errorf("second Leave: %v", err)
	}
	if _, err := ps[2].Join([]string{ps[0].LocalAddr()}); !errors.Is(err, ErrLeft) {
		t.Errorf("Join after Leave: %v, want ErrLeft", err)
	}
	if err := ps[2].UpdateMeta(Meta{}); !errors.Is(err, ErrLeft) {
		t.Errorf("UpdateMeta after Leave: %v, want ErrLeft", err)
	}
}

func TestPool_ShutdownGivesFailed(t *testing.T) {
	ps := startPools(t, 3)
	if err := ps[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps[:2] {
		e := p.waitEvent(t, eventWait, "failed m2", is(EventFailed, "m2"))
		if e.Node.State != StateDead || e.Node.Meta != ps[2].Meta() {
			t.Errorf("%s: %+v", p.cfg.MemberID, e)
		}
	}
	waitMembers(t, ps[:2], ps[:2])
	for _, p := range ps[:2] {
		if p.hasEvent(is(EventLeft, "m2")) {
			t.Errorf("%s reported a crash as a leave", p.cfg.MemberID)
		}
	}
}

// A member that restarts (new pool, same ID and address, new incarnation)
// is alive again with its new Meta.
func TestPool_RestartWithSameID(t *testing.T) {
	ps := startPools(t, 3)
	cfg := ps[2].cfg
	cfg.Meta.Incarnation = 0
	ps[2].Shutdown()
	ps[0].waitEvent(t, eventWait, "failed m2", is(EventFailed, "m2"))
	ps[2] = startPool(t, cfg)
	if _, err := ps[2].Join([]string{ps[0].LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, ps, ps)
}

func TestPool_ShutdownIsFinal(t *testing.T) {
	p, err := New(testConfig(t, "m0"))
	if err != nil {
		t.Fatal(err)
	}
	if e := <-p.Events(); e.Kind != EventJoined || e.Node.ID != "m0" || e.Node.Addr != p.LocalAddr() {
		t.Fatalf("first event %v, want our own join", e)
	}
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := p.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if _, ok := <-p.Events(); ok {
		t.Fatal("Events not closed")
	}
	if _, err := p.Join([]string{"127.0.0.1:1"}); !errors.Is(err, ErrShutdown) {
		t.Errorf("Join: %v", err)
	}
	if err := p.UpdateMeta(Meta{}); !errors.Is(err, ErrShutdown) {
		t.Errorf("UpdateMeta: %v", err)
	}
	if err := p.Leave(time.Second); !errors.Is(err, ErrShutdown) {
		t.Errorf("Leave: %v", err)
	}
	// The address is free again.
	ln, err := net.Listen("tcp", p.LocalAddr())
	if err != nil {
		t.Fatalf("port still bound after Shutdown: %v", err)
	}
	ln.Close()
}

func TestNew_PortInUse(t *testing.T) {
	cfg := testConfig(t, "m0")
	ln, err := net.ListenPacket("udp", cfg.BindAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := New(cfg); err == nil {
		t.Fatal("New succeeded on a port whose UDP side is taken")
	}
}

// garbageMeta is a memberlist delegate advertising metadata that is not a
// Meta.
type garbageMeta struct{}

func (garbageMeta) NodeMeta(int) []byte             { return []byte("\x07not a meta") }
func (garbageMeta) NotifyMsg([]byte)                {}
func (garbageMeta) GetBroadcasts(int, int) [][]byte { return nil }
func (garbageMeta) LocalState(bool) []byte          { return nil }
func (garbageMeta) MergeRemoteState([]byte, bool)   {}

// A member whose meta does not decode is reported with empty Meta, not
// dropped, and nothing panics.
func TestPool_UndecodableMeta(t *testing.T) {
	p := startPool(t, testConfig(t, "m0"))
	mc := memberlist.DefaultLANConfig()
	mc.Name = "odd"
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	mc.BindAddr, mc.AdvertiseAddr = host, host
	fmt.Sscan(port, &mc.BindPort)
	mc.AdvertisePort = mc.BindPort
	mc.Delegate = garbageMeta{}
	mc.Logger = testLogger(t, "odd").StandardLogger(nil)
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	if _, err := ml.Join([]string{p.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	e := p.waitEvent(t, eventWait, "joined odd", is(EventJoined, "odd"))
	if e.Node.Meta != (Meta{}) || e.Node.Addr != addr {
		t.Errorf("event %+v, want empty Meta at %s", e, addr)
	}
	checkFor(t, eventWait, 10*time.Millisecond, func() error {
		if n := len(p.Members()); n != 2 {
			return fmt.Errorf("%d members", n)
		}
		return nil
	})
}

// Pools with different labels (sites) ignore each other.
func TestPool_LabelSeparatesPools(t *testing.T) {
	a, b := testConfig(t, "a"), testConfig(t, "b")
	a.Label, b.Label = "site1", "site2"
	a.TCPTimeout, b.TCPTimeout = time.Second, time.Second
	pa, pb := startPool(t, a), startPool(t, b)
	if n, err := pb.Join([]string{pa.LocalAddr()}); !errors.Is(err, ErrJoin) {
		t.Fatalf("Join across labels = %d, %v; want ErrJoin", n, err)
	}
	if n := len(pa.Members()); n != 1 {
		t.Fatalf("a sees %d members", n)
	}
}
