package placement

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

const nBuckets = 4096

func members(n int) []Member {
	out := make([]Member, n)
	for i := range out {
		out[i] = Member{ID: fmt.Sprintf("m%d", i+1), Weight: 1}
	}
	return out
}

func without(ms []Member, ids ...string) []Member {
	return slices.DeleteFunc(slices.Clone(ms), func(m Member) bool { return slices.Contains(ids, m.ID) })
}

// initial places every bucket over ms from an empty table.
func initial(t *testing.T, ms []Member) []Bucket {
	t.Helper()
	cur := make([]Bucket, nBuckets)
	cur = Apply(cur, Assign(cur, ms))
	checkValid(t, cur, ms)
	return cur
}

// checkValid: every bucket has an eligible primary, a different eligible
// backup when there are two members or more, and no move under way.
func checkValid(t *testing.T, cur []Bucket, ms []Member) {
	t.Helper()
	ok := map[string]bool{}
	for _, m := range ms {
		ok[m.ID] = true
	}
	for i, b := range cur {
		switch {
		case !ok[b.Primary]:
			t.Fatalf("bucket %d: primary %q is not eligible", i, b.Primary)
		case len(ms) > 1 && !ok[b.LocalBackup]:
			t.Fatalf("bucket %d: backup %q is not eligible", i, b.LocalBackup)
		case b.Primary == b.LocalBackup:
			t.Fatalf("bucket %d: backup is the primary %q", i, b.Primary)
		case b.Incoming != "":
			t.Fatalf("bucket %d: move to %s under way", i, b.Incoming)
		}
	}
}

// settle completes every full sync at once (of backups and incoming
// members), then every move.
func settle(cur []Bucket, ms []Member) []Bucket {
	cur = slices.Clone(cur)
	for i, b := range cur {
		cur[i].IncomingSynced = b.Incoming != ""
		cur[i].Synced = b.LocalBackup != ""
	}
	return Apply(cur, Flip(cur, ms))
}

// converge runs what the leader's reconcile loop runs until nothing changes:
// assign, rebalance, and complete every move; each step must be
// make-before-break (checkNoCopyLost).
func converge(t *testing.T, cur []Bucket, ms []Member) []Bucket {
	t.Helper()
	step := func(cur []Bucket, changes []Change) []Bucket {
		next := Apply(cur, changes)
		checkNoCopyLost(t, cur, next)
		synced := slices.Clone(next) // every full sync finishes
		for i := range synced {
			synced[i].IncomingSynced = next[i].Incoming != ""
			synced[i].Synced = next[i].LocalBackup != ""
		}
		flipped := Apply(synced, Flip(synced, ms))
		checkNoCopyLost(t, synced, flipped)
		return flipped
	}
	for range 10 {
		next := step(cur, Assign(cur, ms))
		next = step(next, Rebalance(next, ms, 0))
		next = step(next, RebalanceBackups(next, ms, 0, 0.05))
		if slices.Equal(next, cur) {
			return cur
		}
		cur = next
	}
	t.Fatal("placement did not converge in 10 rounds")
	return nil
}

// complete returns the members holding every connection of a bucket: the
// primary, the synced backup and a synced incoming member.
func complete(b Bucket) []string {
	var out []string
	if b.Primary != "" {
		out = append(out, b.Primary)
	}
	if b.LocalBackup != "" && b.Synced {
		out = append(out, b.LocalBackup)
	}
	if b.Incoming != "" && b.IncomingSynced {
		out = append(out, b.Incoming)
	}
	return out
}

// checkNoCopyLost: outside failover, a plan never leaves a bucket with fewer
// complete copies (up to two: primary and backup) than it had, and a new
// primary always held a complete copy.
func checkNoCopyLost(t *testing.T, before, after []Bucket) {
	t.Helper()
	for i := range before {
		b, a := before[i], after[i]
		if b.Primary == "" {
			continue // first placement: nothing to keep
		}
		if a.Primary != b.Primary && !slices.Contains(complete(b), a.Primary) {
			t.Fatalf("bucket %d: new primary %s held no complete copy: %+v -> %+v", i, a.Primary, b, a)
		}
		if len(complete(a)) < min(len(complete(b)), 2) {
			t.Fatalf("bucket %d: complete copies %v -> %v: %+v -> %+v", i, complete(b), complete(a), b, a)
		}
	}
}

func changed(a, b []Bucket) (primaries, backups int) {
	for i := range a {
		if a[i].Primary != b[i].Primary {
			primaries++
		}
		if a[i].LocalBackup != b[i].LocalBackup {
			backups++
		}
	}
	return primaries, backups
}

func TestAssign_EvenByWeight(t *testing.T) {
	for _, tc := range []struct {
		name string
		ms   []Member
	}{
		{"5 equal", members(5)},
		{"weights 1,2,3", []Member{{"a", 1}, {"b", 2}, {"c", 3}}},
		{"1 member", members(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := initial(t, tc.ms)
			prim, _ := Counts(cur)
			target := Targets(nBuckets, tc.ms)
			for _, m := range tc.ms {
				if d := prim[m.ID] - target[m.ID]; d < -1 || d > 1 {
					t.Errorf("%s: %d primaries, share %d", m.ID, prim[m.ID], target[m.ID])
				}
			}
			im := Imbalance(cur, tc.ms)
			t.Logf("imbalance (max/mean primaries per weight) %.4f, primaries %v", im, prim)
			if im > 1.01 {
				t.Errorf("imbalance %.4f > 1.01", im)
			}
			for _, b := range cur {
				if !b.Synced || b.Incoming != "" {
					t.Fatalf("fresh bucket %+v: want synced, no move", b)
				}
			}
		})
	}
}

// The backups of each primary's buckets are spread evenly over the others,
// so a failure spreads its load evenly.
func TestAssign_BackupsSpreadPerPrimary(t *testing.T) {
	ms := members(5)
	cur := initial(t, ms)
	pairs := map[[2]string]int{}
	for _, b := range cur {
		pairs[[2]string{b.Primary, b.LocalBackup}]++
	}
	for _, p := range ms {
		lo, hi := nBuckets, 0
		for _, q := range ms {
			if p.ID == q.ID {
				continue
			}
			n := pairs[[2]string{p.ID, q.ID}]
			lo, hi = min(lo, n), max(hi, n)
		}
		if hi-lo > 1 {
			t.Errorf("backups of %s's buckets: between %d and %d per member", p.ID, lo, hi)
		}
	}
}

func TestFailover_PromotesBackups(t *testing.T) {
	ms := members(5)
	cur := initial(t, ms)
	prim, _ := Counts(cur)
	changes, unsynced := Failover(cur, map[string]bool{"m3": true}, without(ms, "m3"))
	next := Apply(cur, changes)
	checkValid(t, next, without(ms, "m3"))
	if len(unsynced) != 0 {
		t.Errorf("%d buckets unsynced, want 0 (every backup was synced)", len(unsynced))
	}
	for i, b := range cur {
		switch {
		case b.Primary == "m3":
			if next[i].Primary != b.LocalBackup {
				t.Fatalf("bucket %d: new primary %s, want its backup %s", i, next[i].Primary, b.LocalBackup)
			}
			if next[i].Synced {
				t.Fatalf("bucket %d: new backup %s counted as synced", i, next[i].LocalBackup)
			}
		case next[i].Primary != b.Primary:
			t.Fatalf("bucket %d of a live primary moved %s -> %s", i, b.Primary, next[i].Primary)
		case b.LocalBackup != "m3" && next[i] != b:
			t.Fatalf("bucket %d changed without need: %+v -> %+v", i, b, next[i])
		}
	}
	mp, mb := changed(cur, next)
	im := Imbalance(next, without(ms, "m3"))
	t.Logf("failover of 1 of 5: %d primaries moved (m3 had %d), %d backups replaced, imbalance %.4f", mp, prim["m3"], mb, im)
	if mp != prim["m3"] {
		t.Errorf("%d primaries moved, want exactly m3's %d", mp, prim["m3"])
	}
	if im > 1.02 {
		t.Errorf("imbalance after failover %.4f > 1.02", im)
	}
}

func TestFailover_UnsyncedBackupReported(t *testing.T) {
	cur := []Bucket{
		{Primary: "a", LocalBackup: "b", Synced: false},
		{Primary: "a", LocalBackup: "", Synced: false},
		{Primary: "a", LocalBackup: "c", Synced: true},
		{Primary: "b", LocalBackup: "a", Synced: true},
	}
	changes, unsynced := Failover(cur, map[string]bool{"a": true}, []Member{{"b", 1}, {"c", 1}})
	next := Apply(cur, changes)
	if !slices.Equal(unsynced, []uint32{0, 1}) {
		t.Errorf("unsynced %v, want [0 1]", unsynced)
	}
	checkValid(t, next, []Member{{"b", 1}, {"c", 1}})
	if next[0].Primary != "b" || next[2].Primary != "c" || next[3].Primary != "b" {
		t.Errorf("promotions wrong: %+v", next)
	}
}

func TestRebalance_JoinMovesOnlyToNewMember(t *testing.T) {
	ms := members(4)
	cur := initial(t, ms)
	grown := append(slices.Clone(ms), Member{"m5", 1})
	changes := Rebalance(cur, grown, 0)
	target := Targets(nBuckets, grown)
	if len(changes) != target["m5"] {
		t.Errorf("%d moves, want m5's share %d", len(changes), target["m5"])
	}
	for _, c := range changes {
		was := cur[c.Bucket]
		// Make-before-break: primary and synced backup stay while m5 syncs.
		if c.To.Incoming != "m5" || !c.To.IncomingPrimary || c.To.IncomingSynced ||
			c.To.Primary != was.Primary || c.To.LocalBackup != was.LocalBackup || !c.To.Synced {
			t.Fatalf("move %+v of %+v: want roles kept, m5 incoming as primary", c, was)
		}
	}
	mid := Apply(cur, changes)
	// Nothing flips before the incoming member has synced.
	if f := Flip(mid, grown); len(f) != 0 {
		t.Fatalf("%d flips before sync", len(f))
	}
	next := settle(mid, grown)
	checkValid(t, next, grown)
	mp, mb := changed(cur, next)
	im := Imbalance(next, grown)
	t.Logf("join of a 5th member: %d primaries moved, %d backups changed, imbalance %.4f", mp, mb, im)
	if im > 1.01 {
		t.Errorf("imbalance %.4f after join", im)
	}
	// m5 took over; the synced backup stayed.
	for _, c := range changes {
		if b := next[c.Bucket]; b.Primary != "m5" || b.LocalBackup != cur[c.Bucket].LocalBackup || !b.Synced {
			t.Fatalf("bucket %d after flip: %+v", c.Bucket, b)
		}
	}
	// Balanced: a second plan moves nothing.
	if again := Rebalance(next, grown, 0); len(again) != 0 {
		t.Errorf("%d more moves on a balanced table", len(again))
	}
}

func TestRebalance_MaxMovesLimitsHandoffs(t *testing.T) {
	ms := members(4)
	cur := initial(t, ms)
	grown := append(slices.Clone(ms), Member{"m5", 1})
	mid := Apply(cur, Rebalance(cur, grown, 100))
	n := 0
	for _, b := range mid {
		if b.Incoming != "" {
			n++
		}
	}
	if n != 100 {
		t.Fatalf("%d moves under way, want 100", n)
	}
	if more := Rebalance(mid, grown, 100); len(more) != 0 {
		t.Fatalf("%d more moves while 100 are under way", len(more))
	}
}

// Draining a member swaps each of its buckets with the synced backup at once
// (both hold every connection); the drained member stays the backup until a
// new one has synced.
func TestRebalance_DrainSwapsWithSyncedBackups(t *testing.T) {
	ms := members(5)
	cur := initial(t, ms)
	prim, _ := Counts(cur)
	rest := without(ms, "m2") // m2 is draining: not eligible
	changes := Rebalance(cur, rest, 0)
	if len(changes) != prim["m2"] {
		t.Fatalf("%d moves, want all of m2's %d", len(changes), prim["m2"])
	}
	for _, c := range changes {
		was := cur[c.Bucket]
		if c.To.Primary != was.LocalBackup || c.To.LocalBackup != "m2" || !c.To.Synced ||
			c.To.Incoming == "" || c.To.IncomingPrimary {
			t.Fatalf("move %+v of %+v: want a swap with the synced backup and a new backup coming in", c, was)
		}
	}
	next := converge(t, Apply(cur, changes), rest)
	checkValid(t, next, rest)
	p, b := Counts(next)
	if p["m2"] != 0 || b["m2"] != 0 {
		t.Errorf("m2 still holds %d primaries and %d backups", p["m2"], b["m2"])
	}
	t.Logf("drain of 1 of 5: %d primaries moved, imbalance %.4f", len(changes), Imbalance(next, rest))
}

// A site that grew one member at a time has all backups on the first joiner;
// RebalanceBackups spreads them, within the limit of unsynced backups.
func TestRebalanceBackups_SpreadsSkewedBackups(t *testing.T) {
	cur := initial(t, members(2)) // m1/m2 back each other up
	ms := members(5)
	cur = settle(Apply(cur, Rebalance(cur, ms, 0)), ms)
	_, before := Counts(cur)
	limited := RebalanceBackups(cur, ms, 100, 0.05)
	if len(limited) != 100 {
		t.Fatalf("%d backup moves, want the limit 100", len(limited))
	}
	changes := RebalanceBackups(cur, ms, 0, 0.05)
	next := settle(Apply(cur, changes), ms)
	checkValid(t, next, ms)
	_, after := Counts(next)
	target := Targets(nBuckets, ms)
	for _, m := range ms {
		if float64(after[m.ID]) > float64(target[m.ID])*1.05+1 {
			t.Errorf("%s holds %d backups after rebalance, share %d", m.ID, after[m.ID], target[m.ID])
		}
	}
	for _, c := range changes {
		was := cur[c.Bucket]
		if c.To.Primary != was.Primary || c.To.LocalBackup != was.LocalBackup || c.To.Incoming == "" || c.To.IncomingPrimary {
			t.Fatalf("backup move %+v of %+v: want roles kept and a backup coming in", c, was)
		}
	}
	t.Logf("backups before %v, after %v: %d moved", before, after, len(changes))
	if again := RebalanceBackups(next, ms, 0, 0.05); len(again) != 0 {
		t.Errorf("%d more backup moves on a balanced table", len(again))
	}
}

func TestPlacement_Deterministic(t *testing.T) {
	ms := members(5)
	a, b := initial(t, ms), initial(t, ms)
	if !slices.Equal(a, b) {
		t.Fatal("same input, different placement")
	}
	ca, _ := Failover(a, map[string]bool{"m1": true}, without(ms, "m1"))
	cb, _ := Failover(b, map[string]bool{"m1": true}, without(ms, "m1"))
	if !slices.Equal(ca, cb) {
		t.Fatal("same input, different failover")
	}
}

// A random sequence of joins, failures and drains keeps every bucket valid,
// and settles balanced.
func TestPlacement_RandomChanges(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	ms := members(3)
	cur := initial(t, ms)
	next := 4
	for step := 0; step < 60; step++ {
		var what string
		switch op := rng.IntN(3); {
		case op == 0 || len(ms) <= 2:
			m := Member{fmt.Sprintf("m%d", next), uint32(1 + rng.IntN(3))}
			next++
			ms = append(ms, m)
			what = "join " + m.ID
		case op == 1:
			victim := ms[rng.IntN(len(ms))].ID
			ms = without(ms, victim)
			changes, _ := Failover(cur, map[string]bool{victim: true}, ms)
			cur = Apply(cur, changes)
			what = "fail " + victim
		default:
			victim := ms[rng.IntN(len(ms))].ID
			ms = without(ms, victim)
			cur = settle(Apply(cur, Rebalance(cur, ms, 0)), ms)
			what = "drain " + victim
		}
		before := slices.Clone(cur)
		cur = converge(t, cur, ms)
		checkValid(t, cur, ms)
		target := Targets(nBuckets, ms)
		prim, _ := Counts(cur)
		for _, m := range ms {
			if prim[m.ID] != target[m.ID] {
				t.Fatalf("step %d (%s): %s has %d primaries, share %d", step, what, m.ID, prim[m.ID], target[m.ID])
			}
		}
		mp, _ := changed(before, cur)
		if step%10 == 0 {
			t.Logf("step %d %s: %d members, rebalance moved %d, imbalance %.4f", step, what, len(ms), mp, Imbalance(cur, ms))
		}
	}
}

func TestTargets_AddUp(t *testing.T) {
	for n := 0; n < 50; n++ {
		ms := []Member{{"a", 3}, {"b", 1}, {"c", 0}, {"d", 7}}
		sum := 0
		for _, v := range Targets(n, ms) {
			sum += v
		}
		if sum != n {
			t.Fatalf("targets of %d add up to %d", n, sum)
		}
	}
	if len(Targets(10, nil)) != 0 {
		t.Fatal("targets without members")
	}
}

func BenchmarkFailover(b *testing.B) {
	ms := members(5)
	cur := make([]Bucket, nBuckets)
	cur = Apply(cur, Assign(cur, ms))
	for b.Loop() {
		Failover(cur, map[string]bool{"m3": true}, without(ms, "m3"))
	}
}
