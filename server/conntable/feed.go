package conntable

import (
	"sync/atomic"

	"github.com/connsync/connsync/fsm"
)

// Feed follows the changes of chosen buckets of a table, for a copy kept
// elsewhere (the firewall's mirror of a member's backups, see
// DataPlaneService.WatchActivations). It does not queue changes: it notes
// which connections changed, each at most once, and Take reads their
// records from the table, so repeated changes of a connection coalesce and
// a slow reader costs memory in proportion to the connections that changed,
// as the replication streams do.
//
// A bucket is followed from Follow (or FollowFrom) until a Take with
// unfollow, or Close. The first Take after Follow returns the whole bucket
// (reset); so does the first Take after the table dropped the bucket. Every change of a followed bucket made before a
// Take is in that Take or an earlier one: the bucket's lock orders them.
// A Feed is used by one goroutine at a time; the table's writers only note
// changes in it.
type Feed struct {
	t     *Table
	dirty []atomic.Bool // bucket -> something to Take
	wake  chan struct{}
}

// follow is one feed's note of one bucket, guarded by the bucket's lock.
type follow struct {
	f     *Feed
	keys  map[fsm.Key]struct{} // changed since the last Take
	reset bool                 // Take returns the whole bucket
}

// NewFeed returns a feed of t that follows no bucket yet. Close it when
// done: a feed left open makes every write of a followed bucket note it.
func (t *Table) NewFeed() *Feed {
	return &Feed{t: t, dirty: make([]atomic.Bool, len(t.buckets)), wake: make(chan struct{}, 1)}
}

// Wake returns a channel that receives when a bucket has changes to Take.
func (f *Feed) Wake() <-chan struct{} { return f.wake }

func (f *Feed) note(b uint32) {
	if !f.dirty[b].Swap(true) {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// find returns f's follow of bk (under bk.mu), or nil.
func (bk *bucket) find(f *Feed) (int, *follow) {
	for i, fl := range bk.follows {
		if fl.f == f {
			return i, fl
		}
	}
	return -1, nil
}

// unfollow removes the follow at index i (under bk.mu).
func (bk *bucket) unfollow(i int) { bk.follows = append(bk.follows[:i], bk.follows[i+1:]...) }

// Follow starts following bucket b, or restarts it: the next Take returns
// the whole bucket.
func (f *Feed) Follow(b uint32) { f.follow(b, true) }

// FollowFrom starts following bucket b as it is now, for a follower that
// holds it: the next Take returns what changes from here on. (Following
// already, it changes nothing.)
func (f *Feed) FollowFrom(b uint32) { f.follow(b, false) }

func (f *Feed) follow(b uint32, reset bool) {
	bk := f.t.bucket(b)
	if bk == nil {
		return
	}
	bk.mu.Lock()
	_, fl := bk.find(f)
	switch {
	case fl == nil:
		bk.follows = append(bk.follows, &follow{f: f, reset: reset})
	case reset:
		fl.keys, fl.reset = nil, true
	}
	bk.mu.Unlock()
	if reset {
		f.note(b)
	}
}

// Change is what a Take returns for one bucket.
type Change struct {
	// Reset: Live is the whole bucket (Gone is empty); otherwise Live and
	// Gone are what changed since the last Take.
	Reset bool
	Live  []Item    // connections held, with their records
	Gone  []fsm.Key // connections no longer held (closed, or held back)
}

// Empty reports whether c changes nothing.
func (c Change) Empty() bool { return !c.Reset && len(c.Live) == 0 && len(c.Gone) == 0 }

// Take returns bucket b's changes since the last Take, and with unfollow
// stops following it in the same step (what changes after that is not
// noted). ok is false if b is not followed.
func (f *Feed) Take(b uint32, unfollow bool) (c Change, ok bool) {
	bk := f.t.bucket(b)
	if bk == nil {
		return c, false
	}
	f.dirty[b].Store(false) // before reading: a change after this notes it again
	bk.mu.Lock()
	defer bk.mu.Unlock()
	i, fl := bk.find(f)
	if fl == nil {
		return c, false
	}
	if fl.reset {
		c.Reset, c.Live = true, bk.snapshot()
	} else {
		for k := range fl.keys {
			if e, ok := bk.live(k); ok && e.vf&flagPending == 0 {
				c.Live = append(c.Live, Item{Key: k, Record: e.record()})
			} else {
				c.Gone = append(c.Gone, k)
			}
		}
	}
	fl.keys, fl.reset = nil, false
	if unfollow {
		bk.unfollow(i)
	}
	return c, true
}

// Dirty calls fn for each bucket with changes to Take, in order from
// bucket from and around, until fn returns false or every bucket was
// looked at once. It returns the bucket after the last one fn was called
// for (from if none), where the next call may start so that every bucket
// gets its turn.
func (f *Feed) Dirty(from uint32, fn func(b uint32) (bool, error)) (uint32, error) {
	n := uint32(len(f.dirty))
	if n == 0 {
		return 0, nil
	}
	from %= n
	for i := range n {
		b := (from + i) % n
		if f.dirty[b].Load() {
			more, err := fn(b)
			if err != nil || !more {
				return (b + 1) % n, err
			}
		}
	}
	return from, nil
}

// Close stops following every bucket.
func (f *Feed) Close() {
	for b := range f.t.buckets {
		bk := &f.t.buckets[b]
		bk.mu.Lock()
		if i, fl := bk.find(f); fl != nil {
			bk.unfollow(i)
		}
		bk.mu.Unlock()
	}
}

// changed notes k's change for every feed following the bucket (under
// bk.mu).
func (bk *bucket) changed(k fsm.Key) {
	for _, fl := range bk.follows {
		if !fl.reset {
			if fl.keys == nil {
				fl.keys = map[fsm.Key]struct{}{}
			}
			fl.keys[k] = struct{}{}
		}
		fl.f.note(bk.idx)
	}
}

// dropped notes that the bucket was emptied (under bk.mu).
func (bk *bucket) dropped() {
	for _, fl := range bk.follows {
		fl.keys, fl.reset = nil, true
		fl.f.note(bk.idx)
	}
}
