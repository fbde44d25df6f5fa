package repl

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// changingView is a member "a" whose bucket map and lease the test sets.
type changingView struct {
	*staticView
	mu     sync.Mutex
	acting atomic.Bool
	gen    atomic.Uint64
	// onGeneration, if set, runs as Generation is called (once cleared).
	onGeneration func()
}

func (v *changingView) Assignments() ([]fsm.Assignment, uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.as, 10
}

func (v *changingView) Assignment(b uint32) (fsm.Assignment, bool) {
	as, _ := v.Assignments()
	if int(b) < len(as) {
		return as[b], true
	}
	return fsm.Assignment{}, false
}

func (v *changingView) Generation() uint64 {
	if f := v.onGeneration; f != nil {
		v.onGeneration = nil
		f()
	}
	return v.gen.Load()
}

func (v *changingView) Watch() (uint64, <-chan struct{}) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return 10, v.ch
}

func (v *changingView) Acting() bool { return v.acting.Load() }

// set changes bucket b's assignment and the lease, and wakes the watchers.
func (v *changingView) set(b uint32, a fsm.Assignment, acting bool) {
	v.mu.Lock()
	as := append([]fsm.Assignment(nil), v.as...)
	as[b] = a
	v.as = as
	v.acting.Store(acting)
	v.gen.Add(1)
	close(v.ch)
	v.ch = make(chan struct{})
	v.mu.Unlock()
}

// streamRecorder is the server side of a WatchActivations stream: it passes
// each message on, as the firewall would decode it.
type streamRecorder struct {
	grpc.ServerStream
	ctx  context.Context
	msgs chan *pb.WatchActivationsResponse
}

func (s *streamRecorder) Context() context.Context { return s.ctx }

func (s *streamRecorder) Send(m *pb.WatchActivationsResponse) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	out := &pb.WatchActivationsResponse{}
	if err := proto.Unmarshal(b, out); err != nil {
		return err
	}
	select {
	case s.msgs <- out:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *streamRecorder) next(t *testing.T) *pb.WatchActivationsResponse {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message from the stream within 10 s")
		return nil
	}
}

// expect reads the next message and checks it: "mirror B N" (replace
// with N states), "change B N" (N states, no replace), "active B E",
// "inactive B", "caught_up".
func (s *streamRecorder) expect(t *testing.T, want string) {
	t.Helper()
	m := s.next(t)
	var got string
	switch {
	case m.CaughtUp:
		got = "caught_up"
	case m.Mirror && m.Replace:
		got = fmt.Sprintf("mirror %d %d", m.Bucket, len(m.States))
	case m.Mirror:
		got = fmt.Sprintf("change %d %d", m.Bucket, len(m.States))
	case m.Active:
		got = fmt.Sprintf("active %d %d", m.Bucket, m.Epoch)
		if len(m.States) > 0 {
			got += fmt.Sprintf(" with %d states", len(m.States))
		}
	default:
		got = fmt.Sprintf("inactive %d", m.Bucket)
	}
	if got != want {
		t.Fatalf("got %q, want %q (%v)", got, want, m)
	}
}

// A lease that lapses for a moment costs the mirror nothing: the bucket is
// active again with no states sent. When the bucket goes to another member,
// the firewall's copy is replaced with the table's, and changes follow.
func TestWatchMirrored_LapseKeepsStatesLossReplaces(t *testing.T) {
	v := &changingView{staticView: newStaticView("a", nil, 4)}
	own := fsm.Assignment{Primary: "a", LocalBackup: "c", BackupSynced: true, Epoch: 5, Since: 5}
	v.as[0] = own
	v.as[1] = fsm.Assignment{Primary: "c", LocalBackup: "a", BackupSynced: true, Epoch: 6, Since: 6}
	v.as[2] = fsm.Assignment{Primary: "c", LocalBackup: "d", BackupSynced: true, Epoch: 6, Since: 6}
	v.as[3] = v.as[2]
	v.acting.Store(true)
	r := New(Config{View: v, BucketCount: 4})
	for i := range 3 {
		r.table.Apply(0, testKey(t, i), conntable.Record{Version: 1, State: "\x30\x01"}, 0)
	}
	for i := 3; i < 5; i++ {
		r.table.Apply(1, testKey(t, i), conntable.Record{Version: 1, State: "\x30\x01"}, 0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st := &streamRecorder{ctx: ctx, msgs: make(chan *pb.WatchActivationsResponse, 100)}
	done := make(chan error, 1)
	go func() { done <- r.WatchActivations(&pb.WatchActivationsRequest{Mirror: true}, st) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Error(err)
		}
	}()
	st.expect(t, "mirror 0 3")
	st.expect(t, "active 0 5")
	st.expect(t, "mirror 1 2")
	st.expect(t, "caught_up")

	// The lease lapses and comes back: no state travels.
	v.set(0, own, false)
	st.expect(t, "inactive 0")
	v.set(0, own, true)
	st.expect(t, "active 0 5")

	// It lapses, and the bucket goes to c: the copy becomes the table's.
	v.set(0, own, false)
	st.expect(t, "inactive 0")
	lost := fsm.Assignment{Primary: "c", LocalBackup: "a", BackupSynced: true, Epoch: 9, Since: 9}
	v.set(0, lost, true)
	st.expect(t, "mirror 0 3")
	r.table.Apply(0, testKey(t, 7), conntable.Record{Version: 2, State: "\x30\x01"}, 0) // c's record, replicated
	st.expect(t, "change 0 1")

	// And back to a at a new takeover: the copy is current, the activation
	// carries nothing.
	v.set(0, fsm.Assignment{Primary: "a", LocalBackup: "c", Epoch: 12, Since: 12}, true)
	st.expect(t, "active 0 12")
}
