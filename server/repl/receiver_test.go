package repl

import (
	"testing"

	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// TestReceive_DecidesOnTheCurrentStateMachine: the receiver decides on the
// state machine as replan last read it, which may lag. A record of the
// primary that the state machine has deposed since (this member took the
// bucket over at a newer epoch) is refused as stale, both when the change
// came before the decision and when it came between the decision and the
// apply (under the bucket's lock, where an activation reads the new
// primary's states): it is never applied after those states were read.
func TestReceive_DecidesOnTheCurrentStateMachine(t *testing.T) {
	const buckets = 4096
	v := &changingView{staticView: newStaticView("b", nil, buckets)} // every bucket: primary a, backup b, epoch 10
	v.ch = make(chan struct{})
	r := New(Config{View: v, BucketCount: buckets})
	r.replan()
	at := r.assign.Load()

	k0 := testKey(t, 0)
	b0 := k0.Bucket(buckets)
	var k1 fsm.Key
	for i := 1; ; i++ {
		if k1 = testKey(t, i); k1.Bucket(buckets) != b0 {
			break
		}
	}
	b1 := k1.Bucket(buckets)
	rec := func(b uint32, k fsm.Key, version uint64) *wireRecord {
		return &wireRecord{bucket: b, epoch: 10, key: k, rec: conntable.Record{Version: version, State: "s"}}
	}
	fromA := inbound{from: "a"}
	if ok, _ := r.receive(at, fromA, rec(b0, k0, 1), 1); !ok {
		t.Fatal("a record of the bucket's primary was refused by its backup")
	}

	// b takes bucket b0 over at epoch 20; replan has not run.
	v.set(b0, fsm.Assignment{Primary: "b", Epoch: 20}, true)
	if ok, deposed := r.receive(at, fromA, rec(b0, k0, 2), 2); ok || !deposed {
		t.Fatalf("a record of the deposed primary: taken %v, deposed %v; want refused as deposed", ok, deposed)
	}
	if got, _ := r.table.Lookup(b0, k0); got.Version != 1 {
		t.Fatalf("bucket %d holds version %d after the deposed primary's record, want 1", b0, got.Version)
	}

	// The change comes after the decision (made on the same generation),
	// before the apply.
	r.replan()
	at = r.assign.Load()
	v.onGeneration = func() { v.set(b1, fsm.Assignment{Primary: "b", Epoch: 30}, true) }
	if ok, deposed := r.receive(at, fromA, rec(b1, k1, 1), 3); ok || !deposed {
		t.Fatalf("a record whose primary was deposed between decision and apply: taken %v, deposed %v; want refused as deposed", ok, deposed)
	}
	if _, ok := r.table.Lookup(b1, k1); ok {
		t.Fatalf("bucket %d holds the record of a primary deposed before it was applied", b1)
	}
}
