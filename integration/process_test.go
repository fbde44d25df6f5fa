package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
)

// TestProcess_LeaderSIGKILL runs a 3-member site of real connsyncd processes,
// SIGKILLs the leader while clients write, checks that writes continue and no
// acknowledged claim is lost, then restarts the killed member from its data
// directory and checks it catches up.
func TestProcess_LeaderSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test skipped in -short mode")
	}
	ps := startProcSite(t, 3)
	procs := ps.procs
	cl := ps.client(20 * time.Second)
	ctx := cluster.Context(t, 2*time.Minute)

	w := startClaimWriters(t, ctx, cl, "p1", 0, 4)
	w.waitMore(t, 200, 30*time.Second)

	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victim *proc
	for _, p := range procs {
		if p.id == st.LeaderId {
			victim = p
		}
	}
	if victim == nil {
		t.Fatalf("leader %q is not one of the processes", st.LeaderId)
	}
	victim.kill()
	t.Logf("SIGKILLed leader %s after %d acknowledged claims", victim.id, w.count())
	w.waitMore(t, 200, 30*time.Second)
	w.halt()
	w.verify(t, ctx, cl)

	// The killed member restarts from its data directory and catches up.
	ps.restart(victim)
	vc, err := client.New(client.Config{Addrs: []string{victim.grpc}})
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	cluster.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		st, err := vc.Status(ctx)
		if err != nil {
			return err
		}
		if st.ClaimCount != uint64(w.count()) {
			return fmt.Errorf("restarted %s has %d claims, want %d", victim.id, st.ClaimCount, w.count())
		}
		return nil
	})
}
