package server

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A vote request after a member's restart goes through once freshenPool
// has run: without it the first RPC on the pooled connection to the old
// process fails (the test checks that it does, so it reproduces the
// fault it guards against).
func TestFreshenPool_VoteRequestAfterRestartGoesThrough(t *testing.T) {
	a, err := raft.NewTCPTransport("127.0.0.1:0", nil, poolSize, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	addr := ""
	var b *voter
	start := func() {
		b = startVoter(t, addr)
		addr = b.addr()
	}
	start()
	defer func() { b.kill() }()
	servers := []raft.Server{
		{ID: "a", Address: a.LocalAddr(), Suffrage: raft.Voter},
		{ID: "b", Address: "", Suffrage: raft.Voter},
		{ID: "dead", Address: "127.0.0.1:1", Suffrage: raft.Voter},
	}
	vote := func() error {
		return a.RequestVote("b", raft.ServerAddress(addr), &raft.RequestVoteRequest{RPCHeader: rpcHeader(a, "a"), Term: 7}, &raft.RequestVoteResponse{})
	}
	if err := vote(); err != nil {
		t.Fatalf("vote request to a running member: %v", err)
	}

	// b restarts: a's pooled connection is to the old process.
	b.kill()
	start()
	if err := vote(); err == nil {
		t.Fatal("the first vote request after b's restart went through: the test no longer reproduces a stale pooled connection")
	}
	if err := vote(); err != nil {
		t.Fatalf("vote request on a fresh connection: %v", err)
	}

	b.kill()
	start()
	servers[1].Address = raft.ServerAddress(addr)
	freshenPool(a, "a", "dead", servers, 5*time.Second)
	if err := vote(); err != nil {
		t.Fatalf("the first vote request after b's restart and freshenPool failed: %v", err)
	}
	if got := b.terms(); len(got) == 0 || got[0] != 0 {
		t.Fatalf("b's AppendEntries terms %v: freshenPool should have sent term 0", got)
	}
}

// voter is a Raft transport that answers every RPC, and whose kill
// closes its listener and every connection it accepted, as a killed
// process's kernel does.
type voter struct {
	t     *raft.NetworkTransport
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	ae    []uint64 // terms of the AppendEntries received
	done  chan struct{}
}

func startVoter(t *testing.T, addr string) *voter {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	v := &voter{ln: ln, done: make(chan struct{})}
	v.t = raft.NewNetworkTransport(v, poolSize, 2*time.Second, io.Discard)
	go func() {
		for {
			select {
			case <-v.done:
				return
			case rpc := <-v.t.Consumer():
				switch req := rpc.Command.(type) {
				case *raft.AppendEntriesRequest:
					v.mu.Lock()
					v.ae = append(v.ae, req.Term)
					v.mu.Unlock()
					rpc.Respond(&raft.AppendEntriesResponse{}, nil)
				case *raft.RequestVoteRequest:
					rpc.Respond(&raft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
				default:
					rpc.Respond(nil, io.ErrUnexpectedEOF)
				}
			}
		}
	}()
	return v
}

func (v *voter) addr() string { return v.ln.Addr().String() }

func (v *voter) terms() []uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]uint64(nil), v.ae...)
}

func (v *voter) kill() {
	v.t.Close()
	v.mu.Lock()
	for _, c := range v.conns {
		c.Close()
	}
	v.conns = nil
	v.mu.Unlock()
	select {
	case <-v.done:
	default:
		close(v.done)
	}
}

// Accept, Close, Addr and Dial make voter a raft.StreamLayer.
func (v *voter) Accept() (net.Conn, error) {
	c, err := v.ln.Accept()
	if err == nil {
		v.mu.Lock()
		v.conns = append(v.conns, c)
		v.mu.Unlock()
	}
	return c, err
}

func (v *voter) Close() error   { return v.ln.Close() }
func (v *voter) Addr() net.Addr { return v.ln.Addr() }
func (v *voter) Dial(a raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(a), timeout)
}
