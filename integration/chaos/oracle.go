package chaos

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Fencing is the fencing oracle for locks (S2): a simulated resource guarded
// by lock tokens, as a storage system would guard itself. A holder writes
// with its token; the resource accepts a token no lower than the highest it
// has seen and rejects the rest (a stale holder fenced off). For fencing to
// work, a grant must carry a higher token than every grant acknowledged
// before it was asked for; the oracle flags any that does not.
type Fencing struct {
	mu       sync.Mutex
	highest  map[string]uint64
	grants   map[string][]grant
	accepted int
	rejected int
}

type grant struct {
	member      string
	token       uint64
	call, reply int64
}

// NewFencing returns an empty oracle.
func NewFencing() *Fencing {
	return &Fencing{highest: map[string]uint64{}, grants: map[string][]grant{}}
}

// Grant records an acknowledged lock grant: member got token for key by a
// call made at call and answered at reply.
func (f *Fencing) Grant(key, member string, token uint64, call, reply int64) {
	f.mu.Lock()
	f.grants[key] = append(f.grants[key], grant{member, token, call, reply})
	f.mu.Unlock()
}

// Write is a holder's write to the resource with its token; it reports
// whether the resource accepted it.
func (f *Fencing) Write(key string, token uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if token < f.highest[key] {
		f.rejected++
		return false
	}
	f.highest[key] = token
	f.accepted++
	return true
}

// Check returns how many grants and writes it saw and a description of
// each violation: a grant whose token is not above that of a grant for the
// same key answered before it was asked for, or two grants of one token.
func (f *Fencing) Check() (grants, accepted, rejected int, violations []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for key, gs := range f.grants {
		grants += len(gs)
		for i, a := range gs {
			for _, b := range gs[i+1:] {
				switch {
				case a.token == b.token:
					violations = append(violations, fmt.Sprintf("key %s: token %d granted to %s and to %s", key, a.token, a.member, b.member))
				case a.reply < b.call && b.token < a.token, b.reply < a.call && a.token < b.token:
					first, then := a, b
					if b.reply < a.call {
						first, then = b, a
					}
					violations = append(violations, fmt.Sprintf("key %s: %s was granted token %d after %s had been granted %d",
						key, then.member, then.token, first.member, first.token))
				}
			}
		}
	}
	return grants, f.accepted, f.rejected, violations
}

// Activations observes which members act as primary of which buckets, by
// polling each member in turn, and checks S1 and S2 for buckets: no two
// members act for one bucket at overlapping times, an activation never has
// a lower epoch than one seen before it, and no two members are given the
// same epoch for a bucket. A member seen acting at times t1 and t2 (in
// consecutive polls) is taken to act throughout [t1, t2]; two members'
// spans that intersect are an overlap, reported with its length (which may
// be 0: both were seen acting, each between two sightings of the other).
type Activations struct {
	base  int64 // times in reports are counted from here
	mu    sync.Mutex
	spans map[uint32][]*span
	open  map[string]map[uint32]*span // member -> bucket -> its open span
	polls int
	// overlapsOnly: the epochs of different observed parties are not
	// comparable (sites number their buckets' epochs each on its own).
	overlapsOnly bool
}

type span struct {
	member      string
	epoch       uint64
	first, last int64
}

// NewActivations returns an empty observer.
func NewActivations() *Activations {
	return &Activations{base: Now(), spans: map[uint32][]*span{}, open: map[string]map[uint32]*span{}}
}

// NewSiteActivations returns an observer of whole sites (Observe with a
// site's name and the union of its members' buckets): it checks S1 across
// sites, no bucket acted for on two sites at overlapping times, and not the
// epochs, which each site numbers on its own.
func NewSiteActivations() *Activations {
	a := NewActivations()
	a.overlapsOnly = true
	return a
}

// Observe records that at time t member acts as primary of the buckets in
// active (bucket -> epoch). A member that is not running is not observed:
// its spans end at their last sighting.
func (a *Activations) Observe(member string, t int64, active map[uint32]uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.polls++
	open := a.open[member]
	if open == nil {
		open = map[uint32]*span{}
		a.open[member] = open
	}
	for b, sp := range open {
		if e, ok := active[b]; !ok || e != sp.epoch {
			delete(open, b)
		}
	}
	for b, e := range active {
		if sp := open[b]; sp != nil {
			sp.last = t
			continue
		}
		sp := &span{member: member, epoch: e, first: t, last: t}
		open[b] = sp
		a.spans[b] = append(a.spans[b], sp)
	}
}

// Forget ends member's open spans (it stopped, or stopped being observed).
func (a *Activations) Forget(member string) {
	a.mu.Lock()
	delete(a.open, member)
	a.mu.Unlock()
}

// when describes a span's times, from the observer's start and by the
// wall clock (to match the members' logs).
func (a *Activations) when(s *span) string {
	ms := func(t int64) string {
		return fmt.Sprintf("+%.1fms (%s)", float64(t-a.base)/1e6, time.Unix(0, t).UTC().Format("15:04:05.000"))
	}
	return ms(s.first) + " to " + ms(s.last)
}

// ActivationReport is what Check found.
type ActivationReport struct {
	Polls       int
	Activations int           // spans: a member acting for a bucket at one epoch
	Overlaps    int           // pairs of spans of two members that intersect
	Longest     time.Duration // the longest intersection
	Violations  []string
}

// Check compares every pair of spans of each bucket.
func (a *Activations) Check() ActivationReport {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := ActivationReport{Polls: a.polls}
	buckets := make([]uint32, 0, len(a.spans))
	for b := range a.spans {
		buckets = append(buckets, b)
	}
	slices.Sort(buckets)
	for _, b := range buckets {
		ss := a.spans[b]
		r.Activations += len(ss)
		for i, x := range ss {
			for _, y := range ss[i+1:] {
				if x.member == y.member {
					continue
				}
				if from, to := max(x.first, y.first), min(x.last, y.last); from <= to {
					r.Overlaps++
					r.Longest = max(r.Longest, time.Duration(to-from))
					r.Violations = append(r.Violations, fmt.Sprintf("bucket %d: %s (epoch %d, seen acting %s) and %s (epoch %d, %s) both acting for %v",
						b, x.member, x.epoch, a.when(x), y.member, y.epoch, a.when(y), time.Duration(to-from)))
					continue
				}
				if a.overlapsOnly {
					continue
				}
				if x.epoch == y.epoch {
					r.Violations = append(r.Violations, fmt.Sprintf("bucket %d: %s and %s both activated at epoch %d", b, x.member, y.member, x.epoch))
				}
				early, late := x, y
				if y.last < x.first {
					early, late = y, x
				}
				if late.epoch < early.epoch {
					r.Violations = append(r.Violations, fmt.Sprintf("bucket %d: %s activated at epoch %d after %s at epoch %d",
						b, late.member, late.epoch, early.member, early.epoch))
				}
			}
		}
	}
	return r
}

// Terms checks that at most one member leads in each Raft term.
type Terms struct {
	mu         sync.Mutex
	leader     map[uint64]string
	violations []string
}

// NewTerms returns an empty checker.
func NewTerms() *Terms { return &Terms{leader: map[uint64]string{}} }

// Leader records that member was leader in term.
func (t *Terms) Leader(term uint64, member string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch l, ok := t.leader[term]; {
	case !ok:
		t.leader[term] = member
	case l != member:
		t.violations = append(t.violations, fmt.Sprintf("term %d: both %s and %s were leader", term, l, member))
		t.leader[term] = member
	}
}

// Check returns how many terms had a leader and the violations.
func (t *Terms) Check() (terms int, violations []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.leader), slices.Clone(t.violations)
}

// CheckDurable checks S4 for claims: for each key, the last claim
// acknowledged, unless its member may have released it since (a release
// call, answered or not, made after the claim was), must be in final (key ->
// the final linearizable lookup) with its owner and epoch. It returns how
// many acknowledged claims it checked and what is missing. (An Unknown
// release may take effect at any time after its call.)
func CheckDurable(ops []Op, final map[string]Op) (checked int, missing []string) {
	last := map[string]Op{}
	for _, op := range ops {
		if op.Kind == Claim && op.Outcome == OK && op.Return > last[op.Key].Return {
			last[op.Key] = op
		}
	}
	released := func(c Op) bool {
		for _, op := range ops {
			if op.Key == c.Key && op.Kind == Release && op.Member == c.Member &&
				(op.Outcome == Unknown || op.Outcome == OK && op.Return >= c.Call) {
				return true
			}
		}
		return false
	}
	keys := make([]string, 0, len(last))
	for k := range last {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		c := last[k]
		if released(c) {
			continue
		}
		checked++
		f, ok := final[k]
		if !ok || f.Outcome != OK || f.Owner != c.Member || f.Epoch != c.Epoch {
			missing = append(missing, fmt.Sprintf("key %s: claim by %s at epoch %d acknowledged, at the end: %+v", k, c.Member, c.Epoch, f))
		}
	}
	return checked, missing
}
