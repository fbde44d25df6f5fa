// Package membership is a site's gossip pool: failure detection and member
// metadata over hashicorp/memberlist (SWIM with the Lifeguard extensions).
//
// Every member runs one Pool, bound explicitly on one "ip:port" for both UDP
// (probes and gossip) and TCP (joins, push/pull, fallback probes), and
// gossips its Meta: site, gRPC and Raft addresses, placement weight and a
// random per-process incarnation. Members meet through Join; from then on
// each pool sees the others come and go as Events and can list them with
// Members.
//
// # Contract
//
// Gossip only proposes. EventFailed means "this pool stopped hearing from
// that member", tuned to be fast (a few hundred milliseconds on a LAN, see
// DefaultConfig) rather than certain: a member starved of CPU may be
// reported failed and then joined again. The site's Raft leader confirms a
// failure by other means before anything moves; this package never writes
// to the FSM and never decides anything itself.
//
// # Events
//
// memberlist reports changes through callbacks that must not block it. The
// pool copies each change into an unbounded queue, and one goroutine feeds
// the Events channel from it, in order, until Shutdown closes the channel.
// A member that leaves with Leave is reported as EventLeft, one that stops
// without leaving as EventFailed (see leave.go for why the pool needs its
// own leave notice to tell the two apart). A member whose metadata cannot be
// decoded is still reported, with an empty Meta, and the problem is logged.
//
// # memberlist pitfalls
//
//   - memberlist panics on metadata over 512 bytes and on Leave after
//     Shutdown; Validate, UpdateMeta and the pool's own state prevent both.
//   - memberlist.Leave(0) and UpdateNode(0) wait forever; the pool always
//     passes a timeout.
//   - memberlist.Members returns pointers into its live state, which it
//     rewrites under its own lock; the pool keeps its own copy, updated in
//     the callbacks (which run under that lock), and answers from it.
//   - The Node passed to NotifyLeave does not say whether the member left
//     or died (hashicorp/memberlist#293), and suspicion is never reported
//     at all, so StateSuspect is not produced by this version.
//   - A host name as bind address makes memberlist bind every interface;
//     Validate accepts IP literals only.
//   - A pool that left cannot rejoin. Pools that declared each other dead
//     do not reconnect by themselves once the network heals: memberlist
//     probes and push/pulls live members only, and gossips to the dead only
//     when it has something to gossip. The caller Joins again, e.g.
//     periodically, with the addresses of members it misses in Members.
package membership
