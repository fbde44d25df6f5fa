// Package conntable is a member's connection table: the states of the
// connections of every bucket it is primary for or backs up, indexed by
// bucket. Each state carries the version the bucket's primary gave it, and
// a record is applied only if its version is newer than what the table
// holds, so a full sync and the deltas flowing meanwhile commute: the order
// in which they arrive does not matter. A delete leaves a tombstone with its
// version, so a stale upsert that arrives after it cannot bring the
// connection back; tombstones are purged once no full sync could still be
// carrying an older state (Purge).
//
// The table stores a state as the encoded connsync.v1.ConnState without its
// key (the map key is the canonical key; Reversed restores the direction the
// primary's firewall gave it). Keys of at most 16 bytes (IPv4 with a zone of
// at most one byte) are stored as fixed arrays, and version and flags share
// one word, so a backed-up connection costs about 150 bytes
// (BenchmarkTable_BytesPerConn). All methods may be called from any
// goroutine; each bucket has its own lock, so work on different buckets does
// not contend.
package conntable

import (
	"sync"

	"github.com/connsync/connsync/fsm"
)

// Record is one connection's state at a version.
type Record struct {
	Version uint64
	// State is the encoded ConnState without its key; "" for a delete.
	State string
	// Reversed: the firewall's key runs the other way from the canonical key.
	Reversed bool
	// Deleted: the connection was closed at Version.
	Deleted bool
	// Pending: the primary holds it back until its delay has passed (see
	// package repl); never set on a backup.
	Pending bool
}

// Item is a record with its key.
type Item struct {
	Key fsm.Key
	Record
}

// entry packs version and flags into one word: vf = version<<2 | flags.
type entry struct {
	vf    uint64
	state string
}

const (
	flagReversed uint64 = 1 << iota
	flagPending
	flagBits = 2
)

// MaxVersion is the largest version a record may carry.
const MaxVersion = 1<<(64-flagBits) - 1

func (e entry) version() uint64 { return e.vf >> flagBits }

func (e entry) record() Record {
	return Record{Version: e.version(), State: e.state, Reversed: e.vf&flagReversed != 0, Pending: e.vf&flagPending != 0}
}

// smallKey is a key of at most 16 bytes, zero-padded (a key's encoding
// starts with its family and zone length, so the padding is unambiguous).
type smallKey [16]byte

func toSmall(k fsm.Key) (smallKey, bool) {
	var s smallKey
	if len(k) > len(s) {
		return s, false
	}
	copy(s[:], k)
	return s, true
}

// keyOf recovers the key of a small key.
func (s smallKey) keyOf() fsm.Key {
	alen := 4
	if s[0] == 6 {
		alen = 16
	}
	return fsm.Key(s[:3+int(s[2])+2*(alen+2)])
}

type tombstone struct {
	version uint64
	at      int64 // when it was made, Unix nanoseconds
}

type bucket struct {
	mu    sync.Mutex
	small map[smallKey]entry // live connections with short keys
	large map[fsm.Key]entry  // live connections with other keys
	tombs map[fsm.Key]tombstone

	idx     uint32    // the bucket's number
	follows []*follow // feeds following the bucket (feed.go)
}

func (bk *bucket) live(k fsm.Key) (entry, bool) {
	if s, ok := toSmall(k); ok {
		e, ok := bk.small[s]
		return e, ok
	}
	e, ok := bk.large[k]
	return e, ok
}

func (bk *bucket) setLive(k fsm.Key, e entry) {
	if s, ok := toSmall(k); ok {
		if bk.small == nil {
			bk.small = map[smallKey]entry{}
		}
		bk.small[s] = e
		return
	}
	if bk.large == nil {
		bk.large = map[fsm.Key]entry{}
	}
	bk.large[k] = e
}

func (bk *bucket) deleteLive(k fsm.Key) {
	if s, ok := toSmall(k); ok {
		delete(bk.small, s)
		return
	}
	delete(bk.large, k)
}

// each calls fn for every live connection of the bucket.
func (bk *bucket) each(fn func(fsm.Key, entry)) {
	for s, e := range bk.small {
		fn(s.keyOf(), e)
	}
	for k, e := range bk.large {
		fn(k, e)
	}
}

// Table is a connection table for a site of n buckets.
type Table struct {
	buckets []bucket
}

// New returns an empty table for n buckets.
func New(n uint32) *Table {
	t := &Table{buckets: make([]bucket, n)}
	for i := range t.buckets {
		t.buckets[i].idx = uint32(i)
	}
	return t
}

// Buckets returns the number of buckets.
func (t *Table) Buckets() uint32 { return uint32(len(t.buckets)) }

func (t *Table) bucket(b uint32) *bucket {
	if b >= uint32(len(t.buckets)) {
		return nil
	}
	return &t.buckets[b]
}

// current returns the version the bucket holds for k (live or tombstone).
func (bk *bucket) current(k fsm.Key) (uint64, bool) {
	if e, ok := bk.live(k); ok {
		return e.version(), true
	}
	if ts, ok := bk.tombs[k]; ok {
		return ts.version, true
	}
	return 0, false
}

// Apply applies r to k in bucket b if r.Version is newer than what the
// table holds, and reports whether it did. now (Unix nanoseconds) stamps a
// tombstone.
func (t *Table) Apply(b uint32, k fsm.Key, r Record, now int64) bool {
	applied, _ := t.ApplyIf(b, k, r, now, nil)
	return applied
}

// ApplyIf is Apply made only if current (if not nil), called under the
// bucket's lock, reports true; held is what current reported. A caller that
// decided to apply r on what it read of the state machine passes a check
// that this is still current: the decision and the apply then come both
// before, or both after, anything that reads the bucket under its lock once
// the state machine changed (an activation reading a new primary's states).
func (t *Table) ApplyIf(b uint32, k fsm.Key, r Record, now int64, current func() bool) (applied, held bool) {
	bk := t.bucket(b)
	if bk == nil {
		return false, true
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	if current != nil && !current() {
		return false, false
	}
	if v, ok := bk.current(k); (ok && v >= r.Version) || r.Version > MaxVersion {
		return false, true
	}
	bk.put(k, r, now)
	return true, true
}

func (bk *bucket) put(k fsm.Key, r Record, now int64) {
	if len(bk.follows) > 0 {
		bk.changed(k)
	}
	if r.Deleted {
		bk.deleteLive(k)
		if bk.tombs == nil {
			bk.tombs = map[fsm.Key]tombstone{}
		}
		bk.tombs[k] = tombstone{version: r.Version, at: now}
		return
	}
	delete(bk.tombs, k)
	vf := r.Version << flagBits
	if r.Reversed {
		vf |= flagReversed
	}
	if r.Pending {
		vf |= flagPending
	}
	bk.setLive(k, entry{vf: vf, state: r.State})
}

// epochShift: a primary numbers its writes of a bucket from the bucket's
// epoch shifted this far up (VersionFloor).
const epochShift = 24

// VersionFloor is the lowest version a primary of a bucket at epoch gives a
// write. Versions then order the writes of successive primaries: a new
// primary (a higher epoch) writes above anything an earlier one wrote, so a
// member that comes back holding an old primary's writes it never got
// confirmed (a divergent copy) cannot win over the new primary's records
// when they reach it. A primary would have to write one connection 2^24
// times in one epoch to spill into the next epoch's range.
func VersionFloor(epoch uint64) uint64 {
	if epoch > MaxVersion>>epochShift {
		return (MaxVersion >> epochShift) << epochShift // the highest floor: keeps the order, at 2^38 entries
	}
	return epoch << epochShift
}

// Update is the primary's write: it gives k the next version (one above
// whatever the table holds, tombstones included, and at least floor),
// applies r with it and returns the new record and what the table held
// before.
func (t *Table) Update(b uint32, k fsm.Key, r Record, now int64, floor uint64) (cur Record, prev Record, existed bool) {
	return t.UpdateFunc(b, k, now, floor, func(Record, bool) (Record, bool) { return r, true })
}

// UpdateFunc is Update with the new record decided by fn from the live
// record the table holds (existed false if none): one lookup, one write,
// under the bucket's lock. fn returns ok false to change nothing.
func (t *Table) UpdateFunc(b uint32, k fsm.Key, now int64, floor uint64, fn func(prev Record, existed bool) (Record, bool)) (cur Record, prev Record, existed bool) {
	bk := t.bucket(b)
	if bk == nil {
		return Record{}, Record{}, false
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	var v uint64
	if e, ok := bk.live(k); ok {
		prev, existed, v = e.record(), true, e.version()
	} else if ts, ok := bk.tombs[k]; ok {
		v = ts.version
	}
	r, ok := fn(prev, existed)
	if !ok {
		return prev, prev, existed
	}
	r.Version = max(v+1, floor)
	bk.put(k, r, now)
	return r, prev, existed
}

func (bk *bucket) get(k fsm.Key) (Record, bool) {
	if e, ok := bk.live(k); ok {
		return e.record(), true
	}
	return Record{}, false
}

// Get returns k's live record in bucket b (a deleted connection is absent).
func (t *Table) Get(b uint32, k fsm.Key) (Record, bool) {
	bk := t.bucket(b)
	if bk == nil {
		return Record{}, false
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	return bk.get(k)
}

// Lookup returns k's record in bucket b, tombstones included (Deleted set).
func (t *Table) Lookup(b uint32, k fsm.Key) (Record, bool) {
	bk := t.bucket(b)
	if bk == nil {
		return Record{}, false
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	if r, ok := bk.get(k); ok {
		return r, true
	}
	if ts, ok := bk.tombs[k]; ok {
		return Record{Version: ts.version, Deleted: true}, true
	}
	return Record{}, false
}

// Release clears the pending flag of k and reports whether the connection
// is live (and so due to be sent now that its delay has passed).
func (t *Table) Release(b uint32, k fsm.Key) bool {
	bk := t.bucket(b)
	if bk == nil {
		return false
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	e, ok := bk.live(k)
	if !ok {
		return false
	}
	if e.vf&flagPending != 0 {
		e.vf &^= flagPending
		bk.setLive(k, e)
		if len(bk.follows) > 0 {
			bk.changed(k)
		}
	}
	return true
}

// Snapshot returns the live records of bucket b that are not pending, for a
// full sync or an activation.
func (t *Table) Snapshot(b uint32) []Item {
	bk := t.bucket(b)
	if bk == nil {
		return nil
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	return bk.snapshot()
}

func (bk *bucket) snapshot() []Item {
	out := make([]Item, 0, len(bk.small)+len(bk.large))
	bk.each(func(k fsm.Key, e entry) {
		if e.vf&flagPending == 0 {
			out = append(out, Item{Key: k, Record: e.record()})
		}
	})
	return out
}

// Drop forgets bucket b entirely (this member holds no role for it any more).
func (t *Table) Drop(b uint32) { t.DropUnless(b, nil) }

// DropUnless is Drop, unless keep (if not nil), called under the bucket's
// lock, says to keep it: a check made there cannot race with an Apply of the
// bucket, which takes the same lock.
func (t *Table) DropUnless(b uint32, keep func() bool) {
	bk := t.bucket(b)
	if bk == nil {
		return
	}
	bk.mu.Lock()
	if keep == nil || !keep() {
		bk.small, bk.large, bk.tombs = nil, nil, nil
		bk.dropped()
	}
	bk.mu.Unlock()
}

// Purge removes the tombstones of bucket b made before cutoff (Unix
// nanoseconds): call it once no full sync started before cutoff is still
// running for the bucket.
func (t *Table) Purge(b uint32, cutoff int64) int {
	bk := t.bucket(b)
	if bk == nil {
		return 0
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	n := 0
	for k, ts := range bk.tombs {
		if ts.at < cutoff {
			delete(bk.tombs, k)
			n++
		}
	}
	return n
}

// Stats counts what the table holds.
type Stats struct {
	Live, Tombstones int
	StateBytes       int64
}

// Stats counts the whole table, or one bucket's if bucket >= 0.
func (t *Table) Stats(bucket int) Stats {
	var s Stats
	for i := range t.buckets {
		if bucket >= 0 && i != bucket {
			continue
		}
		bk := &t.buckets[i]
		bk.mu.Lock()
		s.Live += len(bk.small) + len(bk.large)
		s.Tombstones += len(bk.tombs)
		bk.each(func(_ fsm.Key, e entry) { s.StateBytes += int64(len(e.state)) })
		bk.mu.Unlock()
	}
	return s
}
