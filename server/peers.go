package server

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// peersFile is where a member keeps the gRPC addresses of the other members
// of its site, for joining again after a restart. A restarted member's state
// machine starts from its last snapshot (Raft does not persist the commit
// index, so later entries are applied only once a leader contacts it), and a
// member the leader removed from the Raft configuration while it was down is
// contacted by no leader at all: without this file it might know nobody to
// ask. The file is advisory; a missing or broken one only means fewer
// addresses to try.
const peersFile = "peers.json"

// knownPeers returns the gRPC addresses of the other members this member
// knows: the alive ones in its state machine, then those of the peers file.
func (s *Server) knownPeers() []string {
	var out []string
	for _, m := range s.fsm.Members() {
		if m.ID != s.cfg.MemberID && m.GRPCAddr != "" && active(m.State) {
			out = append(out, m.GRPCAddr)
		}
	}
	b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, peersFile))
	if err != nil {
		return out
	}
	var saved []string
	if json.Unmarshal(b, &saved) != nil {
		return out
	}
	for _, a := range saved {
		if a != s.cfg.grpcAdvertise() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// peersLoop keeps the peers file up to date with the state machine's
// members, written atomically (temporary file, then rename).
func (s *Server) peersLoop() {
	defer s.wg.Done()
	var last []string
	for {
		_, changed := s.fsm.Watch()
		var addrs []string
		for _, m := range s.fsm.Members() {
			if m.ID != s.cfg.MemberID && m.GRPCAddr != "" && active(m.State) {
				addrs = append(addrs, m.GRPCAddr)
			}
		}
		slices.Sort(addrs)
		if len(addrs) > 0 && !slices.Equal(addrs, last) {
			if err := writePeers(filepath.Join(s.cfg.DataDir, peersFile), addrs); err != nil {
				s.logger.Warn("write peers file", "error", err)
			} else {
				last = addrs
			}
		}
		select {
		case <-s.stop:
			return
		case <-changed:
		case <-time.After(10 * time.Second):
		}
	}
}

func writePeers(path string, addrs []string) error {
	b, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
