package server

import (
	"slices"
	"sync/atomic"
	"time"

	metrics "github.com/hashicorp/go-metrics/compat"
	"github.com/hashicorp/raft"
)

// Fast election: a follower that has proof the leader's process is gone
// starts a Raft election at once instead of waiting out Raft's timers.
//
// Left to Raft, an election after a leader crash takes 150-350 ms with the
// default 100 ms timeouts: a follower turns candidate only when its
// heartbeat timer (random, 100-200 ms) fires with no contact for 100 ms, and
// the other followers refuse its (pre-)vote for as long as they still know
// the old leader, which they forget only when their own timers fire; the
// refused candidate tries again after its election timer (100-200 ms). That
// was most of a leader failover (p99 306-423 ms against 400).
//
// The proof: this member's lease stream to the leader broke and a TCP
// connection to the leader's gRPC address is refused (Server.probe, the
// same proof the leader uses to fail a crashed member, see proveGone): no
// process listens there any more. Raft's own state must still name that
// leader.
//
// The start: this member sends itself a TimeoutNow, the RPC a leader sends
// to hand its leadership over. Raft turns candidate at once and its vote
// requests carry the transfer flag, which followers that still know the old
// leader accept. Safety is Raft's own: a vote is granted only to a candidate
// whose term is newer and whose log is as up to date as the voter's. What
// the flag skips is the check that keeps a partitioned member from
// disrupting a live leader, which is why a proof of death is required.
//
// One voter at a time: two candidates at once split the vote (each votes
// for itself) and both wait out an election timer. The voters other than
// the dead leader go in ID order, each HeartbeatTimeout/4 after the one
// before, each only if Raft still names the dead leader by then.
type fastElection struct {
	s       *Server
	running atomic.Bool
	started atomic.Uint64
}

// FastElections returns how many elections this member started on proof
// that the leader's process was gone (see fastElection).
func (s *Server) FastElections() uint64 { return s.election.started.Load() }

// leaderLost is called when this member's lease stream to leader (its
// member ID) ended with an error. It returns at once; the check and the
// election run on their own goroutine, one at a time.
func (e *fastElection) leaderLost(leader string) {
	s := e.s
	if !s.cfg.FastElection || leader == "" || leader == s.cfg.MemberID || !e.running.CompareAndSwap(false, true) {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer e.running.Store(false)
		e.elect(leader)
	}()
}

func (e *fastElection) elect(leader string) {
	s := e.s
	m, ok := s.fsm.Member(leader)
	if !ok || s.leaderID() != leader {
		return
	}
	why := s.proveGone(m, func() bool { return s.raft.State() == raft.Follower && s.leaderID() == leader })
	if why == "" {
		return // it may be alive: Raft's timers decide
	}
	rank := e.rank(leader)
	if rank < 0 {
		return // not a voter
	}
	if rank > 0 {
		select {
		case <-s.stop:
			return
		case <-time.After(time.Duration(rank) * s.cfg.HeartbeatTimeout / 4):
		}
	}
	self := raft.ServerID(s.cfg.MemberID)
	if f := s.raft.GetConfiguration(); f.Error() == nil {
		freshenPool(s.transport, self, raft.ServerID(leader), f.Configuration().Servers, s.cfg.HeartbeatTimeout/2)
	}
	// Checked after freshenPool, which can wait for a slow voter: the
	// election must not start against a leader elected meanwhile.
	if s.raft.State() != raft.Follower || s.leaderID() != leader {
		return // a new leader, or an election under way
	}
	s.logger.Info("leader's process is gone: starting an election now", "leader", leader, "reason", why, "rank", rank)
	addr := s.transport.LocalAddr()
	req := &raft.TimeoutNowRequest{RPCHeader: rpcHeader(s.transport, self)}
	if err := s.transport.TimeoutNow(raft.ServerID(s.cfg.MemberID), addr, req, &raft.TimeoutNowResponse{}); err != nil {
		s.logger.Warn("could not start an election", "error", err)
		return
	}
	e.started.Add(1)
	metrics.IncrCounter([]string{"fast_elections"}, 1) // connsync_fast_elections
}

// poolSize is how many idle connections the Raft transport keeps per
// member (raft.NetworkTransportConfig.MaxPool).
const poolSize = 3

// freshenPool makes the next RPC from t to each voter in servers other
// than self and dead find a live connection, waiting at most wait.
//
// The transport pools the connections it opened for earlier RPCs and
// never checks them: one to a member that has restarted since (or whose
// old process was killed) is dead, and the next RPC on it fails. Raft
// does not retry a vote request, so without this a fast election after a
// member's restart lost that member's vote, and the next voter in line
// started its own election in the same term: a split vote and a wait of
// one more election timer (the "bimodal" leader failovers, 2026-11-28).
//
// The RPC sent is an AppendEntries of term 0, which every member refuses
// at once without a change of state or a log line (terms start at 1). A
// failed RPC drops its connection; a good one goes back on top of the
// pool, where the next RPC to that member takes it. So each voter gets up
// to MaxPool+1 tries, the last on a fresh connection.
func freshenPool(t *raft.NetworkTransport, self, dead raft.ServerID, servers []raft.Server, wait time.Duration) {
	done := make(chan struct{}, len(servers))
	n := 0
	for _, srv := range servers {
		if srv.Suffrage != raft.Voter || srv.ID == self || srv.ID == dead {
			continue
		}
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			for range poolSize + 1 {
				req := &raft.AppendEntriesRequest{RPCHeader: rpcHeader(t, self)}
				if t.AppendEntries(srv.ID, srv.Address, req, &raft.AppendEntriesResponse{}) == nil {
					return
				}
			}
		}()
	}
	deadline := time.After(wait)
	for range n {
		select {
		case <-done:
		case <-deadline:
			return // a slow voter: its vote request may still go through
		}
	}
}

// rpcHeader is the header of an RPC this member (self) sends on t.
func rpcHeader(t *raft.NetworkTransport, self raft.ServerID) raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(self),
		Addr: t.EncodePeer(self, t.LocalAddr())}
}

// rank returns this member's place among the site's voters other than
// leader, in ID order, or -1 if it is not one of them.
func (e *fastElection) rank(leader string) int {
	f := e.s.raft.GetConfiguration()
	if f.Error() != nil {
		return -1
	}
	var ids []string
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter && string(srv.ID) != leader {
			ids = append(ids, string(srv.ID))
		}
	}
	slices.Sort(ids)
	return slices.Index(ids, e.s.cfg.MemberID)
}
