// Package membership will hold failure detection for a site: a
// hashicorp/memberlist pool with explicit bind and advertise addresses (both
// UDP and TCP on the gossip port), member metadata (member ID, site, gRPC and
// Raft addresses, weight), and the combination of gossip, Raft heartbeats and
// broken delta streams that confirms a crashed member in tens of
// milliseconds.
//
// Contract (to be built with issue 3): gossip only proposes. A member is
// failed, and its buckets move, only when the site's Raft leader commits an
// entry that says so; this package never writes to the FSM itself.
//
// It is empty today: the site control plane (issue 2) runs without it, and
// members join through the operator API (connsyncd -join, connsyncctl join).
package membership
