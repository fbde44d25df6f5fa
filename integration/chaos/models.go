package chaos

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
)

// The models below are nondeterministic (porcupine.NondeterministicModel):
// an operation with an Unknown outcome may or may not have taken effect, so
// its step yields both states, and a lock whose holder failed may have been
// dropped by the state machine at any moment (fsm: a failed member loses its
// locks). Each partition is one key.

// claimState is one connection's claim.
type claimState struct {
	Owner    string // "" free
	Epoch    uint64 // 0: not known (claimed by an Unknown call)
	MaxEpoch uint64 // highest epoch known granted for this key
}

// ClaimModel is the sequential specification of claims, releases and
// linearizable lookups of one connection (fsm/claims.go).
func ClaimModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: partitionByKey,
		Init:      func() []any { return []any{claimState{}} },
		Step: func(state, input, output any) []any {
			return claimStep(state.(claimState), input.(Op), output.(Op))
		},
		DescribeOperation: describe,
		DescribeState:     func(s any) string { return fmt.Sprintf("%+v", s) },
	}
	return nm.ToModel()
}

func claimStep(s claimState, in, out Op) []any {
	m := in.Member
	switch in.Kind {
	case Claim:
		switch {
		case out.Outcome == OK && s.Owner == "" && out.Epoch > s.MaxEpoch:
			return []any{claimState{m, out.Epoch, out.Epoch}}
		case out.Outcome == OK && s.Owner == m && (s.Epoch == 0 || s.Epoch == out.Epoch):
			return []any{claimState{m, out.Epoch, max(s.MaxEpoch, out.Epoch)}}
		case out.Outcome == Failed && out.Reason == Conflict && s.Owner != "" && s.Owner != m:
			return []any{s}
		case out.Outcome == Failed && (out.Reason == NotAlive || out.Reason == Other):
			return []any{s}
		case out.Outcome == Unknown && s.Owner == "":
			return []any{s, claimState{m, 0, s.MaxEpoch}}
		case out.Outcome == Unknown:
			return []any{s}
		}
	case Release:
		switch {
		case out.Outcome == OK && s.Owner == m:
			return []any{claimState{MaxEpoch: s.MaxEpoch}}
		case out.Outcome == Failed && out.Reason == NotClaimed && s.Owner == "":
			return []any{s}
		case out.Outcome == Failed && out.Reason == Conflict && s.Owner != "" && s.Owner != m:
			return []any{s}
		case out.Outcome == Failed && (out.Reason == NotAlive || out.Reason == Other):
			return []any{s}
		case out.Outcome == Unknown && s.Owner == m:
			return []any{s, claimState{MaxEpoch: s.MaxEpoch}}
		case out.Outcome == Unknown:
			return []any{s}
		}
	case Lookup:
		switch {
		case out.Outcome != OK:
			return []any{s}
		case out.Owner == "" && s.Owner == "":
			return []any{s}
		case out.Owner != "" && out.Owner == s.Owner && (s.Epoch == 0 || s.Epoch == out.Epoch):
			return []any{claimState{s.Owner, out.Epoch, max(s.MaxEpoch, out.Epoch)}}
		}
	}
	return nil
}

// lockState is one key's lock. A held lock's expiry (log time) is known to
// lie in [ExpLo, ExpHi]: exactly, once an answer carried it.
type lockState struct {
	Holder       string // "" free
	Token        uint64 // 0: not known (granted to an Unknown call)
	ExpLo, ExpHi int64
	MaxToken     uint64 // highest token known granted for this key
}

// LockModel is the sequential specification of lock acquire, renew, release
// and linearizable reads of one key (fsm/locks.go). mayDrop reports whether
// a member failed or left at some point of the run, so the state machine
// may have dropped its locks.
func LockModel(mayDrop func(member string) bool) porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: partitionByKey,
		Init:      func() []any { return []any{lockState{}} },
		Step: func(state, input, output any) []any {
			s := state.(lockState)
			pre := []lockState{s}
			if s.Holder != "" && mayDrop(s.Holder) {
				pre = append(pre, lockState{MaxToken: s.MaxToken})
			}
			var next []any
			for _, p := range pre {
				next = append(next, lockStep(p, input.(Op), output.(Op))...)
			}
			return next
		},
		DescribeOperation: describe,
		DescribeState:     func(s any) string { return fmt.Sprintf("%+v", s) },
	}
	return nm.ToModel()
}

func lockStep(s lockState, in, out Op) []any {
	m, c, r := in.Member, in.Call, out.Return
	free := lockState{MaxToken: s.MaxToken}
	// The operation's log time lies in [c, r]; a read's may be older
	// (the last entry applied), never newer.
	freePossible := s.Holder == "" || s.ExpLo <= r
	livePossible := s.Holder != "" && s.ExpHi > c
	if in.Kind == GetLock {
		livePossible = s.Holder != ""
	}
	mine := s.Holder == m && (s.Token == 0 || s.Token == in.Token)
	definite := out.Outcome == Failed && (out.Reason == NotAlive || out.Reason == Other)
	switch in.Kind {
	case Acquire:
		switch {
		case out.Outcome == OK && freePossible && out.Epoch > s.MaxToken:
			return []any{lockState{m, out.Epoch, out.Expires, out.Expires, out.Epoch}}
		case out.Outcome == Failed && out.Reason == Held && livePossible, definite:
			return []any{s}
		case out.Outcome == Unknown && freePossible:
			return []any{s, lockState{m, 0, c + in.TTL, r + in.TTL, s.MaxToken}}
		case out.Outcome == Unknown:
			return []any{s}
		}
	case Renew:
		switch {
		case out.Outcome == OK && livePossible && mine:
			return []any{lockState{m, in.Token, out.Expires, out.Expires, max(s.MaxToken, in.Token)}}
		case out.Outcome == Failed && out.Reason == NotHeld && freePossible:
			return []any{free}
		case out.Outcome == Failed && out.Reason == Mismatch && livePossible && (s.Holder != m || s.Token != in.Token), definite:
			return []any{s}
		case out.Outcome == Unknown:
			next := []any{s}
			if livePossible && mine {
				next = append(next, lockState{m, in.Token, c + in.TTL, r + in.TTL, max(s.MaxToken, in.Token)})
			}
			return next
		}
	case Unlock:
		switch {
		case out.Outcome == OK && livePossible && mine:
			return []any{free}
		case out.Outcome == Failed && out.Reason == NotHeld && freePossible:
			return []any{free}
		case out.Outcome == Failed && out.Reason == Mismatch && livePossible && (s.Holder != m || s.Token != in.Token), definite:
			return []any{s}
		case out.Outcome == Unknown && (freePossible || livePossible && mine):
			return []any{s, free}
		case out.Outcome == Unknown:
			return []any{s}
		}
	case GetLock:
		switch {
		case out.Outcome == Unknown, definite:
			return []any{s}
		case out.Outcome == Failed && out.Reason == NotHeld && freePossible:
			return []any{free} // log time only grows: expired for everyone after
		case out.Outcome == OK && s.Holder == out.Owner && out.Owner != "" && (s.Token == 0 || s.Token == out.Epoch):
			return []any{lockState{s.Holder, out.Epoch, out.Expires, out.Expires, max(s.MaxToken, out.Epoch)}}
		}
	}
	return nil
}

func partitionByKey(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var keys []string
	for _, op := range history {
		k := op.Input.(Op).Key
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], op)
	}
	slices.Sort(keys)
	out := make([][]porcupine.Operation, 0, len(keys))
	for _, k := range keys {
		out = append(out, byKey[k])
	}
	return out
}

func describe(input, output any) string {
	in, out := input.(Op), output.(Op)
	args := in.Member
	if in.Token != 0 {
		args += fmt.Sprintf(", token %d", in.Token)
	}
	res := string(out.Outcome)
	switch {
	case out.Outcome == Failed:
		res = out.Reason
	case out.Outcome == OK && out.Owner != "":
		res = fmt.Sprintf("%s@%d", out.Owner, out.Epoch)
	case out.Outcome == OK && in.Kind != Release && in.Kind != Unlock && out.Epoch != 0:
		res = fmt.Sprintf("%d", out.Epoch)
	}
	return fmt.Sprintf("%s(%s) -> %s", in.Kind, args, res)
}

// Verdict is what a linearizability check found.
type Verdict struct {
	Model   string
	Ops     int // operations checked
	Unknown int // of which with an Unknown outcome
	Result  porcupine.CheckResult
	info    porcupine.LinearizationInfo
	model   porcupine.Model
}

// OK reports whether the history was found linearizable.
func (v Verdict) OK() bool { return v.Result == porcupine.Ok }

func (v Verdict) String() string {
	return fmt.Sprintf("%s: %d operations (%d unknown): %s", v.Model, v.Ops, v.Unknown, v.Result)
}

// Visualize writes porcupine's HTML visualisation of the check to path.
func (v Verdict) Visualize(path string) error { return porcupine.VisualizePath(v.model, v.info, path) }

// CheckLinearizable checks the operations of the given kinds against model.
// An Unknown operation is taken to return after every other one (it may
// take effect at any time after its call, up to the run's last answer).
func CheckLinearizable(name string, model porcupine.Model, ops []Op, kinds []Kind, timeout time.Duration) Verdict {
	v := Verdict{Model: name, model: model}
	var end int64 // an Unknown call may take effect until the last answer of the run
	for _, op := range ops {
		end = max(end, op.Return)
	}
	var hist []porcupine.Operation
	for _, op := range ops {
		if !slices.Contains(kinds, op.Kind) {
			continue
		}
		ret := op.Return
		if op.Outcome == Unknown {
			ret = math.MaxInt64 / 2
			op.Return = end
			v.Unknown++
		}
		hist = append(hist, porcupine.Operation{ClientId: op.Client, Input: op, Output: op, Call: op.Call, Return: ret})
		v.Ops++
	}
	v.Result, v.info = porcupine.CheckOperationsVerbose(model, hist, timeout)
	return v
}
