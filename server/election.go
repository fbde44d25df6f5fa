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
// same proof the leader uses to fail a crashed member): no process listens
// there any more. Raft's own state must still name that leader.
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
	why := s.probe(m)
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
	if s.raft.State() != raft.Follower || s.leaderID() != leader {
		return // a new leader, or an election under way
	}
	s.logger.Info("leader's process is gone: starting an election now", "leader", leader, "reason", why, "rank", rank)
	addr := s.transport.LocalAddr()
	req := &raft.TimeoutNowRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax,
		ID: []byte(s.cfg.MemberID), Addr: s.transport.EncodePeer(raft.ServerID(s.cfg.MemberID), addr)}}
	if err := s.transport.TimeoutNow(raft.ServerID(s.cfg.MemberID), addr, req, &raft.TimeoutNowResponse{}); err != nil {
		s.logger.Warn("could not start an election", "error", err)
		return
	}
	e.started.Add(1)
	metrics.IncrCounter([]string{"fast_elections"}, 1) // connsync_fast_elections
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
