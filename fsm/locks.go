package fsm

import (
	"time"

	"github.com/connsync/connsync/internal/sabotage"
)

// MaxLockTTL is the longest lease a lock may be granted for.
const MaxLockTTL = time.Hour

func checkTTL(ttl int64) error {
	if ttl <= 0 || ttl > int64(MaxLockTTL) {
		return errorf(ErrInvalid, "lock TTL %v must be > 0 and <= %v", time.Duration(ttl), MaxLockTTL)
	}
	return nil
}

func (st *state) liveLock(k Key) (Lock, bool) {
	l, ok := st.locks[k]
	if ok && l.Expires <= st.now {
		delete(st.locks, k)
		return Lock{}, false
	}
	return l, ok
}

func lockResult(l Lock) Result {
	return Result{Epoch: l.Token, MemberID: l.MemberID, Expires: l.Expires, TTL: l.TTL}
}

func (st *state) acquireLock(k Key, member string, ttl int64) Result {
	if err := checkTTL(ttl); err != nil {
		return Result{Err: err}
	}
	if err := st.checkMember(member); err != nil {
		return Result{Err: err}
	}
	if l, ok := st.liveLock(k); ok {
		r := lockResult(l)
		r.Err = errorf(ErrLockHeld, "%s is held by %s with token %d until %s", k, l.MemberID, l.Token,
			time.Unix(0, l.Expires).UTC().Format(time.RFC3339Nano))
		return r
	}
	l := Lock{MemberID: member, Token: st.nextToken(), Expires: st.now + ttl, TTL: ttl}
	if sabotage.ReuseLockTokens.Load() {
		l.Token = 1
	}
	st.locks[k] = l
	return lockResult(l)
}

// current returns the live lock on k if member holds it with token.
func (st *state) current(k Key, member string, token uint64) (Lock, error) {
	l, ok := st.liveLock(k)
	if !ok {
		return Lock{}, errorf(ErrLockNotHeld, "%s is free or expired", k)
	}
	if l.MemberID != member || l.Token != token {
		return l, errorf(ErrTokenMismatch, "%s is held by %s with token %d, not %s with token %d",
			k, l.MemberID, l.Token, member, token)
	}
	return l, nil
}

func (st *state) renewLock(k Key, member string, token uint64, ttl int64) Result {
	if err := checkTTL(ttl); err != nil {
		return Result{Err: err}
	}
	l, err := st.current(k, member, token)
	if err != nil {
		r := lockResult(l)
		r.Err = err
		return r
	}
	l.Expires, l.TTL = st.now+ttl, ttl
	st.locks[k] = l
	return lockResult(l)
}

func (st *state) releaseLock(k Key, member string, token uint64) Result {
	l, err := st.current(k, member, token)
	if err != nil {
		r := lockResult(l)
		r.Err = err
		return r
	}
	delete(st.locks, k)
	return lockResult(l)
}

// GetLock returns the lock on k if it is held at the FSM's log time (the
// time of the latest applied entry).
func (f *FSM) GetLock(k Key) (Lock, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	l, ok := f.st.locks[k]
	if !ok || l.Expires <= f.st.now {
		return Lock{}, false
	}
	return l, true
}
