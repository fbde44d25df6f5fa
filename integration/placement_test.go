package integration

import (
	"testing"

	"github.com/connsync/connsync/integration/cluster"
)

// TestCluster_FormsPlaced: a new site spreads its buckets over its members
// with synced backups.
func TestCluster_FormsPlaced(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	if err := cluster.Placed(c.WaitForLeader(0).Server.FSM()); err != nil {
		t.Fatal(err)
	}
}
