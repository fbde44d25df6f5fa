package server

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/repl"
)

// replView adapts the server to what package repl reads.
type replView struct{ s *Server }

func (v replView) Self() string                               { return v.s.cfg.MemberID }
func (v replView) Site() string                               { return v.s.cfg.Site }
func (v replView) Standby() bool                              { return v.s.fsm.Standby() }
func (v replView) Peer() (*repl.Peer, <-chan struct{})        { return v.s.siteLink.watch() }
func (v replView) Incarnation() uint64                        { return v.s.incarnation }
func (v replView) Assignments() ([]fsm.Assignment, uint64)    { return v.s.fsm.Buckets() }
func (v replView) Assignment(b uint32) (fsm.Assignment, bool) { return v.s.fsm.Assignment(b) }
func (v replView) Generation() uint64                         { return v.s.fsm.Generation() }
func (v replView) Watch() (uint64, <-chan struct{})           { return v.s.fsm.Watch() }
func (v replView) Acting() bool                               { return v.s.lease.acting() }
func (v replView) Pending(b uint32, epoch uint64) bool        { return v.s.handoff.pending(b, epoch) }
func (v replView) Addr(member string) (string, bool) {
	if m, ok := v.s.fsm.Member(member); ok && m.GRPCAddr != "" {
		return m.GRPCAddr, true
	}
	return v.s.peerAddr(member)
}

// replHolder starts the replicator once the state machine knows the site's
// bucket count (a joining member learns it from the log).
type replHolder struct {
	mu    sync.Mutex
	r     *repl.Replicator
	ready chan struct{}
}

// replicator returns the running replicator, or nil until it starts.
func (s *Server) replicator() *repl.Replicator {
	s.repl.mu.Lock()
	defer s.repl.mu.Unlock()
	return s.repl.r
}

// waitReplicator waits for the replicator to start.
func (s *Server) waitReplicator(ctx context.Context) (*repl.Replicator, error) {
	select {
	case <-s.repl.ready:
		return s.replicator(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.stop:
		return nil, ErrShutdown
	}
}

// runReplicator starts the replicator when the site's bucket count is known
// and runs it until shutdown.
func (s *Server) runReplicator() {
	defer s.wg.Done()
	for {
		_, changed := s.fsm.Watch()
		if n := s.fsm.Stats().BucketCount; n > 0 {
			r := repl.New(repl.Config{View: replView{s}, BucketCount: n, Delays: s.cfg.DelayClasses, RemoteCompression: s.cfg.RemoteCompression,
				Dial: s.replPeers.get, Logger: s.logger.Named("repl"), OnApply: s.cfg.OnReplicaApply})
			s.repl.mu.Lock()
			s.repl.r = r
			s.repl.mu.Unlock()
			close(s.repl.ready)
			r.Run(s.ctx)
			return
		}
		select {
		case <-s.stop:
			return
		case <-changed:
		}
	}
}

// replSyncer is the BackupSyncer of a member without one configured: the
// replicator's full sync.
type replSyncer struct{ s *Server }

func (y replSyncer) Sync(ctx context.Context, b uint32, a fsm.Assignment) error {
	r, err := y.s.waitReplicator(ctx)
	if err != nil {
		return err
	}
	return r.Sync(ctx, b, a)
}

var errReplNotReady = status.Error(codes.Unavailable, "server: replication is not running yet (the member has not learned its site)")

// dataPlaneService implements DataPlaneService.
type dataPlaneService struct {
	pb.UnimplementedDataPlaneServiceServer
	s *Server
}

func (d *dataPlaneService) Publish(st pb.DataPlaneService_PublishServer) error {
	r := d.s.replicator()
	if r == nil {
		return errReplNotReady
	}
	return r.Publish(st)
}

func (d *dataPlaneService) WatchActivations(req *pb.WatchActivationsRequest, st pb.DataPlaneService_WatchActivationsServer) error {
	r, err := d.s.waitReplicator(st.Context())
	if err != nil {
		return toStatus(err)
	}
	return r.WatchActivations(req, st)
}

func (d *dataPlaneService) Dump(ctx context.Context, req *pb.DumpRequest) (*pb.DumpResponse, error) {
	r := d.s.replicator()
	if r == nil {
		return nil, errReplNotReady
	}
	return r.Dump(req)
}

func (m *memberService) Replicate(st pb.MemberService_ReplicateServer) error {
	r, err := m.s.waitReplicator(st.Context())
	if err != nil {
		return toStatus(err)
	}
	return r.Receive(st)
}

func (o *operatorService) SyncStatus(ctx context.Context, _ *pb.SyncStatusRequest) (*pb.SyncStatusResponse, error) {
	r := o.s.replicator()
	if r == nil {
		return nil, errReplNotReady
	}
	return r.Status(), nil
}
