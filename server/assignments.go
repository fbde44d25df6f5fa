package server

import (
	"context"
	"errors"
	"sync"
	"time"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/repl"
)

// assignmentService implements AssignmentService from the local state
// machine.
type assignmentService struct {
	pb.UnimplementedAssignmentServiceServer
	s *Server
}

func (a *assignmentService) WatchAssignments(req *pb.WatchAssignmentsRequest, st pb.AssignmentService_WatchAssignmentsServer) error {
	f := a.s.fsm
	rev, first := req.FromRevision, true
	// known is how many buckets the watcher's map has. A change to a bucket
	// past it (the site was initialised after the watch began: its map was
	// empty) is sent as a full map, or the watcher would drop it.
	known := 0
	if rev != 0 {
		known = int(f.Stats().BucketCount) // resuming: its map is the site's
	}
	for {
		_, changed := f.Watch()
		buckets, as, applied := f.ChangedSince(rev)
		full := first && rev == 0
		for _, b := range buckets {
			full = full || int(b) >= known
		}
		if full { // every bucket, at the table's own index
			var at uint64
			as, at = f.Buckets()
			buckets, applied, known = make([]uint32, len(as)), max(applied, at), len(as)
			for i := range buckets {
				buckets[i] = uint32(i)
			}
		}
		if full || first || len(buckets) > 0 {
			resp := &pb.WatchAssignmentsResponse{Revision: applied, FullMap: full, Assignments: make([]*pb.Assignment, len(buckets))}
			for i, b := range buckets {
				resp.Assignments[i] = as[i].Proto(b)
			}
			if err := st.Send(resp); err != nil {
				return err
			}
			first = false
		}
		rev = max(rev, applied)
		select {
		case <-st.Context().Done():
			return nil
		case <-a.s.stop:
			return ErrShutdown
		case <-changed:
		}
	}
}

func (a *assignmentService) ListAssignments(ctx context.Context, req *pb.ListAssignmentsRequest) (*pb.ListAssignmentsResponse, error) {
	if err := a.s.read(ctx, req.Consistency); err != nil {
		return nil, err
	}
	as, applied := a.s.fsm.Buckets()
	out := &pb.ListAssignmentsResponse{Revision: applied, Assignments: make([]*pb.Assignment, len(as))}
	for i, x := range as {
		out.Assignments[i] = x.Proto(uint32(i))
	}
	return out, nil
}

// ReportSynced records finished full syncs (leader only; the forwarding
// interceptor sends it there).
func (m *memberService) ReportSynced(ctx context.Context, req *pb.ReportSyncedRequest) (*pb.ReportSyncedResponse, error) {
	if err := checkMemberID("member_id", req.MemberId); err != nil {
		return nil, err
	}
	if len(req.Buckets) == 0 {
		return nil, invalid("buckets", "at least one bucket is required")
	}
	op := &ipb.Op{Op: &ipb.Op_MarkSynced{MarkSynced: &ipb.MarkSyncedOp{MemberId: req.MemberId, Buckets: req.Buckets}}}
	r, err := m.s.write1(ctx, nil, op)
	if err != nil {
		return nil, err
	}
	return &pb.ReportSyncedResponse{Accepted: uint32(r.Epoch)}, nil
}

// BackupSyncer copies a bucket's connections to this member when it becomes
// the bucket's local backup. Sync returns nil once this member holds every
// connection the primary had for the bucket at assignment a (deltas keep
// flowing meanwhile and are applied by version, so later changes are not
// lost); the member then reports the bucket synced and the leader may flip a
// move to it. Sync is called from several goroutines; it should return
// promptly when ctx ends.
type BackupSyncer interface {
	Sync(ctx context.Context, bucket uint32, a fsm.Assignment) error
}

// syncLoop runs the member side of full sync: for every bucket this member
// is the local backup or the incoming member of (on a standby site: the
// primary holding the remote backup of) and has not synced yet, run the
// syncer, then report the result to the leader in batches. A sync whose
// role goes away before it finishes (its bucket's epoch moved on: a role
// change or a change of the site's mode) is cancelled through its context:
// at most syncConcurrency run at once, and one that kept waiting for a
// marker no primary will send would hold its slot for good (the
// replicator's Sync also gives up then, ErrSuperseded; a job still
// waiting for a slot does not).
func (s *Server) syncLoop() {
	defer s.wg.Done()
	syncer := s.cfg.Syncer
	type job struct {
		bucket uint32
		epoch  uint64
	}
	type run struct{ cancel context.CancelFunc } // a started job, until reported
	var (
		mu      sync.Mutex
		running = map[job]*run{} // started and not yet reported
		done    []*pb.BucketEpoch
		wake    = make(chan struct{}, 1)
	)
	sem := make(chan struct{}, syncConcurrency)
	for {
		_, changed := s.fsm.Watch()
		as, _ := s.fsm.Buckets()
		standby := s.fsm.Standby()
		for i, a := range as {
			j := job{uint32(i), a.Epoch}
			if !repl.NeedsSync(a, s.cfg.MemberID, standby) {
				continue
			}
			mu.Lock()
			started := running[j] != nil
			var me *run
			if !started {
				me = &run{}
				running[j] = me
			}
			mu.Unlock()
			if started {
				continue
			}
			ctx, cancel := context.WithCancel(s.ctx)
			me.cancel = cancel
			s.wg.Add(1)
			go func(j job, a fsm.Assignment) {
				defer s.wg.Done()
				defer cancel()
				var err error
				select {
				case sem <- struct{}{}:
					err = syncer.Sync(ctx, j.bucket, a)
					<-sem
				case <-ctx.Done():
					err = ctx.Err()
				}
				mu.Lock()
				switch {
				case err == nil:
					done = append(done, &pb.BucketEpoch{Bucket: j.bucket, Epoch: j.epoch})
				case running[j] == me:
					delete(running, j) // try again on the next change or tick
				}
				mu.Unlock()
				switch {
				case err == nil || s.ctx.Err() != nil:
				case ctx.Err() != nil:
					s.logger.Debug("full sync no longer needed", "bucket", j.bucket, "epoch", j.epoch)
				case errors.Is(err, repl.ErrSuperseded): // a newer assignment has its own sync
					s.logger.Debug("full sync superseded", "bucket", j.bucket)
				default:
					s.logger.Warn("full sync failed", "bucket", j.bucket, "error", err)
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			}(j, a)
		}
		mu.Lock()
		batch := done
		done = nil
		mu.Unlock()
		if len(batch) > 0 && !s.reportSynced(batch) {
			mu.Lock()
			done = append(batch, done...)
			mu.Unlock()
		}
		// Cancel and forget jobs whose bucket has moved on or whose role
		// this member no longer holds, so memory stays bounded by the
		// buckets this member backs up and no sync waits for a marker that
		// will not come.
		mu.Lock()
		for j, r := range running {
			if a := as[j.bucket]; a.Epoch != j.epoch || !repl.HoldsCopy(a, s.cfg.MemberID, standby) {
				r.cancel()
				delete(running, j)
			}
		}
		mu.Unlock()
		select {
		case <-s.stop:
			return
		case <-changed:
		case <-wake:
		case <-time.After(time.Second):
		}
	}
}

// syncConcurrency bounds the full syncs a member waits for at once.
const syncConcurrency = 16

// reportSynced sends finished syncs to the leader; false if it must be
// retried.
func (s *Server) reportSynced(batch []*pb.BucketEpoch) bool {
	conn, err := s.peers.get(s.cfg.grpcAdvertise()) // this member forwards to the leader
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ApplyTimeout)
	defer cancel()
	r, err := pb.NewMemberServiceClient(conn).ReportSynced(ctx, &pb.ReportSyncedRequest{MemberId: s.cfg.MemberID, Buckets: batch})
	if err != nil {
		s.logger.Debug("report synced", "buckets", len(batch), "error", err)
		return false
	}
	s.logger.Debug("reported synced", "buckets", len(batch), "accepted", r.Accepted)
	return true
}

func (a *assignmentService) GetActive(ctx context.Context, _ *pb.GetActiveRequest) (*pb.GetActiveResponse, error) {
	s := a.s
	buckets, applied := s.lease.activeBuckets()
	return &pb.GetActiveResponse{MemberId: s.cfg.MemberID, LeaseValid: s.lease.valid(), Buckets: buckets, AppliedIndex: applied}, nil
}
