package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/internal/sabotage"
)

// Site lease (witness policy, docs/SITES.md). Three acceptors — the witness
// and the leader of each site — each grant the lease to one site at a time
// for a short duration. A site is active only while a majority has granted
// it the lease: its leader renews it, caps the leases it grants its members
// by it (so members stop acting before it ends), and a standby site whose
// leader gets a majority activates in one Raft entry. Any two majorities
// share an acceptor, and an acceptor grants no other site while its grant
// runs, so two sites never hold the lease at once (clocks may drift by less
// than siteLeaseMargin over one lease).

const (
	// siteLeaseMargin is taken off the holder's view of its lease (clock
	// drift and scheduling) and added to an acceptor's start-up wait.
	siteLeaseMargin = 50 * time.Millisecond
)

// leaseAcceptor is one acceptor's state. It is kept in memory: a new one
// (a restarted witness, a new site leader) grants nothing to a new holder
// until a whole lease has passed, since it may have forgotten a grant. A
// witness with a data directory also records each new holder and epoch
// (persist) before it answers, so that a restarted witness still refuses a
// superseded site (a site leader's acceptor starts from its state machine's
// record instead).
type leaseAcceptor struct {
	mu      sync.Mutex
	maxDur  time.Duration
	readyAt time.Time
	holder  string
	epoch   uint64
	expires time.Time
	persist func(holder string, epoch uint64) error // nil: memory only
}

func newLeaseAcceptor(maxDur time.Duration) *leaseAcceptor {
	return &leaseAcceptor{maxDur: maxDur, readyAt: time.Now().Add(maxDur + siteLeaseMargin)}
}

// grant answers one request at now.
func (a *leaseAcceptor) grant(req *pb.GrantSiteLeaseRequest, now time.Time) (*pb.GrantSiteLeaseResponse, error) {
	d := time.Duration(req.DurationMs) * time.Millisecond
	switch {
	case !fsm.ValidID(req.Site):
		return nil, status.Errorf(codes.InvalidArgument, "site: %q is not a site name", req.Site)
	case req.Epoch == 0:
		return nil, status.Error(codes.InvalidArgument, "epoch: must be > 0")
	case d <= 0 || d > a.maxDur:
		return nil, status.Errorf(codes.InvalidArgument, "duration_ms: %d, want 1 to %d (this acceptor's longest lease)", req.DurationMs, a.maxDur.Milliseconds())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	refuse := func(format string, args ...any) (*pb.GrantSiteLeaseResponse, error) {
		return &pb.GrantSiteLeaseResponse{Holder: a.holder, Epoch: a.epoch, Reason: fmt.Sprintf(format, args...)}, nil
	}
	switch {
	case req.LastEpoch > 0 && a.holder != "" && a.holder != req.Site && a.epoch > req.LastEpoch:
		r, err := refuse("site %s was granted epoch %d after this site's epoch %d: it may have activated since", a.holder, a.epoch, req.LastEpoch)
		r.Superseded = true
		return r, err
	case req.Epoch < a.epoch:
		return refuse("epoch %d is below this acceptor's %d", req.Epoch, a.epoch)
	case req.Site == a.holder && req.Epoch == a.epoch: // a renewal
	case now.Before(a.readyAt):
		return refuse("acceptor started %v ago; it grants a new holder only after a whole lease", a.maxDur+siteLeaseMargin-a.readyAt.Sub(now))
	case a.holder != "" && a.holder != req.Site && now.Before(a.expires):
		return refuse("site %s holds the lease (epoch %d) for %v more", a.holder, a.epoch, a.expires.Sub(now))
	case req.Epoch == a.epoch:
		return refuse("epoch %d was granted to %s; ask above it", a.epoch, a.holder)
	}
	if a.persist != nil && (req.Site != a.holder || req.Epoch != a.epoch) {
		if err := a.persist(req.Site, req.Epoch); err != nil {
			return refuse("this acceptor cannot record the grant: %v", err)
		}
	}
	a.holder, a.epoch, a.expires = req.Site, req.Epoch, now.Add(d)
	return &pb.GrantSiteLeaseResponse{Granted: true, Holder: a.holder, Epoch: a.epoch}, nil
}

// siteLeaseService serves SiteLeaseService on a site member: the leader's
// acceptor answers (followers forward, see leaderMethods).
type siteLeaseService struct {
	pb.UnimplementedSiteLeaseServiceServer
	s *Server
}

func (l *siteLeaseService) GrantSiteLease(ctx context.Context, req *pb.GrantSiteLeaseRequest) (*pb.GrantSiteLeaseResponse, error) {
	a := l.s.siteLease.acceptorNow()
	if a == nil {
		return nil, status.Error(codes.Unavailable, "this member is not its site's leader (site lease acceptor)")
	}
	return a.grant(req, time.Now())
}

// siteLease is a site's side of the lease: the leader's acceptor and what
// the leader holds.
type siteLease struct {
	mu       sync.Mutex
	acceptor *leaseAcceptor // while this member leads
	until    time.Time      // the lease holds until then (this clock); zero: not held
	epoch    uint64         // epoch of the lease held
	seen     uint64         // highest epoch any acceptor reported

	// standbyEpoch is the site epoch at which this leader first saw its site
	// standby, at standbySince (takeBack).
	standbyEpoch uint64
	standbySince time.Time

	lastLapseLog time.Time
	recording    bool // a record of a held epoch is being committed
}

// recordLeaseEpoch commits, in the background and one at a time, that the
// active site holds the lease at epoch (a record-only SetSiteModeOp: the
// state machine refuses it if the site went standby meanwhile).
func (s *Server) recordLeaseEpoch(epoch uint64) {
	l := &s.siteLease
	l.mu.Lock()
	if l.recording {
		l.mu.Unlock()
		return // the next round asks again if this one was not the latest
	}
	l.recording = true
	l.mu.Unlock()
	go func() {
		defer func() {
			l.mu.Lock()
			l.recording = false
			l.mu.Unlock()
		}()
		if _, err := s.proposeSiteOp(s.ctx, recordLeaseEpochOp(epoch)); err != nil {
			s.logger.Debug("recording the site lease epoch", "epoch", epoch, "error", err)
		}
	}()
}

func (l *siteLease) acceptorNow() *leaseAcceptor {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acceptor
}

// heldEpoch returns the epoch of the lease the site holds at now, 0 if none.
func (l *siteLease) heldEpoch(now time.Time) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.until) {
		return l.epoch
	}
	return 0
}

// standbyFor returns how long this leader has seen its site standby at site
// epoch siteEpoch (l.mu held).
func (l *siteLease) standbyFor(siteEpoch uint64, now time.Time) time.Duration {
	if l.standbySince.IsZero() || l.standbyEpoch != siteEpoch {
		l.standbyEpoch, l.standbySince = siteEpoch, now
	}
	return now.Sub(l.standbySince)
}

// remaining returns how long the site still holds the lease.
func (l *siteLease) remaining(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until.Sub(now)
}

// witnessPolicy reports whether the site runs the witness policy.
func (s *Server) witnessPolicy() bool { return s.cfg.SiteFailover == "witness" }

// memberLeaseCap returns how long a member lease granted now may last: the
// configured lease, cut to what remains of the site lease under the witness
// policy (0: grant none).
func (s *Server) memberLeaseCap(now time.Time) time.Duration {
	if !s.witnessPolicy() || sabotage.IgnoreSiteLease.Load() {
		return s.cfg.MemberLease
	}
	return min(s.cfg.MemberLease, s.siteLease.remaining(now))
}

// siteLeaseLoop runs on the leader under the witness policy: an active site
// renews its lease (and steps down to standby once another site holds it);
// a standby site asks for it and activates when a majority grants it.
func (s *Server) siteLeaseLoop(ctx context.Context) {
	defer s.wg.Done()
	l := &s.siteLease
	l.mu.Lock()
	acc := newLeaseAcceptor(s.cfg.SiteLease)
	// A new leader's acceptor has forgotten what the last one granted; it
	// knows at least the epoch its own site recorded holding (expired): so
	// a deposed site asking with an older last epoch is still told it was
	// superseded, even if this acceptor is the one its majority needs.
	if st := s.fsm.Stats(); !st.Standby && st.LeaseEpoch > 0 {
		acc.holder, acc.epoch = s.cfg.Site, st.LeaseEpoch
	}
	l.acceptor = acc
	l.until, l.epoch = time.Time{}, 0
	l.standbySince = time.Time{}
	l.mu.Unlock()
	defer func() {
		// The leadership loop does not wait for this loop to end: after a
		// quick loss and regain of leadership the next term's loop may run
		// already, and its acceptor is not this one's to clear.
		l.mu.Lock()
		if l.acceptor == acc {
			l.acceptor, l.until = nil, time.Time{}
		}
		l.mu.Unlock()
	}()
	t := time.NewTicker(s.cfg.SiteLease / 5)
	defer t.Stop()
	for {
		s.siteLeaseRound(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) siteLeaseRound(ctx context.Context) {
	l := &s.siteLease
	st := s.fsm.Stats()
	l.mu.Lock()
	if l.acceptor != nil {
		l.acceptor.mu.Lock()
		l.seen = max(l.seen, l.acceptor.epoch) // the active site's renewals reach this acceptor too
		l.acceptor.mu.Unlock()
	}
	held := time.Now().Before(l.until)
	epoch := l.epoch
	why := "site lease acquired"
	switch {
	case !st.Standby:
		if epoch == 0 || !held || l.seen > epoch {
			// This leader's first ask, a lapsed lease, or an acceptor that
			// granted a higher epoch (a standby site's attempt during a
			// link cut): take the lease at an epoch above all of them.
			epoch = max(l.seen, st.LeaseEpoch) + 1
		}
	case l.seen == 0 && st.LeaseEpoch == 0 && !s.peerSeenActive():
		// No site is known to hold or to have held the lease: a standby
		// site does not take it first (start the active site, or fail
		// over by hand). The other site seen active counts: a leader
		// elected after the active site was lost has heard of no epoch
		// (its acceptor is new, no renewal reaches it), yet must fail
		// over; its asks then learn the epochs from the acceptors.
		l.mu.Unlock()
		return
	case s.takeOver():
		epoch = max(l.seen, st.LeaseEpoch) + 1
	case s.takeBack(st, l.standbyFor(st.SiteEpoch, time.Now())):
		why = "site lease taken back (the other site did not take it over since this site handed over)"
		epoch = max(l.seen, st.LeaseEpoch) + 1
	default:
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	var last uint64
	if !st.Standby {
		last = st.LeaseEpoch // the active site's own: refused if another site was granted above it since
	}
	sent := time.Now()
	granted, other, naming, superseded := s.askSiteLease(ctx, epoch, last)
	l.mu.Lock()
	if granted >= 2 {
		l.until, l.epoch = sent.Add(s.cfg.SiteLease-siteLeaseMargin), epoch
	} else if !held {
		l.epoch = 0 // ask above what the acceptors reported next time
	}
	until := l.until
	l.mu.Unlock()
	// The first lapse is always told; while it lasts, once a second.
	if lapsed := !st.Standby && granted < 2 && time.Now().After(until); lapsed && (held || l.logLapse()) {
		s.logger.Warn("site lease not renewed: this site's members stop acting until it is", "site", s.cfg.Site, "granted", granted, "other_holder", other)
	} else if !st.Standby && granted >= 2 && !held {
		s.logger.Info("site lease held", "site", s.cfg.Site, "lease_epoch", epoch)
	}
	switch {
	case granted >= 2 && st.Standby:
		// A site that lost its copies (a member restarted, and the other site
		// was lost before it synced them again) activates anyway, as a local
		// failover promotes a backup that is not synced: those buckets start
		// empty, and the log says how many.
		n, _, first := s.unsyncedCopies()
		s.logger.Warn(why+": activating the site", "site", s.cfg.Site, "lease_epoch", epoch,
			"buckets_without_synced_copy", n, "first_without", first)
		if _, err := s.setSiteMode(ctx, false, why, epoch); err != nil {
			s.logger.Warn("site activation", "error", err)
		}
	case !st.Standby && granted >= 2 && epoch > st.LeaseEpoch:
		// Recorded, so that a later re-acquisition asks with it (last_epoch)
		// and a handover or take-back compares with it. Off the loop: a slow
		// commit must not hold up the renewals.
		s.recordLeaseEpoch(epoch)
	case !st.Standby && time.Now().After(until) && (superseded || s.deposed(st, other, naming)):
		// Another site holds the lease: this one is deposed. Its members
		// stopped acting when the lease ran out (their leases are capped by
		// it); going standby makes them take the new active site's copies.
		s.logger.Warn("site lease held by another site: this site goes standby", "site", s.cfg.Site, "holder", other)
		if _, err := s.setSiteMode(ctx, true, "site lease held by "+other, 0); err != nil {
			s.logger.Warn("site deactivation", "error", err)
		}
	}
}

// logLapse rate-limits the lapse warning to one a second.
func (l *siteLease) logLapse() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.lastLapseLog) < time.Second {
		return false
	}
	l.lastLapseLog = time.Now()
	return true
}

// takeOver reports whether this standby site should ask for the site lease:
// the other site handed over (it is standby, and this site holds every
// remote copy), or the other site, last seen active, is lost (the link to
// it is down). A site that has just handed over sees the other site
// standby and holds no copy: it does not take the lease back.
func (s *Server) takeOver() bool {
	p, _ := s.siteLink.watch()
	switch {
	case p != nil && p.Standby:
		return s.allCopiesSynced()
	case s.siteLink == nil:
		return false
	default:
		// The link is down: the other site may be lost, or only its
		// leader changed (the link follows one member at a time) or this
		// site has just restarted. With every copy, asking at once is safe
		// (the acceptors keep a live active site's lease). Without, a
		// takeover loses the missing buckets' sessions: ask only once the
		// link has been down long enough that a live active site would
		// have renewed its lease under a new leader meanwhile.
		down := s.siteLink.downFor(time.Now())
		return down > 0 && (down >= incompleteTakeOverAfter*s.cfg.SiteLease || s.allCopiesSynced())
	}
}

// incompleteTakeOverAfter is how long, in site leases, a standby site that
// lacks a copy of some bucket waits with the link to the other site down
// before it asks for the lease.
const incompleteTakeOverAfter = 4

// takeBackAfter is how long a site that handed over waits for the other
// site to take the lease before it takes the lease back (takeBack), in site
// leases: a handover normally completes within about one.
const takeBackAfter = 10

// takeBack reports whether this standby site, which has been standby for
// standbyFor, should ask for the lease again although the other site is
// standby too: this site handed over, but the other site did not take over
// (it lost a remote copy after the handover was accepted: a member of it
// restarted or failed, and no active site is left to sync the bucket again).
// It takes back only what is provably its own to take: the other site
// records a lower lease epoch than this one, so it has not been active since
// this site was, and this site's members still hold the latest state. Once
// this site is active again it syncs the other site's missing copies, and
// the handover can be repeated.
func (s *Server) takeBack(st fsm.Stats, standbyFor time.Duration) bool {
	if s.siteLink == nil || !s.siteLink.isUp() || st.LeaseEpoch == 0 || standbyFor < takeBackAfter*s.cfg.SiteLease {
		return false
	}
	p, _ := s.siteLink.watch()
	return p != nil && p.Standby && p.LeaseEpoch < st.LeaseEpoch
}

// peerSeenActive reports whether this member's last view of the other site
// has it active.
func (s *Server) peerSeenActive() bool {
	p, _ := s.siteLink.watch()
	return p != nil && !p.Standby
}

// allCopiesSynced reports whether this standby site holds a complete remote
// copy of every bucket: recorded synced in the state machine, and held by a
// primary whose recorded process this leader has heard from within a member
// lease. The record alone is not enough: a primary that restarted lost its
// copies, and the record says so only once this leader has learnt of the
// restart and failed it over.
func (s *Server) allCopiesSynced() bool {
	n, total, _ := s.unsyncedCopies()
	return total > 0 && n == 0
}

// unsyncedCopies returns how many of the site's total buckets this standby
// site holds no complete remote copy of (allCopiesSynced's test, bucket by
// bucket), and why the first one is not.
func (s *Server) unsyncedCopies() (n, total int, first string) {
	as, _ := s.fsm.Buckets()
	total = len(as)
	heard := map[string]bool{}
	for b, a := range as {
		ok, seen := heard[a.Primary]
		if !seen {
			ok = s.live.heardFrom(a.Primary)
			heard[a.Primary] = ok
		}
		if !a.RemoteCopySynced || !ok {
			if n++; n == 1 {
				first = fmt.Sprintf("bucket %d: primary %s, copy recorded synced %v, heard from its process %v", b, a.Primary, a.RemoteCopySynced, ok)
			}
		}
	}
	return n, total, first
}

// deposed reports whether an active site whose lease lapsed must go
// standby: the other site won the lease, as a majority of the acceptors
// name it holder (two refusals naming it), or it reports itself active under
// a higher lease epoch than this site activated under. One acceptor naming
// it is not enough: a standby site's ask that one acceptor granted is no
// lease, and a site that went standby for it would leave both sites standby
// (only a site that handed over, or holds every copy, asks from standby).
func (s *Server) deposed(st fsm.Stats, other string, naming int) bool {
	if other != "" && naming >= 2 {
		return true
	}
	p, _ := s.siteLink.watch()
	return p != nil && !p.Standby && p.LeaseEpoch > st.LeaseEpoch
}

// askSiteLease asks the three acceptors for the lease at epoch (last: see
// GrantSiteLeaseRequest.last_epoch) and returns how many granted it, another
// site acceptors report holding it ("" if none) with how many of them did,
// and whether the witness or this site's acceptor refused because another
// site was granted an epoch above last.
func (s *Server) askSiteLease(ctx context.Context, epoch, last uint64) (granted int, other string, naming int, superseded bool) {
	req := &pb.GrantSiteLeaseRequest{Site: s.cfg.Site, Epoch: epoch, DurationMs: s.cfg.SiteLease.Milliseconds(), LastEpoch: last}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SiteLease/2) // a round must end well inside a lease
	defer cancel()
	type answer struct {
		resp     *pb.GrantSiteLeaseResponse
		err      error
		fromPeer bool // the other site's acceptor
	}
	answers := make(chan answer, 3)
	remote := func(addrs []string, fromPeer bool) {
		var last error
		for _, addr := range addrs {
			conn, err := s.peers.get(addr)
			if err == nil {
				var r *pb.GrantSiteLeaseResponse
				if r, err = pb.NewSiteLeaseServiceClient(conn).GrantSiteLease(ctx, req); err == nil {
					answers <- answer{r, nil, fromPeer}
					return
				}
			}
			last = err
			if ctx.Err() != nil {
				break
			}
		}
		answers <- answer{nil, last, fromPeer}
	}
	go remote(s.cfg.PeerSite, true)
	go remote(s.cfg.Witness, false)
	if a := s.siteLease.acceptorNow(); a != nil {
		r, err := a.grant(req, time.Now())
		answers <- answer{r, err, false}
	} else {
		answers <- answer{nil, fmt.Errorf("not the leader"), false}
	}
	for range 3 {
		a := <-answers
		if a.err != nil || a.resp == nil {
			continue
		}
		if a.resp.Granted {
			granted++
		} else if a.resp.Holder != "" && a.resp.Holder != s.cfg.Site {
			other = a.resp.Holder
			naming++
		}
		// The other site's acceptor grants its own leader whenever asked,
		// so its word that it granted its own site a higher epoch proves no
		// majority: a site cut off asks its own acceptor alone, at a higher
		// epoch every round. Going standby on it left both sites standby
		// (chaos seed 757: site a, cut off, had granted itself epochs above
		// b's; b, active, lost its leader, and b's new leader was told it
		// was superseded). A majority that granted the other site includes
		// the witness or this site's acceptor, which say so themselves.
		superseded = superseded || (a.resp.Superseded && !a.fromPeer)
		s.siteLease.mu.Lock()
		s.siteLease.seen = max(s.siteLease.seen, a.resp.Epoch)
		s.siteLease.mu.Unlock()
	}
	return granted, other, naming, superseded
}
