package repl

import (
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// A primary decides on a published event with the state machine as it is
// now, not as replan last read it: replan runs on its own goroutine and can
// lag a flip, while the bucket's new primary acts as soon as this member has
// applied it; and a lease ends with no change in the state machine.
func TestPublish_DecidesOnTheCurrentStateMachine(t *testing.T) {
	const buckets = 4096
	v := &changingView{staticView: newStaticView("a", nil, buckets)} // every bucket: primary a, backup b, epoch 10
	v.ch = make(chan struct{})
	v.acting.Store(true)
	r := New(Config{View: v, BucketCount: buckets})
	r.replan()

	keys := distinctBuckets(t, 3, buckets)
	publish := func(k fsm.Key, state string) *pb.PublishResponse {
		t.Helper()
		return r.publishBatch(&pb.PublishRequest{Seq: 1, Events: []*pb.ConnEvent{{
			Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: &pb.ConnState{Key: k.Proto(), Blob: []byte(state)}}}})
	}
	version := func(k fsm.Key) uint64 {
		rec, _ := r.table.Lookup(k.Bucket(buckets), k)
		return rec.Version
	}
	refused := func(what string, resp *pb.PublishResponse, k fsm.Key, wantVersion uint64) {
		t.Helper()
		if resp.Accepted != 0 || resp.Refused != 1 || resp.Errors[0].Code != int32(codes.FailedPrecondition) {
			t.Fatalf("%s: answer %v; want the event refused as FailedPrecondition", what, resp)
		}
		if got := version(k); got != wantVersion {
			t.Fatalf("%s: the table holds version %d, want %d (the refused event taken)", what, got, wantVersion)
		}
	}
	if resp := publish(keys[0], "s"); resp.Accepted != 1 || version(keys[0]) == 0 {
		t.Fatalf("an event of a bucket a is primary of: answer %v, version %d", resp, version(keys[0]))
	}

	// b takes bucket 0 over at epoch 20; replan has not run.
	v.set(keys[0].Bucket(buckets), fsm.Assignment{Primary: "b", LocalBackup: "a", Epoch: 20}, true)
	refused("bucket handed over, replan not run", publish(keys[0], "s2"), keys[0], version(keys[0]))

	// The flip comes after the decision (made on the same generation),
	// before the event is applied under the bucket's lock.
	r.replan()
	v.onGeneration = func() { // the decision's read of the generation
		v.onGeneration = func() { v.set(keys[1].Bucket(buckets), fsm.Assignment{Primary: "b", Epoch: 30}, true) }
	}
	refused("bucket handed over between decision and apply", publish(keys[1], "s"), keys[1], 0)

	// The lease ends: nothing changes in the state machine.
	r.replan()
	v.acting.Store(false)
	refused("lease ended, replan not run", publish(keys[2], "s"), keys[2], 0)
	v.acting.Store(true)
	if resp := publish(keys[2], "s"); resp.Accepted != 1 || version(keys[2]) == 0 {
		t.Fatalf("lease back: answer %v, version %d", resp, version(keys[2]))
	}
}

// lapsingView is a member whose lease ends after its first reads.
type lapsingView struct {
	*changingView
	reads, lapseAfter int
}

func (v *lapsingView) Acting() bool {
	v.reads++
	return v.reads <= v.lapseAfter
}

// A long batch reads the lease again as it goes: one that ends while the
// batch is applied stops this member taking its events.
func TestPublish_LongBatchReadsTheLeaseAgain(t *testing.T) {
	const buckets = 16
	v := &lapsingView{changingView: &changingView{staticView: newStaticView("a", nil, buckets)}}
	v.ch = make(chan struct{})
	v.lapseAfter = 2 // replan's read, then the batch's first
	r := New(Config{View: v, BucketCount: buckets})
	r.replan()
	evs := make([]*pb.ConnEvent, leaseReadEvery+1)
	for i := range evs {
		evs[i] = &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: &pb.ConnState{Key: testKey(t, i).Proto()}}
	}
	resp := r.publishBatch(&pb.PublishRequest{Seq: 1, Events: evs})
	if resp.Accepted != leaseReadEvery || resp.Refused != 1 || resp.Errors[0].Index != leaseReadEvery ||
		resp.Errors[0].Code != int32(codes.FailedPrecondition) {
		t.Fatalf("lease ended after the batch's first read: answer accepted %d, refused %d (%v); want the first %d taken and the last refused",
			resp.Accepted, resp.Refused, resp.Errors, leaseReadEvery)
	}
}

// distinctBuckets returns n test keys of n different buckets.
func distinctBuckets(t *testing.T, n int, buckets uint32) []fsm.Key {
	t.Helper()
	var keys []fsm.Key
	seen := map[uint32]bool{}
	for i := 0; len(keys) < n; i++ {
		k := testKey(t, i)
		if b := k.Bucket(buckets); !seen[b] {
			seen[b] = true
			keys = append(keys, k)
		}
	}
	return keys
}
