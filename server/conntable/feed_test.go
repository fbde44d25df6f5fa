package conntable

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/connsync/connsync/fsm"
)

// copyOf is a follower's copy of one bucket, kept from Takes.
type copyOf map[fsm.Key]string

func (c copyOf) apply(ch Change) copyOf {
	if ch.Reset {
		c = copyOf{}
	}
	for _, it := range ch.Live {
		c[it.Key] = it.State
	}
	for _, k := range ch.Gone {
		delete(c, k)
	}
	return c
}

func mustTake(t *testing.T, f *Feed, b uint32, unfollow bool) Change {
	t.Helper()
	c, ok := f.Take(b, unfollow)
	if !ok {
		t.Fatalf("bucket %d is not followed", b)
	}
	return c
}

func TestFeed_ResetThenChangesCoalesced(t *testing.T) {
	tb := New(4)
	tb.Apply(1, key(t, 1), rec(1, "a1"), 0)
	tb.Apply(1, key(t, 2), rec(1, "b1"), 0)
	tb.Update(1, key(t, 3), Record{State: "held", Pending: true}, 0, 0)
	f := tb.NewFeed()
	defer f.Close()
	if _, ok := f.Take(1, false); ok {
		t.Fatal("Take of a bucket not followed")
	}
	f.Follow(1)
	select {
	case <-f.Wake():
	default:
		t.Fatal("Follow did not wake the feed")
	}
	c := mustTake(t, f, 1, false)
	if !c.Reset || len(c.Live) != 2 || len(c.Gone) != 0 {
		t.Fatalf("first Take: reset %v, %d live, %d gone; want the bucket's 2 connections not held back", c.Reset, len(c.Live), len(c.Gone))
	}
	if c := mustTake(t, f, 1, false); !c.Empty() {
		t.Fatalf("second Take with nothing changed: %+v", c)
	}
	// Three writes of one connection, a close, a release: one item each.
	tb.Apply(1, key(t, 1), rec(2, "a2"), 0)
	tb.Apply(1, key(t, 1), rec(3, "a3"), 0)
	tb.Apply(1, key(t, 2), Record{Version: 2, Deleted: true}, 0)
	tb.Release(1, key(t, 3))
	tb.Apply(2, key(t, 4), rec(1, "other bucket"), 0)
	var dirty []uint32
	f.Dirty(3, func(b uint32) (bool, error) { dirty = append(dirty, b); return true, nil })
	if len(dirty) != 1 || dirty[0] != 1 {
		t.Fatalf("dirty buckets %v, want [1] (bucket 2 is not followed)", dirty)
	}
	c = mustTake(t, f, 1, false)
	got := copyOf{}.apply(c)
	if c.Reset || len(c.Live) != 2 || got[key(t, 1)] != "a3" || got[key(t, 3)] != "held" || len(c.Gone) != 1 || c.Gone[0] != key(t, 2) {
		t.Fatalf("changes: reset %v, live %v, gone %v", c.Reset, got, c.Gone)
	}
}

func TestFeed_DropResetsAndUnfollowStops(t *testing.T) {
	tb := New(2)
	f := tb.NewFeed()
	defer f.Close()
	f.Follow(0)
	tb.Apply(0, key(t, 1), rec(1, "a"), 0)
	if c := mustTake(t, f, 0, false); !c.Reset || len(c.Live) != 1 {
		t.Fatalf("first Take: %+v", c)
	}
	tb.Drop(0)
	if c := mustTake(t, f, 0, false); !c.Reset || len(c.Live) != 0 {
		t.Fatalf("Take after a drop: reset %v with %d live, want an empty reset", c.Reset, len(c.Live))
	}
	tb.Apply(0, key(t, 2), rec(1, "b"), 0)
	if c := mustTake(t, f, 0, true); c.Reset || len(c.Live) != 1 {
		t.Fatalf("Take with unfollow: %+v", c)
	}
	tb.Apply(0, key(t, 3), rec(1, "c"), 0)
	if _, ok := f.Take(0, false); ok {
		t.Fatal("bucket still followed after Take with unfollow")
	}
	f.Follow(0) // followed again: the whole bucket
	if c := mustTake(t, f, 0, false); !c.Reset || len(c.Live) != 2 {
		t.Fatalf("Take after following again: reset %v with %d live, want 2", c.Reset, len(c.Live))
	}
	f.Close()
	if len(tb.buckets[0].follows) != 0 {
		t.Fatal("Close left the feed following")
	}
}

// Writers change a bucket while a follower takes its changes: once the
// writers stop, one more Take makes the copy equal to the table.
func TestFeed_CopyConvergesUnderConcurrentWrites(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	tb := New(3)
	f := tb.NewFeed()
	defer f.Close()
	for b := range uint32(3) {
		f.Follow(b)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for range 20000 {
				b, k := uint32(rng.IntN(3)), key(t, rng.IntN(300))
				switch rng.IntN(10) {
				case 0:
					tb.Update(b, k, Record{Deleted: true}, 0, 0)
				case 1:
					tb.Update(b, k, Record{State: "held", Pending: true}, 0, 0)
				case 2:
					tb.Release(b, k)
				case 3:
					if rng.IntN(50) == 0 {
						tb.Drop(b)
					}
				default:
					tb.Update(b, k, Record{State: string(rune('a' + rng.IntN(26)))}, 0, 0)
				}
			}
		}()
	}
	copies := make([]copyOf, 3)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var next uint32
	takeAll := func() { // two buckets at a time, taking turns
		n := 0
		next, _ = f.Dirty(next, func(b uint32) (bool, error) {
			copies[b] = copies[b].apply(mustTake(t, f, b, false))
			n++
			return n < 2, nil
		})
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-f.Wake():
		}
		takeAll()
	}
	for range 2 {
		takeAll()
	}
	for b := range uint32(3) {
		want := copyOf{}.apply(Change{Reset: true, Live: tb.Snapshot(b)})
		if len(want) != len(copies[b]) {
			t.Fatalf("bucket %d: copy has %d connections, table %d", b, len(copies[b]), len(want))
		}
		for k, s := range want {
			if copies[b][k] != s {
				t.Fatalf("bucket %d: %s is %q in the copy, %q in the table", b, k, copies[b][k], s)
			}
		}
	}
}
