package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// watchStream is a WatchAssignments server stream that hands what is sent
// to the test.
type watchStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent chan *pb.WatchAssignmentsResponse
}

func (w *watchStream) Context() context.Context { return w.ctx }
func (w *watchStream) Send(r *pb.WatchAssignmentsResponse) error {
	w.sent <- r
	return nil
}

// TestWatchAssignments_SiteInitialisedAfterWatchBegan: a watch opened on a
// member whose site is not initialised yet gets an empty full map; when the
// site's buckets then appear, it must get them as a full map (a watcher
// drops changes to buckets its map lacks: the other site's link did, and
// never synced a remote copy).
func TestWatchAssignments_SiteInitialisedAfterWatchBegan(t *testing.T) {
	f := fsm.New()
	s := &Server{fsm: f, stop: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &watchStream{ctx: ctx, sent: make(chan *pb.WatchAssignmentsResponse, 16)}
	done := make(chan error, 1)
	go func() { done <- (&assignmentService{s: s}).WatchAssignments(&pb.WatchAssignmentsRequest{}, st) }()
	next := func() *pb.WatchAssignmentsResponse {
		t.Helper()
		select {
		case r := <-st.sent:
			return r
		case err := <-done:
			t.Fatalf("the watch ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("nothing sent within 10s")
		}
		return nil
	}
	if r := next(); !r.FullMap || len(r.Assignments) != 0 {
		t.Fatalf("first answer before the site exists: full %v with %d buckets, want an empty full map", r.FullMap, len(r.Assignments))
	}
	// The site is initialised, then every bucket changes (an activation:
	// each gets the entry's index as epoch and revision).
	f.ApplyEntry(1, &ipb.Entry{TimeUnixNano: 1, Proposals: []*ipb.Proposal{{Ops: []*ipb.Op{initSiteOp("b", 64, true)}}}})
	f.ApplyEntry(2, &ipb.Entry{TimeUnixNano: 2, Proposals: []*ipb.Proposal{{Ops: []*ipb.Op{setSiteModeOp(false, "test", 1)}}}})
	r := next()
	for len(r.Assignments) == 0 && !r.FullMap { // the initialisation alone changed no bucket's revision
		r = next()
	}
	if !r.FullMap || len(r.Assignments) != 64 {
		t.Fatalf("after the site was initialised: full %v with %d buckets, want a full map of 64", r.FullMap, len(r.Assignments))
	}
	for i, a := range r.Assignments {
		if a.Bucket != uint32(i) {
			t.Fatalf("full map entry %d is bucket %d", i, a.Bucket)
		}
	}
}
