// Package sabotage holds switches that break one safety property each, on
// purpose. Only tests turn them on, to show that the chaos suite's checkers
// catch a broken property (a checker that never fails proves nothing). Each
// switch is read with one atomic load on its path; all are off in every
// build unless a test sets them.
package sabotage

import "sync/atomic"

var (
	// IgnoreMemberLease (S1): a member acts as primary of the buckets its
	// state machine gives it even after its lease ran out, so a member cut
	// off from the leader keeps acting after its buckets moved.
	IgnoreMemberLease atomic.Bool
	// IgnoreSiteLease (S1 across sites): under the witness policy, member
	// leases are granted for their full length whether or not the site
	// still holds the site lease, so a site cut off from the witness and the
	// other site keeps acting after the other took over.
	IgnoreSiteLease atomic.Bool
	// ReuseLockTokens (S2): every lock is granted token 1, so fencing can no
	// longer tell a stale holder from the current one.
	ReuseLockTokens atomic.Bool
	// StealClaims (S3): a claim of a connection claimed by another member
	// succeeds and takes it over.
	StealClaims atomic.Bool
	// ForgetClaims (S4): a new claim is acknowledged with an epoch but not
	// stored.
	ForgetClaims atomic.Bool
	// DropDeltas (S5): a local backup acknowledges the connection states it
	// is sent without storing them.
	DropDeltas atomic.Bool
)

// Reset turns every switch off.
func Reset() {
	for _, s := range []*atomic.Bool{&IgnoreMemberLease, &IgnoreSiteLease, &ReuseLockTokens, &StealClaims, &ForgetClaims, &DropDeltas} {
		s.Store(false)
	}
}
