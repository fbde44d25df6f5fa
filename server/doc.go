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
// barrier in its term (leader.go): its FSM then reflects every entry committed
// by earlier leaders.
//
// # Reads
//
// READ_CONSISTENCY_LOCAL (the default) reads the answering member's FSM: fast,
// possibly a few milliseconds behind the leader. READ_CONSISTENCY_LINEARIZABLE
// is forwarded to the leader, which answers once it has applied its term's
// barrier and confirmed its leadership with a quorum (VerifyLeader): its FSM
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
