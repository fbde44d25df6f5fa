package integration

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/cluster"
)

// mirrorCopy is a firewall's side of a mirror stream (WatchActivations with
// mirror set): the copy of each bucket the member is not active for, and
// what the copy of a bucket held when its activation arrived.
type mirrorCopy struct {
	t        testing.TB
	mu       sync.Mutex
	buckets  map[uint32]map[fsm.Key]byte // key -> blob's first byte
	atActive map[uint32]map[fsm.Key]byte // copy of the bucket at its activation
	states   int                         // states carried by activations (none expected)
	caughtUp chan struct{}
	err      chan error
}

func watchMirror(t testing.TB, ctx context.Context, m *cluster.Member) *mirrorCopy {
	st, err := pb.NewDataPlaneServiceClient(dial(t, m.Addr())).WatchActivations(ctx, &pb.WatchActivationsRequest{Mirror: true})
	if err != nil {
		t.Fatal(err)
	}
	mc := &mirrorCopy{t: t, buckets: map[uint32]map[fsm.Key]byte{}, atActive: map[uint32]map[fsm.Key]byte{},
		caughtUp: make(chan struct{}), err: make(chan error, 1)}
	go func() {
		for {
			msg, err := st.Recv()
			if err != nil {
				mc.err <- err
				return
			}
			if e := mc.apply(msg); e != nil {
				mc.err <- e
				return
			}
		}
	}()
	return mc
}

func (mc *mirrorCopy) apply(msg *pb.WatchActivationsResponse) error {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	b := msg.Bucket
	switch {
	case msg.CaughtUp:
		close(mc.caughtUp)
	case msg.Mirror:
		if msg.Replace || mc.buckets[b] == nil {
			mc.buckets[b] = map[fsm.Key]byte{}
		}
		for _, s := range msg.States {
			k, err := fsm.ParseKey(s.Key, "states.key")
			if err != nil || len(s.Blob) != 1 {
				return fmt.Errorf("bucket %d: a mirrored state with key error %v and a blob of %d bytes", b, err, len(s.Blob))
			}
			mc.buckets[b][k] = s.Blob[0]
		}
		for _, ck := range msg.Closed {
			k, err := fsm.ParseKey(ck, "closed")
			if err != nil {
				return err
			}
			delete(mc.buckets[b], k)
		}
	case msg.Active:
		mc.states += len(msg.States)
		mc.atActive[b] = maps.Clone(mc.buckets[b])
	}
	return nil
}

// diff says how copy differs from want (nil: the same).
func diff(b uint32, copy, want map[fsm.Key]byte) error {
	for k, v := range want {
		if got, ok := copy[k]; !ok || got != v {
			return fmt.Errorf("bucket %d: %s is %d in the copy (held %v), want %d", b, k, got, ok, v)
		}
	}
	for k := range copy {
		if _, ok := want[k]; !ok {
			return fmt.Errorf("bucket %d: the copy holds %s, which is closed", b, k)
		}
	}
	return nil
}

// TestCluster_MirrorHoldsStatesBeforeActivation: a firewall watching with
// mirror set holds the states its member backs up as they are replicated
// (created, updated, closed), before any failover; when the primary stops,
// the heir's activations carry no states, and the copy the firewall holds
// at each activation is exactly the bucket's connections.
func TestCluster_MirrorHoldsStatesBeforeActivation(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	victim, heir, idx, keys := backedUpBy(t, c, 600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mc := watchMirror(t, ctx, heir)
	select {
	case <-mc.caughtUp:
	case err := <-mc.err:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("the mirror stream did not catch up in 10 s")
	}

	// Create all, update every second one, close every third.
	p := newPublisher(t, c)
	var updated, closed []int
	for n, i := range idx {
		if n%2 == 0 {
			updated = append(updated, i)
		}
		if n%3 == 0 {
			closed = append(closed, i)
		}
	}
	for _, step := range []struct {
		idx []int
		v   byte
		typ pb.ConnEventType
	}{{idx, 3, pb.ConnEventType_CONN_EVENT_TYPE_CREATED}, {updated, 4, pb.ConnEventType_CONN_EVENT_TYPE_UPDATED}, {closed, 4, pb.ConnEventType_CONN_EVENT_TYPE_CLOSED}} {
		if r := p.publish(step.idx, step.v, step.typ); r != 0 {
			t.Fatalf("%v: %d refused", step.typ, r)
		}
	}
	p.waitReplicated(10 * time.Second)
	want := map[uint32]map[fsm.Key]byte{}
	for b := range keys {
		want[b] = map[fsm.Key]byte{}
	}
	for n, i := range idx {
		k, b := bucketOf(t, conn(i, 0))
		switch {
		case n%3 == 0:
		case n%2 == 0:
			want[b][k] = 4
		default:
			want[b][k] = 3
		}
	}

	// Before any failover: the copy follows replication.
	cluster.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		mc.mu.Lock()
		defer mc.mu.Unlock()
		for b, w := range want {
			if err := diff(b, mc.buckets[b], w); err != nil {
				return fmt.Errorf("before the failover: %w", err)
			}
		}
		return nil
	})

	c.Stop(victim)
	cluster.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		select {
		case err := <-mc.err:
			t.Fatalf("the mirror stream ended: %v", err)
		default:
		}
		mc.mu.Lock()
		defer mc.mu.Unlock()
		for b := range want {
			if _, ok := mc.atActive[b]; !ok {
				return fmt.Errorf("bucket %d not active at %s yet", b, heir.ID)
			}
		}
		return nil
	})
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.states != 0 {
		t.Fatalf("activations on a mirror stream carried %d states, want none", mc.states)
	}
	for b, w := range want {
		if err := diff(b, mc.atActive[b], w); err != nil {
			t.Fatalf("at activation: %v", err)
		}
	}
}
