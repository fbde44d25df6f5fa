package integration

import (
	"testing"
	"time"

	"github.com/connsync/connsync/integration/cluster"
)

// TestCluster_FastElectionOnlyOnProof: a follower starts an election on its
// own account (server.fastElection) only on proof that the leader's process
// is gone. A leader cut off from the others, alive, is replaced through
// Raft's own timers, with no such election; a leader whose gRPC port
// refuses connections (stopped) is replaced through one.
func TestCluster_FastElectionOnlyOnProof(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	old := c.WaitForLeader(10 * time.Second)
	c.Isolate(old)
	c.WaitForNewLeader(old, 20*time.Second)
	if n := fastElections(c); n != 0 {
		t.Fatalf("%d elections started on a leader that was cut off, not gone", n)
	}
	c.HealAll()
	c.WaitConverged(30 * time.Second)

	l := c.WaitForLeader(10 * time.Second)
	c.Stop(l)
	c.WaitForNewLeader(l, 20*time.Second)
	if n := fastElections(c); n == 0 {
		t.Fatalf("leader %s stopped: no member started an election on the proof that it was gone", l.ID)
	}
}

// fastElections sums the elections the running members started on proof
// that the leader was gone.
func fastElections(c *cluster.Cluster) uint64 {
	var n uint64
	for _, m := range c.Running() {
		n += m.Server.FastElections()
	}
	return n
}
