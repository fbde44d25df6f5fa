package fsm

import (
	"net/netip"
	"testing"
	"time"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

// BenchmarkSnapshot measures FSM.Snapshot (the part that holds the FSM lock,
// blocking Apply) with 1M IPv4 claims.
func BenchmarkSnapshot(b *testing.B) {
	f, idx := newSite(b, "m1")
	const n = 1 << 20
	keys := make([][]byte, 0, 4096)
	for i := 0; i < n; i++ {
		k, _ := makeKey("", 6, addr4(i), uint16(1+i%60000), addr4(0x7f000001), 443)
		keys = append(keys, []byte(k))
		if len(keys) == cap(keys) || i == n-1 {
			idx++
			f.ApplyEntry(idx, &ipb.Entry{TimeUnixNano: int64(time.Second), Proposals: []*ipb.Proposal{{Ops: []*ipb.Op{
				{Op: &ipb.Op_ClaimBatch{ClaimBatch: &ipb.ClaimBatchOp{MemberId: "m1", Keys: keys}}}}}}})
			keys = keys[:0]
		}
	}
	if got := f.Stats().Claims; got != n {
		b.Fatalf("%d claims", got)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		s.Release()
	}
}

func addr4(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
}

// BenchmarkParseKey measures canonicalising a connection key from its API
// form (both directions of a flow give one key) and hashing it to its bucket.
func BenchmarkParseKey(b *testing.B) {
	for _, tc := range []struct {
		name string
		k    *pb.ConnKey
	}{
		{"ipv4", &pb.ConnKey{Protocol: 6, SrcIp: "10.1.2.3", SrcPort: 40000, DstIp: "192.0.2.1", DstPort: 443}},
		{"ipv6", &pb.ConnKey{Zone: "vrf-blue", Protocol: 17, SrcIp: "2001:db8::1", SrcPort: 53, DstIp: "2001:db8::2", DstPort: 5353}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var sum uint32
			for b.Loop() {
				k, err := ParseKey(tc.k, "key")
				if err != nil {
					b.Fatal(err)
				}
				sum += k.Bucket(DefaultBucketCount)
			}
			_ = sum
		})
	}
}

// BenchmarkApplyClaimBatch measures the state machine applying one log entry
// of 8 proposals of 64 new claims each (group commit packs concurrent
// clients' batches into one entry); ns/op is per entry, claims/s is
// reported. The entries are built before the clock starts.
func BenchmarkApplyClaimBatch(b *testing.B) {
	f, idx := newSite(b, "m1")
	const proposals, perProposal = 8, 64
	entries := make([]*ipb.Entry, b.N)
	next := 0
	for i := range entries {
		e := &ipb.Entry{TimeUnixNano: int64(time.Second)}
		for range proposals {
			keys := make([][]byte, perProposal)
			for j := range keys {
				k, _ := makeKey("", 6, addr4(next), uint16(1+next%60000), addr4(0x7f000001), 443)
				keys[j] = []byte(k)
				next++
			}
			e.Proposals = append(e.Proposals, &ipb.Proposal{Ops: []*ipb.Op{
				{Op: &ipb.Op_ClaimBatch{ClaimBatch: &ipb.ClaimBatchOp{MemberId: "m1", Keys: keys}}}}})
		}
		entries[i] = e
	}
	b.ReportAllocs()
	b.ResetTimer()
	for _, e := range entries {
		idx++
		f.ApplyEntry(idx, e)
	}
	b.ReportMetric(float64(proposals*perProposal)*float64(b.N)/b.Elapsed().Seconds(), "claims/s")
	if got := f.Stats().Claims; got != next {
		b.Fatalf("%d claims, want %d", got, next)
	}
}
