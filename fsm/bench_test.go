package fsm

import (
	"net/netip"
	"testing"
	"time"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
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
