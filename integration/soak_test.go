package integration

import (
	"context"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

// soakDuration is how long TestProcess_NoFalseFailoverUnderCPULoad runs:
// CONNSYNC_SOAK (a Go duration, e.g. 10m) or 15 s.
func soakDuration(t *testing.T) time.Duration {
	if s := os.Getenv("CONNSYNC_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("CONNSYNC_SOAK=%q: %v", s, err)
		}
		return d
	}
	return 15 * time.Second
}

// TestProcess_NoFalseFailoverUnderCPULoad runs a 5-member site of real
// processes while this test keeps both cores busy (4 spinning goroutines per
// core, competing with the members) and clients write claims, and checks
// that no member is failed over and no bucket changes hands: a busy but
// healthy member must not be taken for a dead one.
//
//	CONNSYNC_SOAK=10m go test ./integration -run NoFalseFailover -v -timeout 20m
func TestProcess_NoFalseFailoverUnderCPULoad(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test skipped in -short mode")
	}
	d := soakDuration(t)
	ps := startProcSite(t, 5)
	cl := ps.client(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	_, before := ps.leader(ctx, cl)
	st0, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Watch every member's own map: any change of hands is a failover.
	var changes atomic.Int64
	var rev uint64
	for _, a := range before {
		rev = max(rev, a.Revision)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	for _, p := range ps.procs {
		wc, err := client.New(client.Config{Addrs: []string{p.grpc}})
		if err != nil {
			t.Fatal(err)
		}
		defer wc.Close()
		st, err := wc.WatchAssignments(wctx, rev)
		if err != nil {
			t.Fatal(err)
		}
		go func(id string) {
			for {
				r, err := st.Recv()
				if err != nil {
					return
				}
				for _, a := range r.Assignments {
					changes.Add(1)
					t.Errorf("%s saw bucket %d change: primary %s, backup %s, epoch %d", id, a.Bucket, a.Primary, a.LocalBackup, a.Epoch)
				}
			}
		}(p.id)
	}

	// CPU load: spinning goroutines, several per core.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := range 100000 {
					x += i
				}
			}
		}()
	}
	w := startClaimWriters(t, ctx, cl, "p1", 0, 4)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && changes.Load() == 0 && !t.Failed() {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(deadline)):
		case <-time.After(time.Second):
		}
	}
	w.halt()
	close(stop)
	wg.Wait()

	st1, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := cl.MemberDetails(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms.Members {
		if m.State != pb.MemberState_MEMBER_STATE_ALIVE {
			t.Errorf("member %s is %s after %v under load", m.Id, m.State, d)
		}
	}
	t.Logf("%v under CPU load: %d claims written, %d bucket changes, raft term %d -> %d",
		d, w.count(), changes.Load(), st0.Term, st1.Term)
	w.verify(t, ctx, cl)
}
