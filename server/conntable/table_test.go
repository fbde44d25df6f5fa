package conntable

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

func key(t testing.TB, i int) fsm.Key {
	t.Helper()
	k, err := fsm.ParseKey(&pb.ConnKey{Protocol: 6, SrcIp: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(),
		SrcPort: uint32(1024 + i%50000), DstIp: "192.0.2.1", DstPort: 443}, "key")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rec(v uint64, s string) Record { return Record{Version: v, State: s} }

func TestTable_AppliesOnlyNewer(t *testing.T) {
	tb := New(16)
	k := key(t, 1)
	if !tb.Apply(3, k, rec(5, "v5"), 0) {
		t.Fatal("first record not applied")
	}
	if tb.Apply(3, k, rec(4, "v4"), 0) || tb.Apply(3, k, rec(5, "again"), 0) {
		t.Fatal("older or equal version applied")
	}
	if r, _ := tb.Get(3, k); r.State != "v5" {
		t.Fatalf("state %q", r.State)
	}
	if !tb.Apply(3, k, rec(7, "v7"), 0) {
		t.Fatal("newer version refused")
	}
	if tb.Apply(99, k, rec(1, "x"), 0) {
		t.Fatal("bucket out of range applied")
	}
	if applied, held := tb.ApplyIf(3, k, rec(8, "v8"), 0, func() bool { return false }); applied || held {
		t.Fatalf("ApplyIf with its check failing: applied %v, held %v", applied, held)
	}
	if applied, held := tb.ApplyIf(3, k, rec(8, "v8"), 0, func() bool { return true }); !applied || !held {
		t.Fatalf("ApplyIf with its check holding: applied %v, held %v", applied, held)
	}
}

// A delete leaves a tombstone: a late, older upsert cannot resurrect the
// connection; a newer one can (the connection was opened again).
func TestTable_Tombstones(t *testing.T) {
	tb := New(16)
	k := key(t, 2)
	tb.Apply(1, k, rec(3, "v3"), 0)
	if !tb.Apply(1, k, Record{Version: 4, Deleted: true}, 100) {
		t.Fatal("delete not applied")
	}
	if _, ok := tb.Get(1, k); ok {
		t.Fatal("deleted connection still live")
	}
	if tb.Apply(1, k, rec(3, "late v3"), 0) {
		t.Fatal("stale upsert resurrected a deleted connection")
	}
	if r, ok := tb.Lookup(1, k); !ok || !r.Deleted || r.Version != 4 {
		t.Fatalf("tombstone %+v, %v", r, ok)
	}
	if n := tb.Purge(1, 50); n != 0 {
		t.Fatalf("purged %d tombstones made after the cutoff", n)
	}
	if n := tb.Purge(1, 101); n != 1 {
		t.Fatalf("purged %d, want 1", n)
	}
	if !tb.Apply(1, k, rec(5, "reopened"), 0) {
		t.Fatal("newer upsert after the tombstone refused")
	}
}

// A full sync and deltas applied in any interleaving end in the same table.
func TestTable_SyncAndDeltasCommute(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	keys := make([]fsm.Key, 50)
	for i := range keys {
		keys[i] = key(t, i)
	}
	// The primary's history: each key gets versions 1..n, some end deleted.
	var history []Item
	final := map[fsm.Key]Record{}
	for _, k := range keys {
		n := 1 + rng.IntN(5)
		for v := 1; v <= n; v++ {
			r := rec(uint64(v), fmt.Sprintf("%s@%d", k, v))
			if v == n && rng.IntN(3) == 0 {
				r = Record{Version: uint64(v), Deleted: true}
			}
			history = append(history, Item{Key: k, Record: r})
			final[k] = r
		}
	}
	for trial := 0; trial < 20; trial++ {
		tb := New(4)
		order := slices.Clone(history)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, it := range order {
			tb.Apply(0, it.Key, it.Record, 0)
		}
		for k, want := range final {
			got, ok := tb.Get(0, k)
			if want.Deleted {
				if ok {
					t.Fatalf("trial %d: %s is live at %d, want deleted at %d", trial, k, got.Version, want.Version)
				}
				continue
			}
			if !ok || got.Version != want.Version || got.State != want.State {
				t.Fatalf("trial %d: %s = %+v, want %+v", trial, k, got, want)
			}
		}
	}
}

func TestTable_UpdateVersionsAndPending(t *testing.T) {
	tb := New(8)
	k := key(t, 3)
	r, _, existed := tb.Update(2, k, Record{State: "a", Pending: true}, 0, 0)
	if r.Version != 1 || existed {
		t.Fatalf("first update %+v existed %v", r, existed)
	}
	if snap := tb.Snapshot(2); len(snap) != 0 {
		t.Fatalf("pending connection in a snapshot: %v", snap)
	}
	if !tb.Release(2, k) {
		t.Fatal("release of a live connection")
	}
	if snap := tb.Snapshot(2); len(snap) != 1 || snap[0].Version != 1 {
		t.Fatalf("snapshot after release: %v", snap)
	}
	r, prev, existed := tb.Update(2, k, Record{Deleted: true}, 5, 0)
	if r.Version != 2 || !existed || prev.Version != 1 {
		t.Fatalf("delete %+v prev %+v", r, prev)
	}
	if tb.Release(2, k) {
		t.Fatal("release of a deleted connection")
	}
	// Versions keep growing past the tombstone.
	if r, _, _ := tb.Update(2, k, Record{State: "b"}, 6, 0); r.Version != 3 {
		t.Fatalf("reopened at %d, want 3", r.Version)
	}
	tb.Drop(2)
	if s := tb.Stats(2); s.Live != 0 || s.Tombstones != 0 {
		t.Fatalf("after drop %+v", s)
	}
}

// BenchmarkTable_BytesPerConn measures the heap a backup's table takes per
// connection at 1M connections with a typical state (TCP, two windows, NAT,
// no blob: ~60 bytes encoded).
//
//	go test ./server/conntable -run XXX -bench BytesPerConn -benchtime 1x
func BenchmarkTable_BytesPerConn(b *testing.B) {
	const n = 1_000_000
	keys := make([]fsm.Key, n)
	for i := range keys {
		keys[i] = key(b, i)
	}
	state := make([]byte, 60)
	// Keys as a backup gets them: each decoded from the wire.
	wire := make([][]byte, n)
	for i, k := range keys {
		wire[i] = []byte(k)
	}
	keys = nil
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		tb := New(fsm.DefaultBucketCount)
		for i, w := range wire {
			k := fsm.Key(w) // one allocation per key, as a receiver makes
			tb.Apply(k.Bucket(fsm.DefaultBucketCount), k, Record{Version: uint64(i + 1), State: string(state)}, 0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/conn")
		runtime.KeepAlive(tb)
	}
	b.ReportMetric(0, "ns/op")
}

// A new primary's writes (a higher epoch) version above what an earlier
// primary wrote, so a divergent old copy cannot win when the new primary's
// record reaches it.
func TestUpdateVersionFloor(t *testing.T) {
	tb := New(4)
	k := key(t, 1)
	old, _, _ := tb.Update(2, k, Record{State: "old primary, many writes"}, 0, VersionFloor(10))
	for range 5 {
		old, _, _ = tb.Update(2, k, Record{State: "old primary, many writes"}, 0, VersionFloor(10))
	}
	other := New(4)
	other.Apply(2, k, Record{State: "as replicated", Version: VersionFloor(10)}, 0)
	cur, _, _ := other.Update(2, k, Record{State: "new primary"}, 0, VersionFloor(11))
	if cur.Version <= old.Version {
		t.Fatalf("new primary's version %d not above the old primary's %d", cur.Version, old.Version)
	}
	if !tb.Apply(2, k, cur, 0) {
		t.Fatal("the new primary's record lost to a divergent old copy")
	}
	if VersionFloor(1<<62) > MaxVersion {
		t.Fatal("floor beyond MaxVersion")
	}
}

// BenchmarkTable_Upsert measures a backup applying one record to its table:
// an update of one of 100k live connections (a new version of its state).
func BenchmarkTable_Upsert(b *testing.B) {
	const n = 100_000
	keys := make([]fsm.Key, n)
	for i := range keys {
		keys[i] = key(b, i)
	}
	tb := New(fsm.DefaultBucketCount)
	state := string(make([]byte, 60))
	for i, k := range keys {
		tb.Apply(k.Bucket(fsm.DefaultBucketCount), k, Record{Version: 1, State: state}, 0)
		_ = i
	}
	b.ReportAllocs()
	v := uint64(1)
	i := 0
	for b.Loop() {
		k := keys[i]
		if i++; i == n {
			i, v = 0, v+1
		}
		tb.Apply(k.Bucket(fsm.DefaultBucketCount), k, Record{Version: v + 1, State: state}, 0)
	}
}
