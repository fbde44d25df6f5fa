// Package placement decides which member holds each bucket's roles: primary
// and local backup (the remote backup belongs to another site and is left as
// it is). Its functions are pure: no I/O, no clocks, no randomness, so the
// same inputs always give the same plan. The site leader calls them with the
// state machine's bucket table and proposes the result as one Raft entry; the
// state machine checks each change against the revision it was planned from.
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
//     from members above their share to members below it, and swaps primary
//     and backup outright where the backup is a receiver and synced.
//   - Moves are make-before-break: the receiving member becomes the bucket's
//     Incoming member and gets a full sync while primary and local backup keep
//     their roles, so the bucket never has fewer synced copies than before.
//     Once the receiver has synced, Flip hands it the role (primary or local
//     backup) and the member it replaces drops its copy.
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
	// Incoming is a member receiving a full sync to take a role: primary if
	// IncomingPrimary, else local backup. "" when no move is under way.
	Incoming        string
	IncomingSynced  bool
	IncomingPrimary bool
}

// moving reports whether a move is under way.
func (b Bucket) moving() bool { return b.Incoming != "" }

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
// plan is built. Moves under way count as done.
type tally struct {
	buckets   []Bucket
	weight    map[string]float64 // eligible members only
	ids       []string           // eligible members, sorted
	primaries map[string]int
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

// future is who will be primary and local backup once a move completes.
func future(b Bucket) (primary, backup string) {
	switch {
	case b.Incoming == "":
		return b.Primary, b.LocalBackup
	case b.IncomingPrimary:
		if b.LocalBackup == b.Incoming { // a swap
			return b.Incoming, b.Primary
		}
		return b.Incoming, b.LocalBackup
	default:
		return b.Primary, b.Incoming
	}
}

func (t *tally) count(b Bucket, d int) {
	p, lb := future(b)
	if p != "" {
		t.primaries[p] += d
	}
	if lb != "" {
		t.backups[lb] += d
		t.pairs[[2]string{p, lb}] += d
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

// pickPrimary returns the eligible member not in skip with the fewest
// primaries per unit of weight, or "" if there is none.
func (t *tally) pickPrimary(bucket uint32, skip ...string) string {
	best, bestLoad, bestRank := "", 0.0, uint64(0)
	for _, id := range t.ids {
		if slices.Contains(skip, id) {
			continue
		}
		load := float64(t.primaries[id]+1) / t.weight[id]
		r := rank(bucket, id)
		if best == "" || load < bestLoad || (load == bestLoad && r > bestRank) {
			best, bestLoad, bestRank = id, load, r
		}
	}
	return best
}

// pickBackup returns the eligible member not in skip (the primary first)
// that holds the fewest backups of the primary's buckets, then the fewest
// backups overall (both per unit of weight); "" if there is none.
func (t *tally) pickBackup(bucket uint32, primary string, skip ...string) string {
	best, bestRank := "", uint64(0)
	var bestPair, bestLoad float64
	for _, id := range t.ids {
		if id == primary || slices.Contains(skip, id) {
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

// copyOf is one member's copy of a bucket.
type copyOf struct {
	id     string
	synced bool
}

// Failover replaces the members in failed. A bucket whose primary failed is
// taken over by its best remaining copy: the synced local backup, else a
// synced incoming member, else an unsynced one; the next remaining copy
// becomes its local backup, or a new member if none is left. A bucket whose
// local backup failed gets its incoming member, or a new member, as backup;
// a move to a failed member is cancelled. A bucket whose new primary had no
// complete copy (or got a primary from scratch) is listed in unsynced: its
// connections were not all backed up. eligible must not contain failed
// members.
func Failover(cur []Bucket, failed map[string]bool, eligible []Member) (changes []Change, unsynced []uint32) {
	t := newTally(cur, eligible)
	for i := range cur {
		b, bi := cur[i], uint32(i)
		if !failed[b.Primary] && !failed[b.LocalBackup] && !failed[b.Incoming] {
			continue
		}
		var copies []copyOf // surviving copies, best first
		if b.LocalBackup != "" && !failed[b.LocalBackup] && b.Synced {
			copies = append(copies, copyOf{b.LocalBackup, true})
		}
		if b.Incoming != "" && !failed[b.Incoming] && b.IncomingSynced {
			copies = append(copies, copyOf{b.Incoming, true})
		}
		if b.LocalBackup != "" && !failed[b.LocalBackup] && !b.Synced {
			copies = append(copies, copyOf{b.LocalBackup, false})
		}
		if b.Incoming != "" && !failed[b.Incoming] && !b.IncomingSynced {
			copies = append(copies, copyOf{b.Incoming, false})
		}
		t.set(bi, Bucket{}) // count it as nobody's while choosing
		var nb Bucket
		if b.Primary != "" && !failed[b.Primary] {
			nb.Primary = b.Primary
		} else if b.Primary != "" {
			if len(copies) == 0 || !copies[0].synced {
				unsynced = append(unsynced, bi)
			}
			if len(copies) > 0 {
				nb.Primary, copies = copies[0].id, copies[1:]
			} else {
				nb.Primary = t.pickPrimary(bi)
			}
		}
		if len(copies) > 0 {
			nb.LocalBackup, nb.Synced = copies[0].id, copies[0].synced
		} else {
			nb.LocalBackup = t.pickBackup(bi, nb.Primary)
		}
		t.set(bi, nb)
	}
	return t.result(cur), unsynced
}

// Assign gives a primary to every bucket that has none, and a local backup
// to every bucket that lacks one. A bucket that gets its first primary has no
// connections yet, so its new backup counts as synced. A local backup that is
// not eligible (draining) is replaced make-before-break: a new member comes
// in for the backup role and takes it once synced. A move to a member that is
// not eligible any more is cancelled.
func Assign(cur []Bucket, eligible []Member) []Change {
	t := newTally(cur, eligible)
	for i := range cur {
		b, bi := cur[i], uint32(i)
		nb := b
		if nb.Incoming != "" && !t.eligible(nb.Incoming) {
			nb.Incoming, nb.IncomingSynced, nb.IncomingPrimary = "", false, false
		}
		switch {
		case nb.Primary == "":
			t.set(bi, Bucket{})
			nb = Bucket{Primary: t.pickPrimary(bi), Synced: true}
			t.set(bi, nb)
			nb.LocalBackup = t.pickBackup(bi, nb.Primary)
		case nb.LocalBackup == "":
			t.set(bi, nb)
			nb.LocalBackup, nb.Synced = t.pickBackup(bi, nb.Primary, nb.Incoming), false
		case !t.eligible(nb.LocalBackup) && nb.Incoming == "":
			t.set(bi, nb)
			if in := t.pickBackup(bi, nb.Primary, nb.LocalBackup); in != "" {
				nb.Incoming, nb.IncomingSynced, nb.IncomingPrimary = in, false, false
			}
		}
		if nb != b {
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

// Rebalance plans moves that bring every eligible member to its share of
// primaries (Targets). Primaries on members that are not eligible (draining)
// all move. Moves under way count as done. A bucket whose local backup is a
// receiver and synced is swapped at once (both copies are complete); any
// other move brings the receiver in as Incoming for the primary role. At
// most maxMoves moves are under way after the plan (0: no limit); buckets
// that must leave a non-eligible member come first. Only buckets of members
// above their share move, and only to members below it, so the number of
// moves is the least that reaches the shares.
func Rebalance(cur []Bucket, eligible []Member, maxMoves int) []Change {
	t := newTally(cur, eligible)
	if len(t.ids) == 0 {
		return nil
	}
	target := Targets(len(cur), eligible)
	inFlight := 0
	for _, b := range cur {
		if b.moving() {
			inFlight++
		}
	}
	room := func() bool { return maxMoves <= 0 || inFlight < maxMoves }
	deficit := func(id string) int { return target[id] - t.primaries[id] }
	excess := func(p string) bool { return p != "" && (!t.eligible(p) || t.primaries[p] > target[p]) }
	// Candidates: buckets not moving, whose primary is above its share; those
	// of non-eligible members first, then in rank order so the buckets that
	// move are spread over the bucket space.
	var cand []uint32
	for i, b := range cur {
		if !b.moving() && excess(b.Primary) {
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
	// First pass: swap with a synced backup below its share: no copy needed.
	for _, bi := range cand {
		b := t.buckets[bi]
		if excess(b.Primary) && b.Synced && t.eligible(b.LocalBackup) && deficit(b.LocalBackup) > 0 {
			nb := Bucket{Primary: b.LocalBackup, LocalBackup: b.Primary, Synced: true}
			if !t.eligible(b.Primary) && room() { // the old primary is leaving: bring a new backup in
				t.set(bi, nb)
				nb.Incoming = t.pickBackup(bi, nb.Primary, nb.LocalBackup)
				if nb.Incoming != "" {
					inFlight++
				}
			}
			t.set(bi, nb)
		}
	}
	// Second pass: bring the receiver furthest below its share (per weight)
	// in as the next primary.
	for _, bi := range cand {
		b := t.buckets[bi]
		if !room() || b.moving() || !excess(b.Primary) || b != cur[bi] {
			continue
		}
		best, bestGap, bestRank := "", 0.0, uint64(0)
		for _, id := range t.ids {
			if id == b.Primary || id == b.LocalBackup || deficit(id) <= 0 {
				continue
			}
			gap := float64(deficit(id)) / t.weight[id]
			r := rank(bi, id)
			if best == "" || gap > bestGap || (gap == bestGap && r > bestRank) {
				best, bestGap, bestRank = id, gap, r
			}
		}
		if best == "" {
			continue
		}
		b.Incoming, b.IncomingSynced, b.IncomingPrimary = best, false, true
		t.set(bi, b)
		inFlight++
	}
	return t.result(cur)
}

// BackupTolerance is the tolerance the leader rebalances local backups with
// (RebalanceBackups): a member may hold up to 5% more than its share, plus one.
const BackupTolerance = 0.05

// RebalanceBackups moves local backups from members holding more than their
// share (Targets over the buckets that have a backup, with a tolerance of
// tolerance x share + 1) to members below it, never onto the bucket's
// primary, preferring the receiver that holds the fewest backups of that
// primary. Moves are make-before-break (the receiver comes in as Incoming for
// the backup role); at most maxMoves moves are under way after the plan (0:
// no limit).
func RebalanceBackups(cur []Bucket, eligible []Member, maxMoves int, tolerance float64) []Change {
	t := newTally(cur, eligible)
	if len(t.ids) < 2 {
		return nil
	}
	withBackup, inFlight := 0, 0
	for _, b := range cur {
		if _, lb := future(b); lb != "" {
			withBackup++
		}
		if b.moving() {
			inFlight++
		}
	}
	target := Targets(withBackup, eligible)
	over := func(id string) bool {
		return float64(t.backups[id]) > float64(target[id])*(1+tolerance)+1
	}
	for i, b := range cur {
		bi := uint32(i)
		if maxMoves > 0 && inFlight >= maxMoves {
			break
		}
		if b.moving() || b.LocalBackup == "" || !over(b.LocalBackup) {
			continue
		}
		best, bestPair, bestRank := "", 0.0, uint64(0)
		for _, id := range t.ids {
			if id == b.Primary || id == b.LocalBackup || t.backups[id] >= target[id] {
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
		b.Incoming, b.IncomingSynced, b.IncomingPrimary = best, false, false
		t.set(bi, b)
		inFlight++
	}
	return t.result(cur)
}

// Flip completes the moves whose incoming member has synced. For the
// primary role the incoming member becomes primary, and the local backup
// stays (or, if it is the incoming member itself or not eligible, the old
// primary becomes the backup; it holds every connection too). For the backup
// role the incoming member becomes the local backup. The member whose role
// was taken drops its copy.
func Flip(cur []Bucket, eligible []Member) []Change {
	t := newTally(cur, eligible)
	for i, b := range cur {
		if !b.moving() || !b.IncomingSynced {
			continue
		}
		bi := uint32(i)
		var nb Bucket
		if b.IncomingPrimary {
			nb = Bucket{Primary: b.Incoming, LocalBackup: b.LocalBackup, Synced: b.Synced}
			if b.LocalBackup == b.Incoming || b.LocalBackup == "" || (!t.eligible(b.LocalBackup) && t.eligible(b.Primary)) ||
				(!b.Synced && t.eligible(b.Primary)) {
				nb.LocalBackup, nb.Synced = b.Primary, true
			}
		} else {
			nb = Bucket{Primary: b.Primary, LocalBackup: b.Incoming, Synced: true}
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
