package faultnet

import (
	"errors"
	"io"
	"log"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func gossipPair(t *testing.T) (*Hub, *GossipTransport, *GossipTransport) {
	t.Helper()
	h := NewHub()
	a, err := h.Node("a").gossipTransport("", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Shutdown() })
	b, err := h.Node("b").gossipTransport("", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown() })
	return h, a, b
}

func recvPacket(t *testing.T, tr *GossipTransport) string {
	t.Helper()
	select {
	case p := <-tr.PacketCh():
		return string(p.Buf)
	case <-time.After(10 * time.Second):
		t.Fatal("no packet")
		return ""
	}
}

func TestGossip_PacketsObeyCuts(t *testing.T) {
	h, a, b := gossipPair(t)
	if _, err := a.WriteTo([]byte("before"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	if got := recvPacket(t, b); got != "before" {
		t.Fatalf("got %q", got)
	}
	h.Partition([]string{"a"}, []string{"b"})
	// Dropped on send: no error, nothing arrives.
	if _, err := a.WriteTo([]byte("dropped on send"), b.Addr()); err != nil {
		t.Fatalf("send across a cut: %v, want a silent drop", err)
	}
	// Dropped on receipt: sent by the real transport underneath. The
	// filter runs when b reads the packet, so wait for a later packet from
	// an uncut member before healing.
	if _, err := a.inner.WriteTo([]byte("dropped on receipt"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	c, err := h.Node("c").GossipTransport("", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	if _, err := c.WriteTo([]byte("marker"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	if got := recvPacket(t, b); got != "marker" {
		t.Fatalf("got %q across a cut", got)
	}
	h.HealAll()
	if _, err := a.WriteTo([]byte("after"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	// Loopback UDP keeps order, so the first packet b gets is the last one.
	if got := recvPacket(t, b); got != "after" {
		t.Fatalf("first packet after heal: %q", got)
	}
}

func TestGossip_StreamsObeyCuts(t *testing.T) {
	h, a, b := gossipPair(t)
	c, err := a.DialTimeout(b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	var s net.Conn
	select {
	case s = <-b.StreamCh():
	case <-time.After(10 * time.Second):
		t.Fatal("no stream accepted")
	}
	defer s.Close()
	buf := make([]byte, 1)
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}

	// A cut closes the open stream and refuses new ones.
	h.Isolate("b", []string{"a"})
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("read on a stream cut off: %v, want EOF", err)
	}
	if _, err := a.DialTimeout(b.Addr(), time.Second); !errors.Is(err, ErrPartitioned) {
		t.Fatalf("dial across a cut: %v, want ErrPartitioned", err)
	}

	// A stream that got through anyway (dialled as the cut was made) is
	// closed by the accepting side at its first read.
	raw, err := a.inner.DialTimeout(b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	h.mu.Lock()
	h.streams[raw.LocalAddr().String()] = &gossipConn{conn: &conn{Conn: raw, hub: h, from: "a", to: "b"}}
	h.mu.Unlock()
	raw.Write([]byte("y"))
	select {
	case s = <-b.StreamCh():
	case <-time.After(10 * time.Second):
		t.Fatal("no stream accepted")
	}
	defer s.Close()
	if _, err := s.Read(buf); !errors.Is(err, ErrPartitioned) {
		t.Fatalf("first read of a stream from a cut member: %v, want ErrPartitioned", err)
	}

	h.HealAll()
	c2, err := a.DialTimeout(b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	c2.Close()
}

func TestGossip_ShutdownFreesPort(t *testing.T) {
	_, a, _ := gossipPair(t)
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	ln, err := net.Listen("tcp", a.Addr())
	if err != nil {
		t.Fatalf("TCP port still bound: %v", err)
	}
	ln.Close()
	pc, err := net.ListenPacket("udp", a.Addr())
	if err != nil {
		t.Fatalf("UDP port still bound: %v", err)
	}
	pc.Close()
}

func TestFreeAddr(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		addr, err := FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, ps, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(ps)
		if port < 20000 || port > 31999 {
			t.Fatalf("port %d outside 20000-31999", port)
		}
		// Usable for both.
		tr, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, BindPort: port, Logger: log.New(io.Discard, "", 0)})
		if err != nil {
			t.Fatal(err)
		}
		tr.Shutdown()
	}
}
