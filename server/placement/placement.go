// Package placement decides which member holds each bucket's roles: primary
// and local backup (the remote backup belongs to another site and is left as
// it is). Its functions are pure: no I/O, no clocks, no randomness, so the
// same inputs always give the same plan. The site leader calls them with the
// state machine's bucket table and proposes the result as one Raft entry; the
// state machine checks each change against the epoch it was planned from.
//
// The rules:
//   - Primaries are spread over the eligible members in proportion to their
//     weight (largest-remainder rounding, so counts differ from the exact
//     share by less than one bucket).
//   - The local backup is never the primary. The backups of one primary's
//     buckets are spread evenly over the other members, so that when a
//     primary fails its buckets land evenly on the survivors.
//   - A change moves as few buckets as possible: failover promotes the
//     backup that already holds the state; rebalancing only moves buckets
//     from members above their share to members below it, and prefers
//     buckets whose backup is already on the receiving member and synced.
//   - Moves are make-before-break: Rebalance makes the target the local
//     backup with Handoff set; once the target reports its full sync done
//     (Synced), Flip swaps the roles, so the old primary becomes the backup
//     and still holds every connection.
//
// Ties are broken by a hash of (bucket, member) — rendezvous hashing — so
// choices are spread rather than piled on the first member in ID order.
package placement

import (
	"encoding/binary"
	"slices"
	"sort"

	"github.com/cespare/xxhash/v2"
)

// Member is a member that may be given new roles. Weight is its relative
// share of primaries; 0 counts as 1.
type Member struct {
	ID     string
	Weight uint32
}

// Bucket is one bucket's local roles. "" means the role is unfilled.
type Bucket struct {
	Primary, LocalBackup string
	// Synced: the local backup holds every connection of the bucket.
	Synced bool
	// Handoff: the local backup is to become primary once Synced.
	Handoff bool
}

// Change is the new roles of one bucket.
type Change struct {
	Bucket uint32
	To     Bucket
}

// Apply returns a copy of cur with the changes applied.
func Apply(cur []Bucket, changes []Change) []Bucket {
	out := slices.Clone(cur)
	for _, c := range changes {
		out[c.Bucket] = c.To
	}
	return out
}

// tally is the load of each member in a bucket table, kept up to date as a
// plan is built.
type tally struct {
	buckets   []Bucket
	weight    map[string]float64 // eligible members only
	ids       []string           // eligible members, sorted
	primaries map[string]int     // counting a handoff as its target's
	backups   map[string]int
	pairs     map[[2]string]int // (primary, backup) -> buckets
	changes   map[uint32]Bucket
}

func newTally(cur []Bucket, eligible []Member) *tally {
	t := &tally{buckets: slices.Clone(cur), weight: map[string]float64{}, primaries: map[string]int{},
		backups: map[string]int{}, pairs: map[[2]string]int{}, changes: map[uint32]Bucket{}}
	for _, m := range eligible {
		t.weight[m.ID] = float64(max(m.Weight, 1))
		t.ids = append(t.ids, m.ID)
	}
	sort.Strings(t.ids)
	for _, b := range cur {
		t.count(b, 1)
	}
	return t
}

// owner is who a bucket's primary is, or will be once its handoff completes.
func owner(b Bucket) string {
	if b.Handoff && b.LocalBackup != "" {
		return b.LocalBackup
	}
	return b.Primary
}

func (t *tally) count(b Bucket, d int) {
	if o := owner(b); o != "" {
		t.primaries[o] += d
	}
	if b.LocalBackup != "" {
		t.backups[b.LocalBackup] += d
		t.pairs[[2]string{b.Primary, b.LocalBackup}] += d
	}
}

func (t *tally) set(i uint32, b Bucket) {
	t.count(t.buckets[i], -1)
	t.buckets[i] = b
	t.count(b, 1)
	t.changes[i] = b
}

// result lists the changes made, in bucket order, leaving out buckets that
// ended as they started.
func (t *tally) result(cur []Bucket) []Change {
	out := make([]Change, 0, len(t.changes))
	for i, b := range t.changes {
		if b != cur[i] {
			out = append(out, Change{Bucket: i, To: b})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Bucket < out[j].Bucket })
	return out
}

func (t *tally) eligible(id string) bool {
	_, ok := t.weight[id]
	return ok
}

// rank is the rendezvous hash of a member for a bucket: the tie-breaker.
func rank(bucket uint32, id string) uint64 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], bucket)
	d := xxhash.New()
	d.Write(b[:])
	d.WriteString(id)
	return d.Sum64()
}

// pickPrimary returns the eligible member with the fewest primaries per unit
// of weight, or "" if there is none.
func (t *tally) pickPrimary(bucket uint32) string {
	best, bestLoad, bestRank := "", 0.0, uint64(0)
	for _, id := range t.ids {
		load := float64(t.primaries[id]+1) / t.weight[id]
		r := rank(bucket, id)
		if best == "" || load < bestLoad || (load == bestLoad && r > bestRank) {
			best, bestLoad, bestRank = id, load, r
		}
	}
	return best
}

// pickBackup returns the eligible member other than primary that holds the
// fewest backups of primary's buckets, then the fewest backups overall (both
// per unit of weight); "" if there is none.
func (t *tally) pickBackup(bucket uint32, primary string) string {
	best, bestRank := "", uint64(0)
	var bestPair, bestLoad float64
	for _, id := range t.ids {
		if id == primary {
			continue
		}
		w := t.weight[id]
		pair := float64(t.pairs[[2]string{primary, id}]+1) / w
		load := float64(t.backups[id]+1) / w
		r := rank(bucket, id)
		if best == "" || pair < bestPair || (pair == bestPair && (load < bestLoad || (load == bestLoad && r > bestRank))) {
			best, bestPair, bestLoad, bestRank = id, pair, load, r
		}
	}
	return best
}

// Failover replaces the members in failed. Every bucket whose primary
// failed gets its local backup as primary (it holds the state) and a new
// local backup; every bucket whose local backup failed gets a new one. A
// bucket whose backup cannot take over (none, failed too, or not synced) gets
// the least loaded eligible member as primary and is listed in unsynced: its
// connections had no complete copy. Handoffs to a failed member are
// cancelled. eligible must not contain failed members.
func Failover(cur []Bucket, failed map[string]bool, eligible []Member) (changes []Change, unsynced []uint32) {
	t := newTally(cur, eligible)
	for i := range cur {
		b, bi := cur[i], uint32(i)
		switch {
		case b.Primary != "" && failed[b.Primary]:
			nb := Bucket{Primary: b.LocalBackup}
			if b.LocalBackup == "" || failed[b.LocalBackup] || !b.Synced {
				unsynced = append(unsynced, bi)
			}
			if nb.Primary == "" || failed[nb.Primary] {
				t.set(bi, Bucket{}) // count it as nobody's while choosing
				nb.Primary = t.pickPrimary(bi)
			}
			t.set(bi, nb)
			nb.LocalBackup = t.pickBackup(bi, nb.Primary)
			t.set(bi, nb)
		case b.LocalBackup != "" && failed[b.LocalBackup]:
			nb := Bucket{Primary: b.Primary}
			t.set(bi, nb)
			nb.LocalBackup = t.pickBackup(bi, nb.Primary)
			t.set(bi, nb)
		}
	}
	return t.result(cur), unsynced
}

// Assign gives a primary to every bucket that has none and a local backup to
// every bucket that lacks one (or whose backup is not eligible), balanced by
// weight. A bucket that gets its first primary has no connections yet, so
// its new backup counts as synced. Buckets in a handoff keep their backup.
func Assign(cur []Bucket, eligible []Member) []Change {
	t := newTally(cur, eligible)
	for i := range cur {
		b, bi := cur[i], uint32(i)
		switch {
		case b.Primary == "":
			nb := Bucket{Primary: t.pickPrimary(bi), Synced: true}
			t.set(bi, nb)
			nb.LocalBackup = t.pickBackup(bi, nb.Primary)
			t.set(bi, nb)
		case b.LocalBackup == "" || !t.eligible(b.LocalBackup) || b.LocalBackup == b.Primary:
			nb := Bucket{Primary: b.Primary}
			t.set(bi, nb)
			nb.LocalBackup = t.pickBackup(bi, nb.Primary)
			t.set(bi, nb)
		}
	}
	return t.result(cur)
}

// Targets returns each eligible member's share of n primaries: n x weight /
// total weight, rounded so the shares add up to n (largest remainders first,
// ties by member ID).
func Targets(n int, eligible []Member) map[string]int {
	out := map[string]int{}
	if len(eligible) == 0 {
		return out
	}
	var total float64
	for _, m := range eligible {
		total += float64(max(m.Weight, 1))
	}
	type rem struct {
		id   string
		frac float64
	}
	rems := make([]rem, 0, len(eligible))
	given := 0
	for _, m := range eligible {
		exact := float64(n) * float64(max(m.Weight, 1)) / total
		out[m.ID] = int(exact)
		given += int(exact)
		rems = append(rems, rem{m.ID, exact - float64(int(exact))})
	}
	sort.Slice(rems, func(i, j int) bool {
		if rems[i].frac != rems[j].frac {
			return rems[i].frac > rems[j].frac
		}
		return rems[i].id < rems[j].id
	})
	for i := 0; given < n; i++ {
		out[rems[i%len(rems)].id]++
		given++
	}
	return out
}

// Rebalance plans make-before-break moves that bring every eligible member to
// its share of primaries (Targets). Primaries on members that are not
// eligible (draining) all move. A handoff already under way counts as done.
// At most maxMoves handoffs are under way after the plan (0: no limit);
// buckets that must leave a non-eligible member come first.
//
// A moved bucket keeps its primary and gets the receiver as local backup with
// Handoff set; if the receiver already was its synced backup, Synced stays
// set and Flip can swap the roles at once. Only buckets of members above
// their share move, and only to members below it, so the number of moves is
// the least that reaches the shares.
func Rebalance(cur []Bucket, eligible []Member, maxMoves int) []Change {
	t := newTally(cur, eligible)
	if len(t.ids) == 0 {
		return nil
	}
	target := Targets(len(cur), eligible)
	inFlight := 0
	for _, b := range cur {
		if b.Handoff {
			inFlight++
		}
	}
	room := func() bool { return maxMoves <= 0 || inFlight < maxMoves }
	deficit := func(id string) int { return target[id] - t.primaries[id] }
	excess := func(b Bucket) bool {
		o := owner(b)
		return o != "" && (!t.eligible(o) || t.primaries[o] > target[o])
	}
	move := func(bi uint32, to string) {
		b := t.buckets[bi]
		t.set(bi, Bucket{Primary: b.Primary, LocalBackup: to, Synced: b.LocalBackup == to && b.Synced, Handoff: true})
		inFlight++
	}
	// Candidates: buckets not already in a handoff, owned by a member above
	// its share; those of non-eligible members first, then in rank order so
	// the buckets that move are spread over the bucket space.
	var cand []uint32
	for i, b := range cur {
		if !b.Handoff && b.Primary != "" && excess(b) {
			cand = append(cand, uint32(i))
		}
	}
	sort.SliceStable(cand, func(i, j int) bool {
		ei, ej := t.eligible(cur[cand[i]].Primary), t.eligible(cur[cand[j]].Primary)
		if ei != ej {
			return !ei
		}
		return rank(cand[i], "move") < rank(cand[j], "move")
	})
	// First pass: move to the bucket's current backup when it is synced and
	// below its share: no data has to be copied.
	for _, bi := range cand {
		b := t.buckets[bi]
		if room() && excess(b) && b.Synced && t.eligible(b.LocalBackup) && deficit(b.LocalBackup) > 0 {
			move(bi, b.LocalBackup)
		}
	}
	// Second pass: the receiver furthest below its share (per weight).
	for _, bi := range cand {
		b := t.buckets[bi]
		if !room() || b.Handoff || !excess(b) {
			continue
		}
		best, bestGap, bestRank := "", 0.0, uint64(0)
		for _, id := range t.ids {
			if id == b.Primary || deficit(id) <= 0 {
				continue
			}
			gap := float64(deficit(id)) / t.weight[id]
			r := rank(bi, id)
			if best == "" || gap > bestGap || (gap == bestGap && r > bestRank) {
				best, bestGap, bestRank = id, gap, r
			}
		}
		if best == "" {
			break // nobody is below their share
		}
		move(bi, best)
	}
	return t.result(cur)
}

// RebalanceBackups moves local backups from members holding more than their
// share (Targets over the buckets that have a backup, with a tolerance of
// tolerance x share + 1) to members below it, never onto the bucket's
// primary, preferring the receiver that holds the fewest backups of that
// primary. A moved backup starts unsynced: until the receiver's full sync
// finishes the bucket has no complete copy, so at most maxMoves buckets
// (0: no limit) may be without a synced backup after the plan, and buckets in
// a handoff are left alone.
func RebalanceBackups(cur []Bucket, eligible []Member, maxMoves int, tolerance float64) []Change {
	t := newTally(cur, eligible)
	if len(t.ids) < 2 {
		return nil
	}
	withBackup, unsynced := 0, 0
	for _, b := range cur {
		if b.LocalBackup != "" {
			withBackup++
			if !b.Synced {
				unsynced++
			}
		}
	}
	target := Targets(withBackup, eligible)
	over := func(id string) bool {
		return float64(t.backups[id]) > float64(target[id])*(1+tolerance)+1
	}
	for i, b := range cur {
		bi := uint32(i)
		if maxMoves > 0 && unsynced >= maxMoves {
			break
		}
		if b.Handoff || b.LocalBackup == "" || !over(b.LocalBackup) {
			continue
		}
		best, bestPair, bestRank := "", 0.0, uint64(0)
		for _, id := range t.ids {
			if id == b.Primary || t.backups[id] >= target[id] {
				continue
			}
			pair := float64(t.pairs[[2]string{b.Primary, id}]) / t.weight[id]
			r := rank(bi, id)
			if best == "" || pair < bestPair || (pair == bestPair && r > bestRank) {
				best, bestPair, bestRank = id, pair, r
			}
		}
		if best == "" {
			continue
		}
		t.set(bi, Bucket{Primary: b.Primary, LocalBackup: best})
		unsynced++
	}
	return t.result(cur)
}

// Flip completes the handoffs whose target has synced: the backup becomes
// primary and the old primary its backup (it holds every connection, so the
// bucket stays synced). If the old primary is not eligible (draining, failed)
// a new backup is chosen instead, not yet synced.
func Flip(cur []Bucket, eligible []Member) []Change {
	t := newTally(cur, eligible)
	for i, b := range cur {
		if !b.Handoff || !b.Synced || b.LocalBackup == "" {
			continue
		}
		bi := uint32(i)
		nb := Bucket{Primary: b.LocalBackup, LocalBackup: b.Primary, Synced: true}
		if !t.eligible(b.Primary) {
			nb.LocalBackup, nb.Synced = "", false
			t.set(bi, nb)
			nb.LocalBackup = t.pickBackup(bi, nb.Primary)
		}
		t.set(bi, nb)
	}
	return t.result(cur)
}

// Counts returns how many buckets each member is primary and local backup
// for (handoffs counted as they are now, not as they will be).
func Counts(cur []Bucket) (primaries, backups map[string]int) {
	primaries, backups = map[string]int{}, map[string]int{}
	for _, b := range cur {
		if b.Primary != "" {
			primaries[b.Primary]++
		}
		if b.LocalBackup != "" {
			backups[b.LocalBackup]++
		}
	}
	return primaries, backups
}

// Imbalance is the largest number of primaries per unit of weight of any
// member over the mean: 1.0 is a perfect spread. Primaries held by members
// not in members are left out; 0 if members is empty or nobody holds one.
func Imbalance(cur []Bucket, members []Member) float64 {
	primaries, _ := Counts(cur)
	var total, weight, worst float64
	for _, m := range members {
		w := float64(max(m.Weight, 1))
		p := float64(primaries[m.ID])
		total += p
		weight += w
		worst = max(worst, p/w)
	}
	if total == 0 {
		return 0
	}
	return worst / (total / weight)
}
