package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// liveness is the leader's view of which members are alive. It combines
// three signals, none of which moves a bucket by itself:
//
//   - Lease heartbeats. Every member renews its lease with the leader every
//     HeartbeatInterval. A member the leader has not heard from for
//     MemberLease plus a margin has stopped acting as primary (its lease ran
//     out), so it may be failed. This is the only signal that covers a hung
//     or partitioned member, and it is safe without any other.
//   - Broken connections. When a member's heartbeat stream closes, when gossip
//     reports it dead or gone, or when Raft fails to heartbeat it, the leader
//     probes it at once: a refused TCP connection to its gRPC address means no
//     process listens there any more (it crashed), and an answer with another
//     incarnation means it restarted. Either way the old process cannot act,
//     so it is failed without waiting for its lease: tens of milliseconds
//     after a crash. Any other outcome (a timeout: partition, pause, dead
//     host) proves nothing, and the lease decides.
//   - Leadership freshness. The leader grants leases only while it has
//     confirmed its leadership with a quorum within the last freshLimit; a new
//     leader fails no member on lease grounds for the first grace() of its
//     term, which covers every lease an earlier leader may have granted. A
//     member reconnects to a new leader within a heartbeat or two, so a
//     leader change fails nobody.
//
// The reconcile loop (reconcile.go) reads it and commits the failovers.
type liveness struct {
	s *Server

	mu       sync.Mutex
	leading  bool
	since    time.Time // this term's start as ready leader
	verified time.Time // start of the last successful leadership check
	peers    map[string]*peer
	kick     chan struct{} // buffered(1): wakes the reconcile loop
}

// peer is what the leader knows of one member in this term.
type peer struct {
	heard       time.Time // last heartbeat received
	joined      time.Time // last (re)registration through Join
	incarnation uint64
	streams     int
	probing     bool
	// dead says why the process of incarnation deadInc is known to be gone;
	// "" if it is not. A later incarnation of the member is not affected.
	dead    string
	deadInc uint64
}

// deadNow reports why the member's recorded incarnation is known dead.
func (p *peer) deadNow(m fsm.Member) string {
	if p == nil || p.dead == "" || p.deadInc != m.Incarnation {
		return ""
	}
	return p.dead
}

func newLiveness(s *Server) *liveness {
	return &liveness{s: s, peers: map[string]*peer{}, kick: make(chan struct{}, 1)}
}

// grace is how long a new leader waits before failing a member it has not
// heard from: longer than any lease a previous leader can have granted.
func (l *liveness) grace() time.Duration {
	return l.s.cfg.MemberLease + l.s.cfg.freshLimit() + 2*l.s.cfg.HeartbeatInterval
}

// failAfter is how long after the last heartbeat a member's lease has
// surely run out: the lease counts from the beat's send time, which is
// before its receipt, plus a margin for clock-rate drift and scheduling.
func (l *liveness) failAfter() time.Duration {
	return l.s.cfg.MemberLease + l.s.cfg.HeartbeatInterval
}

// idleFailAfter is how long a member that holds no bucket role may stay
// silent before it is marked failed. Nothing moves when it is, so there is
// no hurry; a member that just joined (and is still catching up with the
// log before it can find the leader) is not failed again and again.
func (l *liveness) idleFailAfter() time.Duration { return 10 * l.s.cfg.MemberLease }

// start resets the view for a new term as leader.
func (l *liveness) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leading, l.since, l.verified = true, time.Now(), time.Time{}
	l.peers = map[string]*peer{}
}

// stop ends the term: no more grants.
func (l *liveness) stop() {
	l.mu.Lock()
	l.leading = false
	l.mu.Unlock()
}

func (l *liveness) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *liveness) peer(id string) *peer {
	p := l.peers[id]
	if p == nil {
		p = &peer{}
		l.peers[id] = p
	}
	return p
}

// verifyLoop confirms leadership with a quorum every HeartbeatInterval while
// ctx lasts, so lease grants stop soon after this member loses leadership.
func (l *liveness) verifyLoop(ctx context.Context) {
	defer l.s.wg.Done()
	t := time.NewTicker(l.s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, l.s.cfg.freshLimit())
		done := make(chan error, 1)
		go func() { done <- l.s.confirmLeadership(cctx) }() // not waited for on ctx's end
		select {
		case <-ctx.Done():
			cancel()
			return
		case err := <-done:
			cancel()
			if err == nil {
				l.mu.Lock()
				l.verified = start
				l.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// beat records one heartbeat and answers it.
func (l *liveness) beat(req *pb.HeartbeatRequest) *pb.HeartbeatResponse {
	s := l.s
	resp := &pb.HeartbeatResponse{Seq: req.Seq, LeaderId: s.leaderID(), Term: s.raft.CurrentTerm()}
	if !s.isReady() {
		resp.Reason = "not the leader"
		return resp
	}
	m, known := s.fsm.Member(req.MemberId)
	now := time.Now()
	leaseCap := s.memberLeaseCap(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leading {
		resp.Reason = "not the leader"
		return resp
	}
	p := l.peer(req.MemberId)
	if p.heard.IsZero() {
		l.wake() // a member heard for the first time may now take buckets
	}
	p.heard, p.incarnation = now, req.Incarnation
	resp.MemberState = m.State
	switch {
	case !known:
		resp.Reason = "not a member of this site"
	case m.State != pb.MemberState_MEMBER_STATE_ALIVE && m.State != pb.MemberState_MEMBER_STATE_DRAINING:
		resp.Reason = fmt.Sprintf("member is %s", m.State)
	case m.Incarnation != 0 && req.Incarnation != m.Incarnation:
		// A new process under the same ID: the old one is gone.
		if p.deadNow(m) == "" {
			p.dead, p.deadInc = "restarted (new incarnation)", m.Incarnation
			l.wake()
		}
		resp.Reason = "restarted: its buckets are being failed over"
	case now.Sub(l.verified) > l.s.cfg.freshLimit():
		resp.Reason = "leadership not confirmed recently"
	case leaseCap <= 0:
		resp.Reason = "the site holds no site lease"
	default:
		resp.Granted = true
		// The commit index, not only what this leader has applied: a
		// follower may apply a flip that moves a bucket off this member
		// before the leader does, and its handoff gate counts on every
		// grant made after the commit making this member apply it first.
		resp.AppliedIndex = max(s.fsm.AppliedIndex(), s.raft.CommitIndex())
		resp.LeaseMs = leaseCap.Milliseconds()
	}
	return resp
}

func (l *liveness) streamOpened(id string) {
	l.mu.Lock()
	l.peer(id).streams++
	l.mu.Unlock()
}

func (l *liveness) streamClosed(id string) {
	l.mu.Lock()
	p := l.peer(id)
	p.streams--
	last := p.streams == 0
	l.mu.Unlock()
	if last {
		l.suspect(id, "heartbeat stream closed")
	}
}

// suspect probes a member (see proveGone; one probe per member at a time)
// while this member leads and the suspect has no heartbeat stream open.
func (l *liveness) suspect(id, why string) {
	if id == l.s.cfg.MemberID {
		return
	}
	l.mu.Lock()
	if !l.leading {
		l.mu.Unlock()
		return
	}
	m, ok := l.s.fsm.Member(id)
	p := l.peer(id)
	if !ok || p.probing || p.deadNow(m) != "" {
		l.mu.Unlock()
		return
	}
	p.probing = true
	l.mu.Unlock()
	l.s.wg.Add(1)
	go func() {
		defer l.s.wg.Done()
		dead := l.s.proveGone(m, func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.leading && p.streams == 0
		})
		l.mu.Lock()
		p.probing = false
		if dead != "" && p.deadNow(m) == "" {
			p.dead, p.deadInc = dead, m.Incarnation
		}
		l.mu.Unlock()
		if dead != "" {
			l.s.logger.Info("member confirmed dead", "id", id, "signal", why, "probe", dead)
			l.wake()
		}
	}()
}

// failures returns the members (of those given) to fail now, with why.
// holding says which members hold a bucket role (see idleFailAfter).
func (l *liveness) failures(candidates []fsm.Member, holding map[string]bool) map[string]string {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]string{}
	if !l.leading {
		return out
	}
	for _, m := range candidates {
		id := m.ID
		if id == l.s.cfg.MemberID {
			continue // never reap yourself
		}
		p := l.peers[id]
		if p.deadNow(m) != "" {
			out[id] = p.dead
			continue
		}
		if now.Sub(l.since) < l.grace() {
			continue
		}
		last := l.since
		if p != nil {
			last = latest(last, p.heard, p.joined)
		}
		limit := l.idleFailAfter()
		if holding[id] {
			limit = l.failAfter()
		}
		if now.Sub(last) > limit {
			out[id] = "member lease expired (no heartbeat)"
		}
	}
	return out
}

// healthy reports whether the leader heard from a member within its lease
// (or is still in its grace period and has no proof of its death).
func (l *liveness) healthy(id string) bool {
	if id == l.s.cfg.MemberID {
		return true
	}
	m, _ := l.s.fsm.Member(id)
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.peers[id]
	if p.deadNow(m) != "" {
		return false
	}
	if p != nil && now.Sub(p.heard) <= l.s.cfg.MemberLease {
		return true
	}
	return now.Sub(l.since) < l.grace()
}

// heardFrom reports whether this leader heard, within a member lease, from
// the process recorded for member id (this leader itself counts when the
// record is of its own process).
func (l *liveness) heardFrom(id string) bool {
	m, ok := l.s.fsm.Member(id)
	if !ok {
		return false
	}
	if id == l.s.cfg.MemberID {
		return m.Incarnation == l.s.incarnation
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.peers[id]
	return l.leading && p != nil && p.deadNow(m) == "" && (m.Incarnation == 0 || p.incarnation == m.Incarnation) &&
		time.Since(p.heard) <= l.s.cfg.MemberLease
}

// joined records a member's (re)registration: it holds no bucket yet, and
// gets idleFailAfter to start heartbeating; it may take buckets once it has.
func (l *liveness) joined(id string) {
	l.mu.Lock()
	p := l.peer(id)
	p.joined, p.dead, p.deadInc = time.Now(), "", 0
	l.mu.Unlock()
}

func latest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if t.After(out) {
			out = t
		}
	}
	return out
}

// forget drops what is known of a member once it has been failed, so a
// rejoin starts afresh.
func (l *liveness) forget(id string) {
	l.mu.Lock()
	delete(l.peers, id)
	l.mu.Unlock()
}

// heartbeatAge returns how long ago the leader heard from id, or -1.
func (l *liveness) heartbeatAge(id string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p := l.peers[id]; l.leading && p != nil && !p.heard.IsZero() {
		return time.Since(p.heard)
	}
	return -1
}

// proveGone probes m (see probe) until a probe proves its process gone,
// for which it returns the reason, or until HeartbeatTimeout has passed or
// still says to stop, for which it returns "". One probe is not enough: a
// stream to a killed process breaks as the kernel tears the process's
// sockets down, and a probe sent at that instant can still be accepted by
// its listening socket and then reset, which proves nothing. That race
// left 2 of 20 leader kills to Raft's election timers and some member
// kills to Raft's heartbeat failures (2026-11-28).
func (s *Server) proveGone(m fsm.Member, still func() bool) string {
	deadline := time.Now().Add(s.cfg.HeartbeatTimeout)
	for {
		if why := s.probe(m); why != "" {
			return why
		}
		if !time.Now().Before(deadline) {
			return ""
		}
		select {
		case <-s.stop:
			return ""
		case <-time.After(s.cfg.HeartbeatTimeout / 10):
		}
		if !still() {
			return ""
		}
	}
}

// probe checks whether the process recorded for member m is gone. It
// returns why it is dead, or "" if that cannot be told (it answered as
// itself, or did not answer at all).
func (s *Server) probe(m fsm.Member) string {
	id := m.ID
	if m.GRPCAddr == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(s.ctx, 250*time.Millisecond)
	defer cancel()
	c, err := s.network.Dial(ctx, m.GRPCAddr)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return "connection refused at " + m.GRPCAddr
		}
		return ""
	}
	c.Close()
	cc, err := grpc.NewClient("passthrough:///"+m.GRPCAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return s.network.Dial(ctx, a) }))
	if err != nil {
		return ""
	}
	defer cc.Close()
	st, err := pb.NewOperatorServiceClient(cc).Status(ctx, &pb.StatusRequest{})
	switch {
	case err != nil:
		return ""
	case st.MemberId != id:
		return fmt.Sprintf("%s now answers as %s", m.GRPCAddr, st.MemberId)
	case m.Incarnation != 0 && st.Incarnation != m.Incarnation:
		return "restarted (new incarnation)"
	}
	return ""
}

// observeRaft turns Raft's failed heartbeats to a follower into probes.
func (s *Server) observeRaft() {
	defer s.wg.Done()
	ch := make(chan raft.Observation, 64)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.FailedHeartbeatObservation)
		return ok
	})
	s.raft.RegisterObserver(obs)
	defer s.raft.DeregisterObserver(obs)
	for {
		select {
		case <-s.stop:
			return
		case o := <-ch:
			if f, ok := o.Data.(raft.FailedHeartbeatObservation); ok {
				s.live.suspect(string(f.PeerID), "raft heartbeat failed")
			}
		}
	}
}

// memberService implements MemberService.
type memberService struct {
	pb.UnimplementedMemberServiceServer
	s *Server
}

func (m *memberService) Heartbeat(st pb.MemberService_HeartbeatServer) error {
	s := m.s
	reqs := make(chan *pb.HeartbeatRequest)
	go func() { // ends when the stream does (the handler's return ends it)
		defer close(reqs)
		for {
			req, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- req:
			case <-st.Context().Done():
				return
			}
		}
	}()
	var id string
	defer func() {
		if id != "" {
			s.live.streamClosed(id)
		}
	}()
	for {
		var req *pb.HeartbeatRequest
		select {
		case <-s.stop:
			return ErrShutdown
		case r, ok := <-reqs:
			if !ok {
				return nil // the member went away; streamClosed probes it
			}
			req = r
		}
		switch {
		case id == "":
			if err := checkMemberID("member_id", req.MemberId); err != nil {
				return err
			}
			id = req.MemberId
			s.live.streamOpened(id)
		case req.MemberId != id:
			return invalid("member_id", "%q on a stream opened by %q", req.MemberId, id)
		}
		if req.SnapshotWanted != 0 && s.isReady() {
			s.snapshots.want(req.SnapshotWanted)
		}
		if err := st.Send(s.live.beat(req)); err != nil {
			return nil
		}
	}
}

// sortedIDs returns map keys in order.
func sortedIDs[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
