package server

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/server/repl"
)

// Dual site (docs/SITES.md). Every member follows the other site through a
// siteLink: the peer's mode (active or standby), its members' addresses and
// its bucket table, read from any of its members with Status, ListMembers
// and WatchAssignments. On the active site the replicator streams each
// bucket to the standby site's primary of that bucket (its remote backup),
// so the standby site's own placement chooses the remote backups and the
// active site's primaries know them without asking per connection.

// siteLinkPoll is how often the link refreshes the peer's status and members.
const siteLinkPoll = 250 * time.Millisecond

// siteLink follows the peer site for one member.
type siteLink struct {
	s     *Server
	addrs []string

	mu      sync.Mutex
	peer    *repl.Peer    // nil until the peer's table is known
	changed chan struct{} // closed and replaced when peer changes
	up      bool
	down    time.Time // when up last turned false (the link's start at first)
	rtt     time.Duration
	lastErr string
	leader  string
	members []string
}

func newSiteLink(s *Server, addrs []string) *siteLink {
	return &siteLink{s: s, addrs: addrs, changed: make(chan struct{}), down: time.Now()}
}

// watch returns what is known of the peer site and a channel closed when it
// changes.
func (l *siteLink) watch() (*repl.Peer, <-chan struct{}) {
	if l == nil {
		return nil, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peer, l.changed
}

// run follows the peer site through each of its addresses in turn until the
// member stops.
func (l *siteLink) run() {
	s := l.s
	defer s.wg.Done()
	for i := 0; ; i++ {
		addr := l.addrs[i%len(l.addrs)]
		err := l.follow(addr)
		l.mu.Lock()
		if l.up {
			l.down = time.Now()
		}
		l.up = false
		if err != nil {
			l.lastErr = fmt.Sprintf("%s: %v", addr, err)
		}
		l.mu.Unlock()
		if s.ctx.Err() != nil {
			return
		}
		s.logger.Debug("site link", "addr", addr, "error", err)
		select {
		case <-s.stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// follow reads the peer site through one of its members until that fails.
func (l *siteLink) follow(addr string) error {
	s := l.s
	conn, err := s.peers.get(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	op := pb.NewOperatorServiceClient(conn)
	info, err := l.poll(ctx, op)
	if err != nil {
		return err
	}
	l.update(info, nil) // what this member answers now, over the previous view
	st, err := pb.NewAssignmentServiceClient(conn).WatchAssignments(ctx, &pb.WatchAssignmentsRequest{})
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { // status and members, while the watch streams the table
		t := time.NewTicker(siteLinkPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			next, err := l.poll(ctx, op)
			if err != nil {
				errc <- err
				cancel()
				return
			}
			l.update(next, nil)
		}
	}()
	var table []repl.PeerBucket
	for {
		resp, err := st.Recv()
		if err != nil {
			select {
			case perr := <-errc:
				return perr
			default:
				return err
			}
		}
		if resp.FullMap {
			table = make([]repl.PeerBucket, len(resp.Assignments))
		} else {
			table = append([]repl.PeerBucket(nil), table...) // the published view is never modified
		}
		for _, a := range resp.Assignments {
			if int(a.Bucket) >= len(table) { // a map this view lacks: follow again, from a full map
				return fmt.Errorf("peer site's bucket %d is past the %d buckets of its map", a.Bucket, len(table))
			}
			table[a.Bucket] = repl.PeerBucket{Primary: a.Primary, Epoch: a.Epoch, CopySynced: a.RemoteCopySynced}
		}
		l.update(nil, table)
	}
}

// update publishes a new view: the peer's status and members from info (nil:
// keep them), its table from table (nil: keep it). A status that changed
// nothing is not published.
func (l *siteLink) update(info *repl.Peer, table []repl.PeerBucket) {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := repl.Peer{}
	if l.peer != nil {
		next = *l.peer
	}
	if info != nil {
		if l.peer != nil && next.Site == info.Site && next.Standby == info.Standby && next.LeaseEpoch == info.LeaseEpoch &&
			maps.Equal(next.Addrs, info.Addrs) && table == nil {
			return
		}
		next.Site, next.Standby, next.LeaseEpoch, next.Addrs = info.Site, info.Standby, info.LeaseEpoch, info.Addrs
	}
	if table != nil {
		next.Buckets = table
	}
	l.peer = &next
	close(l.changed)
	l.changed = make(chan struct{})
}

// poll reads the peer's status and members once, and records the round trip.
func (l *siteLink) poll(ctx context.Context, op pb.OperatorServiceClient) (*repl.Peer, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	st, err := op.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, err
	}
	rtt := time.Since(start)
	if st.Site == l.s.cfg.Site {
		return nil, fmt.Errorf("peer-site address belongs to this member's own site %q", st.Site)
	}
	ms, err := op.ListMembers(ctx, &pb.ListMembersRequest{})
	if err != nil {
		return nil, err
	}
	addrs := map[string]string{}
	var ids []string
	for _, m := range ms.Members {
		if _, clash := l.s.fsm.Member(m.GetId()); clash {
			return nil, fmt.Errorf("member ID %q is used on both sites; member IDs must be unique across sites", m.GetId())
		}
		if m.GetState() == pb.MemberState_MEMBER_STATE_ALIVE || m.GetState() == pb.MemberState_MEMBER_STATE_DRAINING {
			addrs[m.GetId()] = m.GetGrpcAddr()
		}
		ids = append(ids, m.GetId())
	}
	l.mu.Lock()
	l.up, l.rtt, l.lastErr, l.leader, l.members = true, rtt, "", st.LeaderId, ids
	l.mu.Unlock()
	return &repl.Peer{Site: st.Site, Standby: st.Standby, LeaseEpoch: st.LeaseEpoch, Addrs: addrs}, nil
}

// isUp reports whether the last poll of the peer site succeeded and its
// stream has not broken since.
func (l *siteLink) isUp() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up
}

// downFor returns how long the link has been down (0 while it is up).
func (l *siteLink) downFor(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.up {
		return 0
	}
	return now.Sub(l.down)
}

// info describes the link for Sites.
func (l *siteLink) info() *pb.SiteInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := &pb.SiteInfo{Reachable: l.up, RttUs: l.rtt.Microseconds(), Error: l.lastErr, LeaderId: l.leader, Members: l.members}
	if l.peer != nil {
		out.Name, out.Standby = l.peer.Site, l.peer.Standby
		for _, b := range l.peer.Buckets {
			if b.CopySynced {
				out.RemoteCopiesSynced++
			}
		}
	}
	return out
}

// checkOwnSite checks that a site command names this member's site; what
// says which site the command wants.
func (s *Server) checkOwnSite(site, what string) error {
	switch {
	case site == "":
		return status.Errorf(codes.InvalidArgument, "site: is required (the name of the %s)", what)
	case site != s.cfg.Site:
		return status.Errorf(codes.InvalidArgument, "site: %q is not this member's site %q; send the command to a member of the %s",
			site, s.cfg.Site, what)
	}
	return nil
}

// setSiteMode commits a SetSiteModeOp and returns the new site epoch.
func (s *Server) setSiteMode(ctx context.Context, standby bool, reason string, leaseEpoch uint64) (uint64, error) {
	return s.proposeSiteOp(ctx, setSiteModeOp(standby, reason, leaseEpoch))
}

// proposeSiteOp commits one site-mode op within ApplyTimeout and returns its
// result's epoch.
func (s *Server) proposeSiteOp(ctx context.Context, op *ipb.Op) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
	defer cancel()
	res, err := s.proposer.propose(ctx, &ipb.Proposal{Ops: []*ipb.Op{op}})
	if err != nil {
		return 0, err
	}
	return res[0].Epoch, res[0].Err
}

// SiteFailover activates this member's standby site (see the API).
func (o *operatorService) SiteFailover(ctx context.Context, req *pb.SiteFailoverRequest) (*pb.SiteFailoverResponse, error) {
	s := o.s
	if err := s.checkOwnSite(req.Site, "standby site to activate"); err != nil {
		return nil, err
	}
	if s.witnessPolicy() {
		return nil, status.Error(codes.FailedPrecondition, "the site-failover policy is witness: the site lease decides which site is active "+
			"(it fails over by itself when the active site is lost; 'site handover' moves the role on purpose)")
	}
	if _, err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	st := s.fsm.Stats()
	if !st.Standby {
		return nil, status.Errorf(codes.FailedPrecondition, "site %s is active already (site epoch %d)", s.cfg.Site, st.SiteEpoch)
	}
	as, _ := s.fsm.Buckets()
	out := &pb.SiteFailoverResponse{Site: s.cfg.Site, DryRun: req.DryRun}
	for _, a := range as {
		if a.Primary != "" {
			out.Buckets++
			if a.RemoteCopySynced {
				out.BucketsSynced++
			}
		}
	}
	if req.DryRun {
		return out, nil
	}
	var err error
	if out.SiteEpoch, err = s.setSiteMode(ctx, false, "site failover by operator", 0); err != nil {
		return nil, err
	}
	s.logger.Warn("site activated by operator", "site", s.cfg.Site, "site_epoch", out.SiteEpoch,
		"buckets", out.Buckets, "with_complete_remote_copy", out.BucketsSynced)
	return out, nil
}

// SiteHandover makes this member's active site standby once the peer site
// holds every remote copy (see the API).
func (o *operatorService) SiteHandover(ctx context.Context, req *pb.SiteHandoverRequest) (*pb.SiteHandoverResponse, error) {
	s := o.s
	if err := s.checkOwnSite(req.Site, "active site to make standby"); err != nil {
		return nil, err
	}
	if _, err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	st := s.fsm.Stats()
	if st.Standby {
		return nil, status.Errorf(codes.FailedPrecondition, "site %s is standby already (site epoch %d)", s.cfg.Site, st.SiteEpoch)
	}
	peer, _ := s.siteLink.watch()
	if peer == nil {
		// (A view that is a little stale is enough: the other site cannot
		// become active meanwhile, this site holds the lease.)
		return nil, status.Error(codes.FailedPrecondition, "nothing known of the other site yet: it must be linked, and standby, to take over")
	}
	out := &pb.SiteHandoverResponse{Site: s.cfg.Site, PeerSite: peer.Site, Buckets: uint32(len(peer.Buckets)), DryRun: req.DryRun}
	for _, b := range peer.Buckets {
		if b.CopySynced {
			out.PeerCopiesSynced++
		}
	}
	switch {
	case !peer.Standby:
		return nil, status.Errorf(codes.FailedPrecondition, "site %s is not standby", peer.Site)
	case req.DryRun:
		return out, nil
	case out.PeerCopiesSynced != st.BucketCount:
		return nil, status.Errorf(codes.FailedPrecondition, "site %s holds a complete copy of %d of %d buckets; hand over once it holds all (connsyncctl sites)",
			peer.Site, out.PeerCopiesSynced, st.BucketCount)
	}
	// Recording the lease epoch held lets this site tell later that the
	// other site has not been active since (Server.takeBack).
	var err error
	if out.SiteEpoch, err = s.setSiteMode(ctx, true, "handover to site "+peer.Site, s.siteLease.heldEpoch(time.Now())); err != nil {
		return nil, err
	}
	s.logger.Warn("site handed over: standby now", "site", s.cfg.Site, "to", peer.Site, "site_epoch", out.SiteEpoch)
	return out, nil
}

// Sites reports this member's site and the peer site it follows.
func (o *operatorService) Sites(ctx context.Context, _ *pb.SitesRequest) (*pb.SitesResponse, error) {
	s := o.s
	st := s.fsm.Stats()
	_, leader := s.raft.LeaderWithID()
	local := &pb.SiteInfo{Name: s.cfg.Site, Local: true, Standby: st.Standby, LeaderId: string(leader), Reachable: true}
	for _, m := range s.fsm.Members() {
		local.Members = append(local.Members, m.ID)
	}
	out := &pb.SitesResponse{Sites: []*pb.SiteInfo{local}}
	if s.siteLink != nil {
		out.Sites = append(out.Sites, s.siteLink.info())
	}
	return out, nil
}

// peerAddr returns a peer-site member's gRPC address.
func (s *Server) peerAddr(member string) (string, bool) {
	p, _ := s.siteLink.watch()
	if p == nil {
		return "", false
	}
	a, ok := p.Addrs[member]
	return a, ok && a != ""
}
