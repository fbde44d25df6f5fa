// Package server runs one member of a site: its Raft node (raft-boltdb log
// and stable store with fsync, file snapshots, TCP transport), the site FSM,
// and the gRPC services of api/connsync/v1.
//
// # Writes
//
// Every write (claim, release, lock acquire/renew/release, join, remove) may be
// sent to any member. A follower forwards it to the leader by calling the same
// RPC on the leader's gRPC address (forward.go), after filling an empty
// member_id with its own member ID, so "" always means "the member the client
// talked to". On the leader, writes go through the proposer (proposer.go),
// which packs the operations of many concurrent requests into one Raft log
// entry (group commit): one entry, one fsync, one replication round for
// hundreds of operations. A request's operations always travel in one entry,
// so a request is applied entirely or not at all.
//
// A new leader serves no writes or linearizable reads until it has applied a
// barrier in its term (leaderSetup in server.go): its FSM then reflects every
// entry committed by earlier leaders.
//
// # Membership, failover and placement
//
// Each member keeps a lease with the leader (lease.go) and may act as primary
// only while it holds one. The leader combines lease heartbeats, broken
// connections and gossip (gossip.go, package membership) into its view of
// which members are alive (liveness.go); its reconcile loop (reconcile.go)
// commits failovers, placement (package server/placement), make-before-break
// moves, drains and the Raft voter count. A member's full syncs as a new
// backup run in assignments.go, which also serves WatchAssignments. The
// safety argument is in the doc comments of liveness and leaseKeeper: a
// member is failed only when its process is proven gone or its lease has
// surely run out, and a member acts again only after its state machine has
// caught up with the grant that gave it a new lease.
//
// Lock order: liveness.mu and leaseKeeper.mu are leaves (nothing is called
// while holding them but the FSM's read lock, which is itself a leaf).
//
// # Reads
//
// READ_CONSISTENCY_LOCAL (the default) reads the answering member's FSM: fast,
// possibly a few milliseconds behind the leader. READ_CONSISTENCY_LINEARIZABLE
// is forwarded to the leader, which answers once it has applied its term's
// barrier and confirmed its leadership with a quorum (confirmLeadership): its FSM
// then holds every acknowledged write (see read in ops.go).
//
// # Errors
//
// errors.go holds the one map from domain and Raft errors to gRPC status
// codes. Invalid input is INVALID_ARGUMENT naming the field; a site without a
// quorum answers UNAVAILABLE; a write whose outcome is unknown (timeout,
// leadership lost after the entry was appended) answers UNAVAILABLE or
// DEADLINE_EXCEEDED and may have been applied: clients retry with the same
// RequestHeader, which the FSM deduplicates.
package server
