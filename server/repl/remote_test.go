package repl

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// siteView is a staticView on a site of its own, standby or not, with a
// fixed view of the other site.
type siteView struct {
	*staticView
	site    string
	standby bool
	peer    *Peer
}

func (v *siteView) Site() string                   { return v.site }
func (v *siteView) Standby() bool                  { return v.standby }
func (v *siteView) Peer() (*Peer, <-chan struct{}) { return v.peer, nil }

// TestRemote_ReceiverLaggingItsOwnSiteTakesTheCopy: the active site's
// primary reads the standby site's table from one of its members, which may
// be ahead of the member it names as a bucket's remote backup. That member,
// its state machine lagging (bucket 0: primary c at epoch 5, where the
// sender saw b at epoch 8), takes the full sync and records its marker: the
// sender sends a full sync once per (bucket, target, epoch), so a refusal
// lost the copy for good (a standby site stalled short of a synced copy of
// every bucket). A record whose epoch equals the receiver's own and names
// another member (bucket 1) is still refused, and the bucket taken on
// the newer epoch is not dropped when the receiver replans on its older
// table.
func TestRemote_ReceiverLaggingItsOwnSiteTakesTheCopy(t *testing.T) {
	const buckets = 4096
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{"b": ln.Addr().String()}

	bv := &siteView{staticView: newStaticView("b", addrs, buckets), site: "s2", standby: true}
	for i := range bv.as {
		bv.as[i] = fsm.Assignment{Primary: "c", Epoch: 5, Revision: 5}
	}
	bv.as[1].Epoch = 8
	b := New(Config{View: bv, BucketCount: buckets})
	srv := grpc.NewServer()
	pb.RegisterMemberServiceServer(srv, receiverServer{r: b})
	go srv.Serve(ln)
	defer srv.Stop()

	peer := &Peer{Site: "s2", Standby: true, Addrs: addrs, Buckets: make([]PeerBucket, buckets)}
	for i := range peer.Buckets {
		peer.Buckets[i] = PeerBucket{Primary: "b", Epoch: 8}
	}
	av := &siteView{staticView: newStaticView("a", addrs, buckets), site: "s1", peer: peer}
	for i := range av.as {
		av.as[i] = fsm.Assignment{Primary: "a", Epoch: 10, Revision: 10}
	}
	conn, err := grpc.NewClient("passthrough:///"+addrs["b"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a := New(Config{View: av, BucketCount: buckets, Dial: func(string) (*grpc.ClientConn, error) { return conn, nil }})

	// One connection in each of buckets 0 and 1, before the primary plans,
	// so that its full syncs carry them.
	var k0, k1 fsm.Key
	var have0, have1 bool
	for i := 0; !have0 || !have1; i++ {
		switch k := testKey(t, i); k.Bucket(buckets) {
		case 0:
			k0, have0 = k, true
		case 1:
			k1, have1 = k, true
		}
	}
	write(a, k0, "zero")
	write(a, k1, "one")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, r := range []*Replicator{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(ctx) }()
	}

	if err := b.Sync(ctx, 0, fsm.Assignment{Primary: "b", Epoch: 8}); err != nil {
		t.Fatalf("bucket 0's full sync (epoch 8, ahead of the receiver's 5) never arrived: %v", err)
	}
	if _, ok := b.table.Lookup(0, k0); !ok {
		t.Fatal("bucket 0's connection is not in the receiver's table after its marker")
	}
	// Bucket 1's sync was refused (its epoch 8 names c here): no marker,
	// nothing applied.
	for deadline := time.Now().Add(10 * time.Second); b.refused.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bucket 1's records were not refused")
		}
	}
	if _, ok := b.table.Lookup(1, k1); ok {
		t.Fatal("bucket 1's connection was applied by a member its own table does not name")
	}
	// The receiver replans on its older table (bucket 0 at epoch 5, primary
	// c), here with both replicators stopped (replan runs on Run's
	// goroutine): it must keep what it took at epoch 8.
	cancel()
	wg.Wait()
	b.replan()
	if _, ok := b.table.Lookup(0, k0); !ok {
		t.Fatal("bucket 0 was dropped by a replan on a table older than its records")
	}
}

// A record queued for a remote backup before its bucket moved to another
// member of that site carries epoch 0 on the old member's stream: taken
// only by a member whose own table names it, never on the strength of an
// epoch the sender read for the new member.
func TestRemote_RecordToAnOldTargetCarriesNoEpoch(t *testing.T) {
	s := &sender{target: "b1", remote: true}
	if e := s.epochOf(plan{epoch: 40, remote: "b1", remoteEpoch: 8}); e != 8 {
		t.Fatalf("record to the bucket's remote backup: epoch %d, want the standby site's 8", e)
	}
	if e := s.epochOf(plan{epoch: 40, remote: "b2", remoteEpoch: 9}); e != 0 {
		t.Fatalf("record to a member the bucket moved away from: epoch %d, want 0", e)
	}
	local := &sender{target: "a2"}
	if e := local.epochOf(plan{epoch: 40, remote: "b2", remoteEpoch: 9}); e != 40 {
		t.Fatalf("local record: epoch %d, want this site's 40", e)
	}
}
