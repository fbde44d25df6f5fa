package repl

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// appendActivation must write exactly what proto.Marshal writes for the
// message built the slow way (a ConnState per state, as Dump still builds
// them): the firewall decodes it as that message.
func TestAppendActivation_IsTheMarshalledMessage(t *testing.T) {
	v6, err := fsm.ParseKey(&pb.ConnKey{Zone: "vrf-blue", Protocol: 17, SrcIp: "2001:db8::1", SrcPort: 53, DstIp: "2001:db8::2", DstPort: 5353}, "key")
	if err != nil {
		t.Fatal(err)
	}
	tb := conntable.New(1)
	big, err := proto.Marshal(&pb.ConnState{TcpState: pb.TcpState_TCP_STATE_ESTABLISHED, TimeoutMs: 300_000, Blob: make([]byte, MaxBlobBytes)})
	if err != nil {
		t.Fatal(err)
	}
	tb.Apply(0, v6, conntable.Record{Version: 1 << 50, State: string(big), Reversed: true}, 0)
	tb.Apply(0, testKey(t, 1), conntable.Record{Version: 3}, 0) // no fields but the key and version
	for i := 2; i < 300; i++ {
		tb.Apply(0, testKey(t, i), conntable.Record{Version: uint64(i), State: "\x30\x01", Reversed: i%2 == 0}, 0)
	}
	items := tb.Snapshot(0)
	states := connStates(items)
	for _, c := range []struct {
		bucket uint32
		epoch  uint64
		more   bool
		n      int
	}{{0, 9, true, len(items)}, {4095, 1 << 40, false, 1}, {7, 0, false, 0}, {1, 1, false, 2}} {
		want, err := proto.Marshal(&pb.WatchActivationsResponse{Bucket: c.bucket, Epoch: c.epoch, Active: true, States: states[:c.n], More: c.more})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := appendActivation(nil, nil, c.bucket, c.epoch, items[:c.n], c.more)
		if string(got) != string(want) {
			t.Fatalf("bucket %d epoch %d, %d states: appendActivation differs from proto.Marshal (%d vs %d bytes)", c.bucket, c.epoch, c.n, len(got), len(want))
		}
		var back pb.WatchActivationsResponse
		if err := proto.Unmarshal(got, &back); err != nil || len(back.States) != c.n || back.Bucket != c.bucket || back.Epoch != c.epoch || !back.Active || back.More != c.more {
			t.Fatalf("decoded %d states, bucket %d, epoch %d, more %v, error %v", len(back.States), back.Bucket, back.Epoch, back.More, err)
		}
	}
}

// appendMirror, likewise, writes what proto.Marshal writes for the mirror
// message built the slow way.
func TestAppendMirror_IsTheMarshalledMessage(t *testing.T) {
	tb := conntable.New(1)
	for i := 1; i < 40; i++ {
		tb.Apply(0, testKey(t, i), conntable.Record{Version: uint64(i), State: "\x30\x01", Reversed: i%2 == 0}, 0)
	}
	items := tb.Snapshot(0)
	states := connStates(items)
	gone := []fsm.Key{testKey(t, 100), testKey(t, 101)}
	closed := []*pb.ConnKey{gone[0].Proto(), gone[1].Proto()}
	for _, c := range []struct {
		bucket      uint32
		reset, more bool
		n, g        int
	}{{0, true, true, len(items), 0}, {4095, false, false, 3, 2}, {7, true, false, 0, 0}, {1, false, true, 0, 1}} {
		want, err := proto.Marshal(&pb.WatchActivationsResponse{Bucket: c.bucket, States: states[:c.n], More: c.more, Mirror: true, Replace: c.reset, Closed: closed[:c.g]})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := appendMirror(nil, nil, c.bucket, c.reset, items[:c.n], gone[:c.g], c.more)
		if string(got) != string(want) {
			t.Fatalf("%+v: appendMirror differs from proto.Marshal (%d vs %d bytes)", c, len(got), len(want))
		}
	}
}

// BenchmarkActivationStates measures what a new primary does per state when
// it tells the firewall a bucket is active: read the bucket's states from
// the table and encode the chunks that WatchActivations sends
// (appendActivation; gRPC's framing, its copy of each chunk and the network
// left out). The figure is per state (ns/op over one bucket of 10,000
// 60-byte states).
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
	var buf, scratch []byte
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N / n {
		items := t.Snapshot(0)
		for len(items) > 0 {
			k := min(len(items), activationChunk)
			buf, scratch = appendActivation(buf[:0], scratch, 0, 9, items[:k], k < len(items))
			items = items[k:]
		}
	}
}

// Full syncs yield to a firewall's activations for at most maxSyncYield in
// a row, and go on as soon as the last activation is sent.
func TestSyncsYield_WhileActivatingAndBounded(t *testing.T) {
	r := &Replicator{senders: map[string]*sender{}}
	s := &sender{wake: make(chan struct{}, 1)}
	r.senders["m2"] = s
	if r.syncsYield() {
		t.Fatal("full syncs yield with no activation being sent")
	}
	r.activating.Add(1)
	if !r.syncsYield() {
		t.Fatal("full syncs do not yield while an activation is sent")
	}
	r.yieldMu.Lock()
	r.yieldSince = r.yieldSince.Add(-maxSyncYield)
	r.yieldMu.Unlock()
	if r.syncsYield() {
		t.Fatalf("full syncs still yield after %v of activations", maxSyncYield)
	}
	r.activationSent()
	if r.syncsYield() {
		t.Fatal("full syncs yield after the last activation was sent")
	}
	select {
	case <-s.wake:
	default:
		t.Fatal("the sender was not woken when the last activation was sent")
	}
	r.activating.Add(1)
	if !r.syncsYield() {
		t.Fatal("a new activation after the bound was reset does not make full syncs yield")
	}
}
