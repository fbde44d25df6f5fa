package chaos

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/connsync/connsync/fsm"
)

// Kind names a recorded operation.
type Kind string

// The operations the traffic generator performs.
const (
	Claim   Kind = "claim"   // Claim(key, member)
	Release Kind = "release" // Release(key, member, epoch 0)
	Lookup  Kind = "lookup"  // linearizable Lookup(key)
	Acquire Kind = "acquire" // AcquireLock(key, member, ttl)
	Renew   Kind = "renew"   // RenewLock(key, member, token, ttl)
	Unlock  Kind = "unlock"  // ReleaseLock(key, member, token)
	GetLock Kind = "getlock" // linearizable GetLock(key)
)

// Outcome says what a client learnt from a call.
type Outcome string

// Outcomes. Unknown means the call may or may not have taken effect (a
// timeout, lost leadership, a broken connection): a checker must accept
// both.
const (
	OK      Outcome = "ok"
	Failed  Outcome = "failed"
	Unknown Outcome = "unknown"
)

// Reasons for a Failed outcome, from the state machine's errors.
const (
	Conflict   = "conflict"    // claimed by another member
	NotClaimed = "not-claimed" // release of a free connection
	Held       = "held"        // lock held (by anyone, the caller included)
	NotHeld    = "not-held"    // lock free or expired
	Mismatch   = "mismatch"    // lock held by another member or with another token
	NotAlive   = "not-alive"   // the member is failed or has left: nothing changed
	Other      = "other"       // another definite refusal: nothing changed
)

// Op is one recorded call: what was asked, when, and what came back.
type Op struct {
	Client int    `json:"client"`
	Kind   Kind   `json:"kind"`
	Key    string `json:"key"`
	Member string `json:"member,omitempty"`
	Token  uint64 `json:"token,omitempty"`  // renew, unlock: the token held
	TTL    int64  `json:"ttl_ns,omitempty"` // acquire, renew
	Call   int64  `json:"call"`             // unix ns
	Return int64  `json:"return"`           // unix ns; for Unknown, when the client gave up

	Outcome Outcome `json:"outcome"`
	Reason  string  `json:"reason,omitempty"`
	// Results: the claim's or lock's owner and epoch/token, a lock's expiry
	// (log time, unix ns). For lookups Owner "" means free.
	Owner   string `json:"owner,omitempty"`
	Epoch   uint64 `json:"epoch,omitempty"`
	Expires int64  `json:"expires,omitempty"`
	Err     string `json:"err,omitempty"`
}

// History records operations from many goroutines.
type History struct {
	mu  sync.Mutex
	ops []Op
}

// Add records op.
func (h *History) Add(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Ops returns a copy of the recorded operations.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// WriteJSON writes the history, one operation per line, to path.
func (h *History) WriteJSON(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, op := range h.Ops() {
		if err := enc.Encode(op); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// Classify turns a call's error into its outcome and, for a definite
// refusal, the reason. Anything that is not a definite answer from the state
// machine is Unknown: Unavailable includes raft.ErrLeadershipLost, whose
// entry may still commit.
func Classify(err error) (Outcome, string) {
	if err == nil {
		return OK, ""
	}
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, fsm.ErrClaimConflict) {
			return Failed, Conflict
		}
		return Unknown, ""
	}
	msg := st.Message()
	has := func(e *fsm.Error) bool { return strings.Contains(msg, e.Error()) }
	switch st.Code() {
	case codes.FailedPrecondition, codes.NotFound:
		switch {
		case has(fsm.ErrClaimConflict):
			return Failed, Conflict
		case has(fsm.ErrNotClaimed):
			return Failed, NotClaimed
		case has(fsm.ErrLockHeld):
			return Failed, Held
		case has(fsm.ErrLockNotHeld):
			return Failed, NotHeld
		case has(fsm.ErrTokenMismatch):
			return Failed, Mismatch
		case has(fsm.ErrMemberNotAlive):
			return Failed, NotAlive
		case has(fsm.ErrStaleRequest):
			return Unknown, "" // an earlier attempt completed: with what result is not known
		}
		return Failed, Other
	case codes.InvalidArgument:
		return Failed, Other
	}
	return Unknown, ""
}

// Now is the clock every recorded time is read from.
func Now() int64 { return time.Now().UnixNano() }
