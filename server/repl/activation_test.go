package repl

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/server/conntable"
)

// BenchmarkActivationStates measures what a new primary does per state when
// it tells the firewall a bucket is active: read the bucket's states from
// the table, rebuild each as a ConnState, and encode the chunks that
// WatchActivations sends (gRPC's framing and the network left out). The
// figure is per state (ns/op over one bucket of 10,000 60-byte states).
func BenchmarkActivationStates(b *testing.B) {
	const n = 10_000
	t := conntable.New(1)
	blob := make([]byte, 60)
	for i := range n {
		st, err := proto.Marshal(&pb.ConnState{TcpState: pb.TcpState_TCP_STATE_ESTABLISHED, TimeoutMs: 300_000, Blob: blob})
		if err != nil {
			b.Fatal(err)
		}
		t.Apply(0, testKey(b, i), conntable.Record{Version: 1, State: string(st)}, 0)
	}
	r := &Replicator{table: t}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N / n {
		states := r.states(0)
		for len(states) > 0 {
			k := min(len(states), activationChunk)
			if _, err := proto.Marshal(&pb.WatchActivationsResponse{Bucket: 0, Epoch: 9, Active: true, States: states[:k], More: k < len(states)}); err != nil {
				b.Fatal(err)
			}
			states = states[k:]
		}
	}
}
