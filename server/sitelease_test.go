package server

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

func TestLeaseAcceptor(t *testing.T) {
	const d = 500 * time.Millisecond
	a := newLeaseAcceptor(d)
	t0 := a.readyAt // a fresh acceptor waits a whole lease before its first grant
	ask := func(site string, epoch uint64, at time.Duration) *pb.GrantSiteLeaseResponse {
		t.Helper()
		r, err := a.grant(&pb.GrantSiteLeaseRequest{Site: site, Epoch: epoch, DurationMs: d.Milliseconds()}, t0.Add(at))
		if err != nil {
			t.Fatalf("ask(%s, %d): %v", site, epoch, err)
		}
		return r
	}
	if r, _ := a.grant(&pb.GrantSiteLeaseRequest{Site: "a", Epoch: 1, DurationMs: 500}, t0.Add(-time.Millisecond)); r.Granted {
		t.Fatalf("granted before a whole lease since start: %v", r)
	}
	if r := ask("a", 1, 0); !r.Granted {
		t.Fatalf("first grant refused: %v", r)
	}
	if r := ask("a", 1, 300*time.Millisecond); !r.Granted { // renewal
		t.Fatalf("renewal refused: %v", r)
	}
	// Another site: refused while the grant runs (until 300+500 ms), at any epoch.
	if r := ask("b", 9, 700*time.Millisecond); r.Granted || r.Holder != "a" || r.Epoch != 1 {
		t.Fatalf("b granted during a's lease: %v", r)
	}
	// After it ends: b needs an epoch above a's.
	if r := ask("b", 1, 900*time.Millisecond); r.Granted {
		t.Fatalf("b granted at a's epoch: %v", r)
	}
	if r := ask("b", 2, 900*time.Millisecond); !r.Granted || r.Holder != "b" {
		t.Fatalf("b refused after a's lease ended: %v", r)
	}
	// a, back, is refused at its old epoch and while b's grant runs.
	if r := ask("a", 1, 1000*time.Millisecond); r.Granted || r.Epoch != 2 {
		t.Fatalf("a's stale renewal granted: %v", r)
	}
	if r := ask("a", 3, 1000*time.Millisecond); r.Granted {
		t.Fatalf("a granted during b's lease: %v", r)
	}
	// The holder may move itself to a higher epoch at any time.
	if r := ask("b", 5, 1100*time.Millisecond); !r.Granted || r.Epoch != 5 {
		t.Fatalf("holder's higher epoch refused: %v", r)
	}
	for _, bad := range []*pb.GrantSiteLeaseRequest{
		{Site: "", Epoch: 1, DurationMs: 100},
		{Site: "a", Epoch: 0, DurationMs: 100},
		{Site: "a", Epoch: 1, DurationMs: 0},
		{Site: "a", Epoch: 1, DurationMs: 501},
	} {
		if _, err := a.grant(bad, t0); status.Code(err) != codes.InvalidArgument {
			t.Errorf("grant(%v): %v, want InvalidArgument", bad, err)
		}
	}
}

// TestLeaseAcceptor_Superseded: an active site that lost its lease asks
// again with the epoch it last held; an acceptor that granted the other site
// an epoch above it since refuses, saying superseded (the other site may have
// activated: this one must go standby, not act on older state), even once
// that grant has run out. Without last_epoch, or with one at or above the
// other site's grant, the usual rules apply.
func TestLeaseAcceptor_Superseded(t *testing.T) {
	const d = 500 * time.Millisecond
	a := newLeaseAcceptor(d)
	t0 := a.readyAt
	ask := func(site string, epoch, last uint64, at time.Duration) *pb.GrantSiteLeaseResponse {
		t.Helper()
		r, err := a.grant(&pb.GrantSiteLeaseRequest{Site: site, Epoch: epoch, LastEpoch: last, DurationMs: d.Milliseconds()}, t0.Add(at))
		if err != nil {
			t.Fatalf("ask(%s, %d, last %d): %v", site, epoch, last, err)
		}
		return r
	}
	if r := ask("b", 5, 0, 0); !r.Granted {
		t.Fatalf("b's first grant refused: %v", r)
	}
	if r := ask("a", 6, 0, 600*time.Millisecond); !r.Granted { // b's ran out; a takes over
		t.Fatalf("a's takeover refused: %v", r)
	}
	if r := ask("b", 7, 5, 1200*time.Millisecond); r.Granted || !r.Superseded || r.Holder != "a" || r.Epoch != 6 {
		t.Fatalf("b, last at epoch 5, granted or not told it was superseded by a's 6: %v", r)
	}
	if r := ask("a", 8, 6, 1300*time.Millisecond); !r.Granted || r.Superseded { // a's own epoch: no one above it
		t.Fatalf("a, last at 6, refused: %v", r)
	}
	if r := ask("b", 9, 0, 2000*time.Millisecond); !r.Granted { // a standby site taking over: last 0
		t.Fatalf("b's takeover after a's grant ran out refused: %v", r)
	}
}
