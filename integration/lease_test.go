package integration

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/integration/cluster"
)

// TestCluster_PrimariesKeepActingThroughWrites: while clients write claims
// as fast as they can (every write a Raft entry) and nothing else happens,
// every member keeps acting for its buckets without a gap. Lease grants once
// asked members to have applied the leader's commit index, which a
// follower learns only with its next AppendEntries: after every write, the
// followers' primaries stopped acting (and refused the firewall's events)
// until then.
func TestCluster_PrimariesKeepActingThroughWrites(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var written atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl := c.Client()
		for i := 0; ctx.Err() == nil; i++ {
			k := &pb.ConnKey{Protocol: 6, SrcIp: netip.AddrFrom4([4]byte{10, 77, byte(i >> 8), byte(i)}).String(), SrcPort: 1000,
				DstIp: "192.0.2.7", DstPort: 443}
			cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
			if _, err := cl.Claim(cctx, k, c.Members[0].ID); err == nil {
				written.Add(1)
			}
			ccancel()
		}
	}()
	want := map[string]int{}
	for _, m := range c.Members {
		a, _ := m.Server.Active()
		want[m.ID] = len(a)
	}
	polls, gaps := 0, map[string]int{}
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		polls++
		for _, m := range c.Members {
			if a, _ := m.Server.Active(); len(a) != want[m.ID] {
				gaps[m.ID]++
			}
		}
	}
	cancel()
	<-done
	t.Logf("%d claims written; %d polls of each member; polls acting for fewer buckets: %v", written.Load(), polls, gaps)
	if written.Load() < 100 {
		t.Fatalf("only %d claims written: the test needs writes going on", written.Load())
	}
	if len(gaps) > 0 {
		t.Fatalf("members stopped acting while only claims were written: %v (of %d polls each)", gaps, polls)
	}
}
