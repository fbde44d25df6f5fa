package faultnet

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// listenOn reserves an address for member and listens on it until the test
// ends.
func listenOn(t *testing.T, h *Hub, member string) (string, net.Listener) {
	t.Helper()
	addr, err := h.Reserve(member)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := h.Node(member).Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return addr, ln
}

// A delayed link carries every byte, in order, a round trip of at least 2d
// later; other links stay fast.
func TestDelay_RoundTripAndOrder(t *testing.T) {
	h := NewHub()
	addr, ln := listenOn(t, h, "b")
	go func() { // echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	const d = 30 * time.Millisecond
	h.Delay([]string{"a"}, []string{"b"}, d)
	rtt := func(from string) time.Duration {
		c, err := h.Node(from).Dial(context.Background(), addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := bytes.Repeat([]byte("0123456789"), 20000) // several chunks
		start := time.Now()
		go c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("from %s: bytes changed or reordered", from)
		}
		return time.Since(start)
	}
	if got := rtt("a"); got < 2*d {
		t.Fatalf("round trip over the delayed link took %v, want >= %v", got, 2*d)
	}
}

// Reading a delayed conn that was closed returns an error, never (0, nil):
// a caller that loops on Read would spin forever.
func TestDelay_ReadAfterCloseFails(t *testing.T) {
	h := NewHub()
	addr, ln := listenOn(t, h, "b")
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	h.Delay([]string{"a"}, []string{"b"}, time.Millisecond)
	c, err := h.Node("a").Dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for range 3 {
		if n, err := c.Read(make([]byte, 10)); err == nil {
			t.Fatalf("Read after Close = %d, nil", n)
		}
	}
}
