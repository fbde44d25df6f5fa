package server

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/internal/sabotage"
)

// leaseKeeper is the member side of the member lease (see MemberService.
// Heartbeat in api/connsync/v1/member.proto). It keeps one heartbeat stream
// to the site leader, sends a beat every HeartbeatInterval, and extends the
// lease to send time + MemberLease for each granted answer. The member acts
// as primary only while the lease holds and its state machine has applied
// as far as the leader had committed when it granted it (the highest such
// index of every grant), so a member that comes back from a pause or a
// partition learns that its buckets moved before it could act on them
// again. (Keeping each grant apart, so that a member a few entries behind
// the newest grant could act under an older one, was tried and reverted:
// TestProcess_PausedMemberNeverActsOnLostBuckets failed once with it, cause
// not found; docs/CHAOS.md, seed 8294.)
//
// Only monotonic clock readings are compared, never wall-clock times of two
// machines.
type leaseKeeper struct {
	s *Server

	mu         sync.Mutex
	expires    time.Time // zero: no lease
	minApplied uint64    // the state machine must have applied this far
	state      pb.MemberState
	sent       map[uint64]time.Time // seq -> send time, for beats in flight
	seq        uint64
	rejoin     chan struct{} // signalled when the leader says this member is failed or unknown
	// staleSeen is the state machine's count of refused stale snapshots
	// last seen; the member asks for a snapshot until staleUntil.
	staleSeen  uint64
	staleUntil time.Time
}

func newLeaseKeeper(s *Server) *leaseKeeper {
	return &leaseKeeper{s: s, sent: map[uint64]time.Time{}, rejoin: make(chan struct{}, 1)}
}

// valid reports whether the lease holds now.
func (l *leaseKeeper) valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().Before(l.expires)
}

// acting reports whether the member may act as primary: the lease holds,
// the state machine has caught up with the grant, and the site is not a
// standby site.
func (l *leaseKeeper) acting() bool {
	if sabotage.IgnoreMemberLease.Load() {
		return !l.s.fsm.Standby()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().Before(l.expires) && l.s.fsm.AppliedIndex() >= l.minApplied && !l.s.fsm.Standby()
}

// activeBuckets returns the buckets this member acts as primary for now:
// none without a lease, else those the state machine assigns it that no
// other member may still act for (handoff).
func (l *leaseKeeper) activeBuckets() ([]*pb.BucketEpoch, uint64) {
	as, applied := l.s.fsm.Buckets()
	if !l.acting() {
		return nil, applied
	}
	var out []*pb.BucketEpoch
	for i, a := range as {
		if a.Primary == l.s.cfg.MemberID && !l.s.handoff.pending(uint32(i), a.Epoch) {
			out = append(out, &pb.BucketEpoch{Bucket: uint32(i), Epoch: a.Epoch})
		}
	}
	return out, applied
}

// drop ends the lease at once (the leader refused it).
func (l *leaseKeeper) drop() {
	l.mu.Lock()
	l.expires = time.Time{}
	l.mu.Unlock()
}

// run keeps a heartbeat stream to the current leader until stop. A member
// that hears from no leader for longer than twice its lease asks to join
// again: the leader may have removed it from the Raft configuration (a
// failed voter is replaced), and then no leader will ever contact it.
func (l *leaseKeeper) run() {
	s := l.s
	defer s.wg.Done()
	backoff := s.cfg.HeartbeatInterval
	lastLeader := time.Now()
	for {
		err := l.stream()
		select {
		case <-s.stop:
			return
		default:
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			s.logger.Debug("lease heartbeat stream ended", "error", err)
			s.election.leaderLost(s.leaderID())
		}
		if s.leaderID() != "" {
			lastLeader = time.Now()
		} else if time.Since(lastLeader) > 2*s.cfg.MemberLease {
			lastLeader = time.Now()
			select {
			case l.rejoin <- struct{}{}:
			default:
			}
		}
		select {
		case <-s.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 4*s.cfg.HeartbeatInterval)
	}
}

// stream runs one heartbeat stream to the leader as this member knows it; it
// returns when the stream breaks or the leader changes.
func (l *leaseKeeper) stream() error {
	s := l.s
	addr, err := s.leaderGRPCAddr()
	if err != nil {
		return err
	}
	leaderID := s.leaderID()
	conn, err := s.peers.get(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	st, err := pb.NewMemberServiceClient(conn).Heartbeat(ctx)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- l.receive(st) }()
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		if s.leaderID() != leaderID {
			return nil // follow the new leader
		}
		l.mu.Lock()
		l.seq++
		seq := l.seq
		l.sent[seq] = time.Now()
		for old := range l.sent { // answers that never came
			if old+64 < seq {
				delete(l.sent, old)
			}
		}
		l.mu.Unlock()
		req := &pb.HeartbeatRequest{MemberId: s.cfg.MemberID, Incarnation: s.incarnation, Seq: seq,
			AppliedIndex: s.fsm.AppliedIndex(), SnapshotWanted: l.snapshotWanted(time.Now())}
		if err := st.Send(req); err != nil {
			return err
		}
		select {
		case <-s.stop:
			return nil
		case err := <-errc:
			return err
		case <-t.C:
		}
	}
}

func (l *leaseKeeper) receive(st pb.MemberService_HeartbeatClient) error {
	for {
		resp, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		l.answer(resp)
	}
}

// answer applies one heartbeat answer.
func (l *leaseKeeper) answer(resp *pb.HeartbeatResponse) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sent, ok := l.sent[resp.Seq]
	delete(l.sent, resp.Seq)
	l.state = resp.MemberState
	if !resp.Granted {
		l.expires = time.Time{}
		switch resp.MemberState {
		case pb.MemberState_MEMBER_STATE_UNSPECIFIED, pb.MemberState_MEMBER_STATE_FAILED:
			select {
			case l.rejoin <- struct{}{}:
			default:
			}
		}
		return
	}
	if !ok {
		return
	}
	d := l.s.cfg.MemberLease
	if resp.LeaseMs > 0 {
		d = min(d, time.Duration(resp.LeaseMs)*time.Millisecond) // cut to the site lease
	}
	if exp := sent.Add(d); exp.After(l.expires) {
		l.expires = exp
	}
	l.minApplied = max(l.minApplied, resp.AppliedIndex)
}

// rejoinLoop joins the site again whenever the leader says this member is
// failed or unknown: after a restart, a pause or a partition its buckets have
// moved, and it comes back as a fresh member that gets buckets make-before-
// break.
func (s *Server) rejoinLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			return
		case <-s.lease.rejoin:
		}
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		err := s.joinOnce(ctx)
		cancel()
		if err != nil {
			s.logger.Warn("rejoin failed, will retry", "error", err)
			select {
			case <-s.stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}
