package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
)

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func mustKey(t *testing.T, k *pb.ConnKey) fsm.Key {
	t.Helper()
	fk, err := fsm.ParseKey(k, "key")
	if err != nil {
		t.Fatal(err)
	}
	return fk
}

// claimWriters claim distinct keys (first, first+1, ...) for one member from
// several goroutines until halted, recording the epoch of every acknowledged
// claim, so a test can check that no acknowledged write was lost.
type claimWriters struct {
	mu    sync.Mutex
	acked map[int]uint64
	wg    sync.WaitGroup
	stop  chan struct{}
}

func startClaimWriters(t *testing.T, ctx context.Context, cl *client.Client, member string, first, n int) *claimWriters {
	w := &claimWriters{acked: map[int]uint64{}, stop: make(chan struct{})}
	for g := 0; g < n; g++ {
		w.wg.Add(1)
		go func(g int) {
			defer w.wg.Done()
			for i := first + g; ; i += n {
				select {
				case <-w.stop:
					return
				default:
				}
				c, err := cl.Claim(ctx, key(i), member)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("claim %d: %v", i, err)
					}
					return
				}
				w.mu.Lock()
				w.acked[i] = c.Epoch
				w.mu.Unlock()
			}
		}(g)
	}
	return w
}

func (w *claimWriters) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitMore waits until n more claims than now have been acknowledged.
func (w *claimWriters) waitMore(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	start := w.count()
	cluster.CheckFor(t, timeout, 10*time.Millisecond, func() error {
		if got := w.count() - start; got < n {
			return fmt.Errorf("%d claims acknowledged, want %d more", got, n)
		}
		return nil
	})
}

func (w *claimWriters) halt() {
	close(w.stop)
	w.wg.Wait()
}

// verify checks, with a linearizable read, that every acknowledged claim is
// present at its epoch. Call after halt.
func (w *claimWriters) verify(t *testing.T, ctx context.Context, cl *client.Client) {
	t.Helper()
	keys, idx := make([]*pb.ConnKey, 0, len(w.acked)), make([]int, 0, len(w.acked))
	for i := range w.acked {
		keys, idx = append(keys, key(i)), append(idx, i)
	}
	var own []*pb.Ownership
	for start := 0; start < len(keys); start += server.MaxBatchKeys {
		part, err := cl.LookupBatch(ctx, keys[start:min(start+server.MaxBatchKeys, len(keys))], linear)
		if err != nil {
			t.Fatalf("lookup of acknowledged claims: %v", err)
		}
		own = append(own, part...)
	}
	for j, o := range own {
		if o.Claim == nil || o.Claim.Epoch != w.acked[idx[j]] {
			t.Errorf("acknowledged claim %d (epoch %d) lost: lookup says %v", idx[j], w.acked[idx[j]], o.Claim)
		}
	}
	t.Logf("%d acknowledged claims all present", len(w.acked))
}
