package server

import (
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"

	"github.com/connsync/connsync/membership"
)

// GossipNetwork is implemented by a Network that also carries gossip (the
// fault-injecting test network). Without it the gossip pool uses memberlist's
// own UDP and TCP transport on GossipBind.
type GossipNetwork interface {
	GossipTransport(bindAddr string, logger hclog.Logger) (memberlist.Transport, error)
}

// startGossip joins this member to the site's gossip pool. Gossip only
// proposes: a member it reports failed or gone is probed by the leader
// (liveness.suspect), and only a committed entry fails it.
func (s *Server) startGossip() error {
	if s.cfg.GossipBind == "" {
		return nil
	}
	mc := membership.DefaultConfig()
	mc.MemberID, mc.BindAddr, mc.AdvertiseAddr = s.cfg.MemberID, s.cfg.GossipBind, s.cfg.GossipAdvertise
	mc.Meta = membership.Meta{Site: s.cfg.Site, GRPCAddr: s.cfg.grpcAdvertise(), RaftAddr: s.cfg.raftAdvertise(),
		Weight: s.cfg.Weight, Incarnation: s.incarnation}
	mc.Label = s.cfg.Site // pools of different sites never merge
	mc.Logger = s.logger.Named("gossip")
	if gn, ok := s.network.(GossipNetwork); ok {
		t, err := gn.GossipTransport(s.cfg.GossipBind, mc.Logger)
		if err != nil {
			return fmt.Errorf("server: gossip transport: %w", err)
		}
		mc.Transport = t
	}
	if s.cfg.TweakGossip != nil {
		s.cfg.TweakGossip(&mc)
	}
	pool, err := membership.New(mc)
	if err != nil {
		return fmt.Errorf("server: gossip: %w", err)
	}
	s.pool = pool
	s.wg.Add(2)
	go s.gossipEvents()
	go s.gossipJoinLoop()
	return nil
}

// gossipEvents passes failures and departures to the leader's liveness view.
func (s *Server) gossipEvents() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			return
		case ev, ok := <-s.pool.Events():
			if !ok {
				return
			}
			switch ev.Kind {
			case membership.EventFailed, membership.EventLeft:
				s.live.suspect(ev.Node.ID, "gossip: "+ev.Kind.String())
			}
		}
	}
}

// gossipJoinLoop joins the gossip addresses recorded in the state machine
// that the pool does not know yet: members find each other through Raft, no
// separate seed list is needed within a site.
func (s *Server) gossipJoinLoop() {
	defer s.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		_, changed := s.fsm.Watch()
		known := map[string]bool{}
		for _, n := range s.pool.Members() {
			known[n.ID] = true
		}
		var addrs []string
		for _, m := range s.fsm.Members() {
			if m.ID != s.cfg.MemberID && m.GossipAddr != "" && active(m.State) && !known[m.ID] {
				addrs = append(addrs, m.GossipAddr)
			}
		}
		if len(addrs) > 0 {
			if _, err := s.pool.Join(addrs); err != nil {
				s.logger.Debug("gossip join", "addrs", addrs, "error", err)
			}
		}
		select {
		case <-s.stop:
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// gossipState returns how this member's gossip pool sees id ("" if unknown
// or without gossip).
func (s *Server) gossipState(id string) string {
	if s.pool == nil {
		return ""
	}
	if n, ok := s.pool.Node(id); ok {
		return n.State.String()
	}
	return ""
}
