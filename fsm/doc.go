// Package fsm is the state machine of one site's Raft group: the members of
// the site, the bucket assignment table, per-connection claims, locks with
// fencing tokens, and the idempotency sessions of clients.
//
// The package is usable without Raft. Entries are applied with
// [FSM.ApplyEntry]; [FSM] also implements raft.FSM as a thin adapter that
// decodes the log entry and hands it over. Tests apply entries directly,
// snapshot, restore and compare.
//
// # Determinism
//
// Every replica applies the same entries and must end in the same state. The
// FSM therefore never reads the clock of the machine it runs on: "now" is the
// largest time_unix_nano carried by any applied entry (the proposing leader's
// clock), so lease expiry is decided identically everywhere and time never runs
// backwards across leader changes. Fencing tokens and claim epochs come from
// one counter in the state that only grows; bucket epochs are the Raft index
// of the entry that changed the bucket.
//
// An entry that cannot be decoded panics: the log is corrupt or was written by
// an incompatible version, and applying anything else would let replicas
// silently diverge. Operations that are well-formed but not allowed (a
// conflicting claim, an unknown member) fail with a domain error from
// errors.go, returned in the result of that operation; they change nothing.
//
// # Concurrency
//
// Apply, Snapshot and Restore are called by Raft from one goroutine. Readers
// (Lookup, GetLock, Members, Stats) may be called from any goroutine; they see
// the state between two entries, never in the middle of one. A snapshot copies
// the state under the lock, so Persist runs concurrently with later Applies.
package fsm
