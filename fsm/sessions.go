package fsm

import (
	"time"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
)

// Idempotency sessions (Raft dissertation, section 6.3). A client picks a
// random client ID, numbers its writes, and tells the site the lowest
// sequence number still in flight (acked_seq). The site keeps the results of
// requests at or above acked_seq, so a retry of a write whose outcome was lost
// (a timeout, ErrLeadershipLost) gets the first outcome back instead of being
// applied twice. Memory is bounded by requests in flight, not by history.

const (
	// SessionTTL is how long, in log time, a session is kept after its last
	// request. A client idle for longer starts afresh; a retry older than this
	// is applied again.
	SessionTTL = 10 * time.Minute
	// maxSessionResponses caps the remembered results of one session, so a
	// client that never advances acked_seq cannot grow the state without
	// bound; the lowest sequence numbers are dropped first.
	maxSessionResponses = 4096
)

type session struct {
	lastSeen  int64
	acked     uint64
	responses map[uint64]ProposalResult
}

func (st *state) sessionLookup(p *ipb.Proposal) (ProposalResult, bool) {
	if p.ClientId == 0 {
		return nil, false
	}
	s := st.sessions[p.ClientId]
	if s == nil {
		s = &session{responses: map[uint64]ProposalResult{}}
		st.sessions[p.ClientId] = s
	}
	s.lastSeen = st.now
	if p.AckedSeq > s.acked {
		s.acked = p.AckedSeq
		for seq := range s.responses {
			if seq < s.acked {
				delete(s.responses, seq)
			}
		}
	}
	if r, ok := s.responses[p.Seq]; ok {
		return r, true
	}
	if p.Seq < s.acked {
		res := make(ProposalResult, ResultCount(p))
		for i := range res {
			res[i].Err = ErrStaleRequest
		}
		return res, true
	}
	return nil, false
}

func (st *state) sessionStore(p *ipb.Proposal, r ProposalResult) {
	if p.ClientId == 0 {
		return
	}
	s := st.sessions[p.ClientId]
	s.responses[p.Seq] = r
	if len(s.responses) > maxSessionResponses {
		lowest := p.Seq
		for seq := range s.responses {
			lowest = min(lowest, seq)
		}
		delete(s.responses, lowest)
		s.acked = max(s.acked, lowest+1)
	}
}

func (st *state) expireSessions() {
	for id, s := range st.sessions {
		if st.now-s.lastSeen > int64(SessionTTL) {
			delete(st.sessions, id)
		}
	}
}
