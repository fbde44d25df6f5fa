// Package chaos holds the checkers of connsync's chaos suite: the recorded
// history of what every client saw, porcupine models of claims and locks
// (S3), the fencing oracle for lock tokens (S2), the activation observer
// that measures dual-primary overlap per bucket (S1, S2), and the
// leader-per-term check. The suite itself (clusters, faults, traffic,
// schedules) is in the integration package's chaos tests, which drive real
// clusters and hand what they record to these checkers.
//
// Everything here is deterministic given its inputs and has no notion of a
// cluster, so each checker is unit-tested against histories built by hand
// that break and keep its property.
//
// Times are wall-clock nanoseconds of one machine (every member of a test
// cluster and the test itself run on the same host). A lock's expiry is log
// time, which the leader stamps from the same clock when it proposes the
// entry, so an operation's log time lies between its call and its return.
package chaos
