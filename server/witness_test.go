package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

// A witness with a data directory remembers its last grant across a
// restart: a site that asks with an older last epoch is still told it was
// superseded (without it, a restarted witness forgot whom it granted, and a
// deposed site could win it and its own acceptor and act on older copies).
func TestWitness_RemembersItsGrantAcrossARestart(t *testing.T) {
	const lease = 100 * time.Millisecond
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := func() (*Witness, pb.SiteLeaseServiceClient) {
		t.Helper()
		w, err := NewWitness(WitnessConfig{Bind: "127.0.0.1:0", MaxLease: lease, DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient("passthrough:///"+w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return w, pb.NewSiteLeaseServiceClient(cc)
	}
	ask := func(cl pb.SiteLeaseServiceClient, site string, epoch, last uint64) *pb.GrantSiteLeaseResponse {
		t.Helper()
		r, err := cl.GrantSiteLease(ctx, &pb.GrantSiteLeaseRequest{Site: site, Epoch: epoch, LastEpoch: last, DurationMs: lease.Milliseconds()})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	w, cl := start()
	// A fresh witness grants nothing for a whole lease; then b wins epoch 7.
	for deadline := time.Now().Add(5 * time.Second); !ask(cl, "b", 7, 0).Granted; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the witness granted b nothing in 5s")
		}
	}
	w.Close()

	w, cl = start()
	defer w.Close()
	// Site a, deposed at epoch 3 and healed: superseded at once, and still
	// once the restarted witness grants again (b at epoch 9).
	if r := ask(cl, "a", 8, 3); r.Granted || !r.Superseded || r.Holder != "b" || r.Epoch != 7 {
		t.Fatalf("restarted witness: a asking with last epoch 3 got %v, want superseded by b's epoch 7", r)
	}
	for deadline := time.Now().Add(5 * time.Second); !ask(cl, "b", 9, 7).Granted; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the restarted witness granted b nothing in 5s")
		}
	}
	if r := ask(cl, "a", 10, 3); r.Granted || !r.Superseded || r.Epoch != 9 {
		t.Fatalf("a asking with last epoch 3 got %v, want superseded by b's epoch 9", r)
	}

	// A damaged state file: the witness does not start, and says why.
	w.Close()
	if err := os.WriteFile(filepath.Join(dir, witnessStateFile), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewWitness(WitnessConfig{Bind: "127.0.0.1:0", MaxLease: lease, DataDir: dir}); err == nil || !strings.Contains(err.Error(), "is not a witness state file") {
		t.Fatalf("damaged state file: err %v, want one naming the file", err)
	}
}
