package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	"google.golang.org/grpc"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/membership"
)

// Version is reported by Status.
var Version = "0.1.0-dev"

// Server is one running member. Create it with New; stop it with Shutdown.
type Server struct {
	cfg     Config
	logger  hclog.Logger
	network Network

	fsm       *fsm.FSM
	raft      *raft.Raft
	store     *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	proposer  *proposer

	grpcServer *grpc.Server
	grpcLn     net.Listener
	peers      *peerConns // control traffic: heartbeats, leadership questions, forwarded writes, ...
	replPeers  *peerConns // the replication streams, on connections of their own
	siteLink   *siteLink  // nil on a single-site cluster
	siteLease  siteLease  // witness policy

	// incarnation is chosen at random when the process starts.
	incarnation uint64
	live        *liveness        // the leader's view of member liveness
	lease       *leaseKeeper     // this member's own lease
	handoff     *handoff         // buckets taken over that it may not act for yet
	election    fastElection     // elections started on proof that the leader is gone
	snapshots   snapshotTaker    // snapshots followers ask for (stalesnap.go)
	pool        *membership.Pool // gossip; nil without GossipBind
	repl        replHolder       // connection-state replication

	// ready is closed once this member, as leader, has applied a barrier in
	// its current term; replaced on every leadership change. Guarded by mu.
	// readyTerm is the term that barrier was applied in: a closed ready
	// channel counts only while Raft is still in that term, so a channel
	// left over from an earlier term can never make a new term look ready.
	mu        sync.Mutex
	ready     chan struct{}
	readyTerm atomic.Uint64

	// ctx is cancelled when the member shuts down.
	ctx    context.Context
	cancel context.CancelFunc

	lastProposeNanos atomic.Int64
	shutdownOnce     sync.Once
	stopOnce         sync.Once
	stop             chan struct{}
	wg               sync.WaitGroup
}

// New validates cfg, opens the member's stores, starts Raft and the gRPC
// server, and returns once both listen. A member whose data directory holds
// Raft state resumes from it; otherwise it bootstraps (cfg.Bootstrap) or joins
// (cfg.Join) in the background.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("server: invalid config: %w", err)
	}
	s := &Server{cfg: cfg, network: cfg.Network, logger: cfg.Logger, fsm: fsm.New(),
		ready: make(chan struct{}), stop: make(chan struct{}), incarnation: newIncarnation()}
	s.repl.ready = make(chan struct{})
	if s.cfg.Syncer == nil {
		s.cfg.Syncer = replSyncer{s}
	}
	s.live, s.lease, s.handoff = newLiveness(s), newLeaseKeeper(s), newHandoff(s)
	s.election.s = s
	s.snapshots.s = s
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if s.network == nil {
		s.network = TCPNetwork{}
	}
	if s.logger == nil {
		s.logger = hclog.New(&hclog.LoggerOptions{Name: "connsyncd", Level: hclog.Info})
	}
	s.logger = s.logger.With("member", cfg.MemberID)
	s.peers, s.replPeers = newPeerConns(s.network), newPeerConns(s.network)
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()
	if err := s.startRaft(); err != nil {
		return nil, err
	}
	if err := s.startGRPC(); err != nil {
		return nil, err
	}
	if err := s.startGossip(); err != nil {
		return nil, err
	}
	s.wg.Add(7)
	go s.runReplicator()
	go s.tickLoop()
	go s.peersLoop()
	go s.lease.run()
	s.wg.Add(1)
	go s.handoff.run()
	go s.rejoinLoop()
	go s.syncLoop()
	go s.observeRaft()
	if len(s.cfg.PeerSite) > 0 {
		s.siteLink = newSiteLink(s, s.cfg.PeerSite)
		s.wg.Add(1)
		go s.siteLink.run()
	}
	ok = true
	return s, nil
}

func (s *Server) startRaft() error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	// fsync stays on (NoSync false). The freelist is not synced on every
	// commit (bolt rebuilds it on open, as Consul configures it) and the
	// mmap starts large so the file's growth does not remap under load:
	// measured on this project's 2-core machine, StoreLogs p90 3.1ms -> 0.5ms
	// and max 63ms -> 8ms.
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(s.cfg.DataDir, "raft.db"),
		BoltOptions: &bbolt.Options{
			Timeout:         time.Second, // another process holding the file fails fast
			NoFreelistSync:  true,
			FreelistType:    bbolt.FreelistMapType,
			InitialMmapSize: 256 << 20,
		},
	})
	if err != nil {
		return fmt.Errorf("server: open raft.db: %w", err)
	}
	s.store = store
	cache, err := raft.NewLogCache(1024, store)
	if err != nil {
		return err
	}
	var logs raft.LogStore = cache
	if s.cfg.WrapLogStore != nil {
		logs = s.cfg.WrapLogStore(cache)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(s.cfg.DataDir, 2, s.logger.Named("snapshot"))
	if err != nil {
		return fmt.Errorf("server: snapshot store: %w", err)
	}
	ln, err := s.network.Listen(s.cfg.RaftBind)
	if err != nil {
		return fmt.Errorf("server: raft listen %s: %w", s.cfg.RaftBind, err)
	}
	adv, err := net.ResolveTCPAddr("tcp", s.cfg.raftAdvertise())
	if err != nil {
		ln.Close()
		return fmt.Errorf("server: raft-advertise: %w", err)
	}
	// MaxRPCsInFlight 1 turns raft's pipelined replication off: with the
	// default (2) its pipeline channels are unbuffered, and a follower that
	// answers an AppendEntries with Success=false can leave the leader's
	// replication goroutine blocked for good (the follower gets no more
	// entries, and Raft's shutdown never returns). The chaos suite hit it
	// (seed 6, with a delayed link); grafana/pyroscope#5518 describes it.
	s.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &streamLayer{Listener: ln, advertise: adv, network: s.network},
		MaxPool: poolSize, Timeout: 2 * time.Second, Logger: s.logger.Named("transport"), MaxRPCsInFlight: 1,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.cfg.MemberID)
	rc.HeartbeatTimeout = s.cfg.HeartbeatTimeout
	rc.ElectionTimeout = s.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = s.cfg.LeaderLeaseTimeout
	rc.CommitTimeout = s.cfg.CommitTimeout
	rc.SnapshotThreshold = s.cfg.SnapshotThreshold
	rc.SnapshotInterval = s.cfg.SnapshotInterval
	rc.TrailingLogs = s.cfg.TrailingLogs
	rc.BatchApplyCh = true
	rc.Logger = s.logger.Named("raft")
	notify := make(chan bool, 16)
	rc.NotifyCh = notify

	existing, err := raft.HasExistingState(logs, store, snaps)
	if err != nil {
		return fmt.Errorf("server: read raft state: %w", err)
	}
	s.raft, err = raft.NewRaft(rc, s.fsm, logs, store, snaps, s.transport)
	if err != nil {
		return fmt.Errorf("server: start raft: %w", err)
	}
	s.proposer = newProposer(s.raft, &s.cfg, s.logger, func(t time.Time) { s.lastProposeNanos.Store(t.UnixNano()) })
	s.wg.Add(1)
	go s.leadershipLoop(notify)

	switch {
	case existing:
		s.logger.Info("resuming from existing raft state", "data_dir", s.cfg.DataDir)
	case s.cfg.Bootstrap:
		err := s.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: s.transport.LocalAddr(), Suffrage: raft.Voter}}}).Error()
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("server: bootstrap: %w", err)
		}
		s.logger.Info("bootstrapped new site", "site", s.cfg.Site)
	case len(s.cfg.Join) > 0:
		s.wg.Add(1)
		go s.joinLoop()
	default:
		s.logger.Warn("no raft state, not bootstrapping and nothing to join: waiting to be added by an operator")
	}
	return nil
}

// joinRequest describes this member to the site.
func (s *Server) joinRequest() *pb.JoinRequest {
	return &pb.JoinRequest{MemberId: s.cfg.MemberID, Site: s.cfg.Site, RaftAddr: s.cfg.raftAdvertise(),
		GrpcAddr: s.cfg.grpcAdvertise(), Weight: s.cfg.Weight, Nonvoter: !s.cfg.Voter,
		Incarnation: s.incarnation, GossipAddr: s.cfg.gossipAdvertise()}
}

// joinOnce asks the site to add this member: through the current leader if
// one is known, else through the configured join addresses and the peers
// this member knows (knownPeers): a member the leader removed from the Raft
// configuration hears from no leader, but still knows where its peers are.
func (s *Server) joinOnce(ctx context.Context) error {
	addrs := append([]string(nil), s.cfg.Join...)
	if a, err := s.leaderGRPCAddr(); err == nil {
		addrs = append([]string{a}, addrs...)
	}
	for _, a := range s.knownPeers() {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	var err error
	for _, addr := range addrs {
		var conn *grpc.ClientConn
		if conn, err = s.peers.get(addr); err != nil {
			continue
		}
		if _, err = pb.NewOperatorServiceClient(conn).Join(ctx, s.joinRequest()); err == nil {
			s.logger.Info("joined site", "via", addr)
			return nil
		}
	}
	if err == nil {
		err = ErrNoLeader
	}
	return err
}

// joinLoop asks the configured members to add this one until one succeeds.
func (s *Server) joinLoop() {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		err := s.joinOnce(ctx)
		cancel()
		if err == nil {
			return
		}
		s.logger.Warn("join failed, will retry", "error", err)
		select {
		case <-s.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// leadershipLoop drains Raft's NotifyCh (Raft blocks if it is not drained)
// and runs leaderSetup for each term this member leads.
func (s *Server) leadershipLoop(notify <-chan bool) {
	defer s.wg.Done()
	stopLeader := func() {}
	defer func() { stopLeader() }()
	for {
		select {
		case <-s.stop:
			return
		case isLeader := <-notify:
			stopLeader()
			stopLeader = func() {}
			s.mu.Lock()
			s.ready = make(chan struct{})
			ready := s.ready
			s.mu.Unlock()
			if isLeader {
				ctx, cancel := context.WithCancel(s.ctx)
				stopLeader = cancel
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					if s.leaderSetup(ctx, ready) {
						if s.witnessPolicy() {
							s.wg.Add(1)
							go s.siteLeaseLoop(ctx)
						}
						s.reconcileLoop(ctx)
					}
				}()
			}
		}
	}
}

// leaderSetup runs when this member gains leadership: a barrier so the FSM
// holds every committed entry, then the site and this member are recorded,
// then writes are served. It reports whether this member is ready.
func (s *Server) leaderSetup(ctx context.Context, ready chan struct{}) bool {
	term := s.raft.CurrentTerm()
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return false
		}
		err := awaitFuture(s.raft.Barrier(s.cfg.ApplyTimeout), ctx.Done())
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		s.logger.Warn("barrier failed", "error", err)
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
			return false
		}
	}
	st := s.fsm.Stats()
	if st.Site != "" && st.Site != s.cfg.Site {
		s.abdicate(fmt.Errorf("configured site %q differs from site %q in the raft state of %s", s.cfg.Site, st.Site, s.cfg.DataDir))
		return false
	}
	var ops []*ipb.Op
	if st.Site == "" {
		ops = append(ops, initSiteOp(s.cfg.Site, s.cfg.BucketCount, s.cfg.Standby))
	}
	// A record of an earlier process of this member (another incarnation)
	// that still holds buckets is left for the reconcile loop, which fails
	// those buckets over before registering this process.
	m, ok := s.fsm.Member(s.cfg.MemberID)
	restarted := ok && m.Incarnation != 0 && m.Incarnation != s.incarnation && active(m.State)
	if !ok || (!restarted && !s.registered(m)) {
		ops = append(ops, registerMemberOp(s.selfMember()))
	}
	for len(ops) > 0 && ctx.Err() == nil {
		_, err := s.applyDirect(ops...)
		if err == nil {
			break
		}
		var domain *fsm.Error
		if errors.As(err, &domain) { // the state refuses this member: retrying cannot help
			s.abdicate(fmt.Errorf("leader setup: %w", err))
			return false
		}
		s.logger.Warn("leader setup write failed", "error", err)
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if ctx.Err() == nil && s.raft.CurrentTerm() == term {
		s.readyTerm.Store(term)
		s.logger.Info("leader ready", "term", term)
		close(ready)
		return true
	}
	return false
}

// registered reports whether m is this process's current, alive record.
func (s *Server) registered(m fsm.Member) bool {
	return m.GRPCAddr == s.cfg.grpcAdvertise() && m.RaftAddr == s.cfg.raftAdvertise() &&
		m.GossipAddr == s.cfg.gossipAdvertise() && m.Incarnation == s.incarnation &&
		m.State == pb.MemberState_MEMBER_STATE_ALIVE
}

// abdicate is for a leader that cannot serve (its configuration contradicts
// the replicated state): it says why and hands leadership to another voter.
// It never becomes ready, so it serves no writes while it still leads.
func (s *Server) abdicate(why error) {
	s.logger.Error("cannot serve as leader; transferring leadership", "error", why)
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		s.logger.Error("leadership transfer failed; this member stays leader but serves no writes", "error", err)
	}
}

func (s *Server) selfMember() *pb.Member {
	return &pb.Member{Id: s.cfg.MemberID, Site: s.cfg.Site, RaftAddr: s.cfg.raftAdvertise(),
		GrpcAddr: s.cfg.grpcAdvertise(), Weight: s.cfg.Weight, GossipAddr: s.cfg.gossipAdvertise(),
		Nonvoter: !s.cfg.Voter, Incarnation: s.incarnation}
}

// leaderID returns the current leader's member ID, "" if none is known.
func (s *Server) leaderID() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

func newIncarnation() uint64 {
	for {
		if n := rand.Uint64(); n != 0 {
			return n
		}
	}
}

// tickLoop appends an empty entry when the leader has been idle for a second,
// so the FSM's log time advances and expired leases show as expired in reads.
func (s *Server) tickLoop() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			if !s.isReady() || now.UnixNano()-s.lastProposeNanos.Load() < int64(time.Second) {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ApplyTimeout)
			_, _ = s.proposer.propose(ctx, &ipb.Proposal{}) // no operations: only advances log time
			cancel()
		}
	}
}

// isReady reports whether this member is the leader and has applied its
// barrier in the current term.
func (s *Server) isReady() bool {
	s.mu.Lock()
	ready := s.ready
	s.mu.Unlock()
	select {
	case <-ready:
		return s.raft.State() == raft.Leader && s.raft.CurrentTerm() == s.readyTerm.Load()
	default:
		return false
	}
}

// waitReady waits until this member is a ready leader and returns the term
// it is ready in. It fails at once with raft.ErrNotLeader if the member is
// not the leader.
func (s *Server) waitReady(ctx context.Context) (uint64, error) {
	for {
		if s.raft.State() != raft.Leader {
			return 0, raft.ErrNotLeader
		}
		if s.isReady() {
			return s.readyTerm.Load(), nil
		}
		s.mu.Lock()
		ready := s.ready
		s.mu.Unlock()
		select {
		case <-ready:
			// Closed for an earlier term: poll until this term's setup is done.
			select {
			case <-time.After(5 * time.Millisecond):
			case <-ctx.Done():
				return 0, fmt.Errorf("%w: %w", ErrNotReady, ctx.Err())
			}
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %w", ErrNotReady, ctx.Err())
		case <-time.After(20 * time.Millisecond):
			// Re-check: leadership may have moved while we waited.
		}
	}
}

// Addr returns the gRPC listen address (useful with port 0).
func (s *Server) Addr() string { return s.grpcLn.Addr().String() }

// Raft exposes the Raft node to tests and operators' tooling in this module.
func (s *Server) Raft() *raft.Raft { return s.raft }

// FSM exposes the state machine (read-only use).
func (s *Server) FSM() *fsm.FSM { return s.fsm }

// LogStore returns the member's Raft log store (for tests and tools that
// compare logs).
func (s *Server) LogStore() raft.LogStore { return s.store }

// IsLeader reports whether this member is the leader and ready to serve.
func (s *Server) IsLeader() bool { return s.isReady() }

// Active returns the buckets this member acts as primary for now (see
// AssignmentService.GetActive).
func (s *Server) Active() ([]*pb.BucketEpoch, uint64) { return s.lease.activeBuckets() }

// Shutdown stops the gRPC server (letting RPCs in flight finish for up to a
// few seconds), Raft, and closes the stores. Safe to call more than once.
func (s *Server) Shutdown() error {
	var err error
	s.shutdownOnce.Do(func() {
		// Stop the background loops and long-lived streams first, so the
		// graceful stop only waits for unary calls in flight.
		s.signalStop()
		if s.grpcServer != nil {
			done := make(chan struct{})
			go func() { s.grpcServer.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				s.grpcServer.Stop()
			}
		}
		err = s.closeAll()
	})
	return err
}

// signalStop tells every loop and stream of this member to end.
func (s *Server) signalStop() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.cancel()
}

func (s *Server) closeAll() error {
	var errs []error
	s.signalStop()
	if s.grpcServer != nil {
		s.grpcServer.Stop()
	}
	if s.pool != nil {
		if err := s.pool.Leave(time.Second); err != nil {
			s.logger.Debug("gossip leave", "error", err)
		}
		errs = append(errs, s.pool.Shutdown())
	}
	// Raft first, so the proposals it holds (an entry a leader cannot
	// commit: its followers refuse its entries but answer its heartbeats)
	// fail with Raft's own error; the proposer stops waiting for the rest
	// (awaitFuture).
	if s.raft != nil {
		errs = append(errs, s.raft.Shutdown().Error())
	}
	if s.proposer != nil {
		s.proposer.close()
	}
	if s.transport != nil {
		errs = append(errs, s.transport.Close())
	}
	s.wg.Wait()
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	s.peers.close()
	s.replPeers.close()
	return errors.Join(errs...)
}
