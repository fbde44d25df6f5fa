package fsm

import (
	"errors"
	"fmt"
)

// ErrStaleSnapshot is returned by FSM.Restore for a snapshot older than the
// state already applied.
var ErrStaleSnapshot = errors.New("fsm: snapshot is older than the applied state")

// Code identifies a domain error. Codes are persisted in idempotency sessions
// and snapshots: never renumber them.
type Code uint32

// Error is a domain error: an operation that was well-formed but not allowed.
// Two Errors match with errors.Is when their codes are equal, so a detailed
// error ("claimed by m2 at epoch 7") still matches its sentinel.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// The domain errors. Each is returned inside an operation's result.
var (
	// ErrClaimConflict: the connection is claimed by another member.
	ErrClaimConflict = &Error{1, "fsm: connection claimed by another member"}
	// ErrNotClaimed: release of a connection that has no claim.
	ErrNotClaimed = &Error{2, "fsm: connection not claimed"}
	// ErrEpochMismatch: release with an epoch that is not the claim's.
	ErrEpochMismatch = &Error{3, "fsm: claim epoch does not match"}
	// ErrLockHeld: acquire of a lock that is held and not expired.
	ErrLockHeld = &Error{4, "fsm: lock held"}
	// ErrLockNotHeld: renew or release of a lock that is free or expired.
	ErrLockNotHeld = &Error{5, "fsm: lock not held"}
	// ErrTokenMismatch: renew or release with a token or member that is not
	// the current holder's.
	ErrTokenMismatch = &Error{6, "fsm: lock token is not current"}
	// ErrUnknownMember: the operation names a member the site does not know.
	ErrUnknownMember = &Error{7, "fsm: unknown member"}
	// ErrMemberNotAlive: the member exists but has left or failed.
	ErrMemberNotAlive = &Error{8, "fsm: member is not alive"}
	// ErrSiteMismatch: the operation names another site than this group's.
	ErrSiteMismatch = &Error{9, "fsm: site mismatch"}
	// ErrSiteNotInitialised: no InitSite entry has been applied yet.
	ErrSiteNotInitialised = &Error{10, "fsm: site not initialised"}
	// ErrInvalid: a field of the operation is out of range.
	ErrInvalid = &Error{11, "fsm: invalid operation"}
	// ErrStaleRequest: a retried request whose outcome the client already
	// acknowledged, so the site no longer remembers it.
	ErrStaleRequest = &Error{12, "fsm: request already completed and acknowledged"}
	// ErrAssignmentChanged: a reassignment was planned from a revision the
	// bucket no longer has; plan again from the current state.
	ErrAssignmentChanged = &Error{13, "fsm: assignment changed since it was read"}
	// ErrSiteMode: the site is in the requested mode (active or standby)
	// already.
	ErrSiteMode = &Error{14, "fsm: site mode unchanged"}
)

var byCode = map[Code]*Error{}

func init() {
	for _, e := range []*Error{ErrClaimConflict, ErrNotClaimed, ErrEpochMismatch, ErrLockHeld,
		ErrLockNotHeld, ErrTokenMismatch, ErrUnknownMember, ErrMemberNotAlive, ErrSiteMismatch,
		ErrSiteNotInitialised, ErrInvalid, ErrStaleRequest, ErrAssignmentChanged, ErrSiteMode} {
		byCode[e.Code] = e
	}
}

// errorf returns a detailed error that matches sentinel with errors.Is.
func errorf(sentinel *Error, format string, args ...any) *Error {
	return &Error{Code: sentinel.Code, Msg: sentinel.Msg + ": " + fmt.Sprintf(format, args...)}
}

// errorFromCode rebuilds a domain error read back from a snapshot: nil for
// code 0, an error (the second result) for a code this build does not know.
func errorFromCode(code Code, msg string) (error, error) {
	if code == 0 {
		return nil, nil
	}
	if _, ok := byCode[code]; !ok {
		return nil, fmt.Errorf("unknown result code %d", code)
	}
	return &Error{Code: code, Msg: msg}, nil
}

// codeOf returns the code of a domain error, 0 for nil. Any other error is a
// programming error.
func codeOf(err error) (Code, string) {
	if err == nil {
		return 0, ""
	}
	var e *Error
	if !errors.As(err, &e) {
		panic(fmt.Sprintf("fsm: non-domain error in result: %v", err))
	}
	return e.Code, e.Msg
}
