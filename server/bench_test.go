package server_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
)

// BenchmarkClaims measures claims per second on a 3-voter site over real
// loopback TCP with fsync on, from 64 concurrent clients, each with one RPC
// outstanding (closed loop). conns is the number of gRPC connections they
// share: 64 (one each, like independent clients) or 1 (one, as writes
// forwarded by a member reach the leader). batch is the number of claims per
// RPC: 1 is one Claim RPC per claim (comparable to single-operation systems),
// larger values use ClaimBatch. Reports claims/s and the p50/p99 latency of
// one RPC. The load generator shares the machine's cores with the members.
//
//	go test ./server -run XXX -bench 'Claims$' -benchtime 400000x -count 3
func BenchmarkClaims(b *testing.B) {
	for _, conns := range []int{64, 1} {
		for _, batch := range []int{1, 8, 16, 64} {
			b.Run(fmt.Sprintf("clients=64/conns=%d/batch=%d", conns, batch), func(b *testing.B) {
				benchClaims(b, 64, conns, batch, 0)
			})
		}
	}
}

// BenchmarkClaimsAtRate offers a fixed load of 100,000 claims/s (open loop,
// like etcd's benchmark --rate or wrk2) instead of running to saturation: RPC
// n is due at start + n*batch/rate, and its latency counts from when it was
// due, so a stall delays every RPC behind it and shows in the percentiles
// (no coordinated omission). claims/s below the rate means the site could not
// keep up.
//
//	go test ./server -run XXX -bench ClaimsAtRate -benchtime 1000000x -count 3
func BenchmarkClaimsAtRate(b *testing.B) {
	const rate = 100000
	for _, conns := range []int{64, 1} {
		for _, batch := range []int{16, 64} {
			b.Run(fmt.Sprintf("rate=%d/clients=64/conns=%d/batch=%d", rate, conns, batch), func(b *testing.B) {
				benchClaims(b, 64, conns, batch, rate)
			})
		}
	}
}

// benchClaims runs the load; rate 0 is a closed loop (as fast as possible).
func benchClaims(b *testing.B, clients, conns, batch, rate int) {
	// The GC target connsyncd runs with by default (-gc-percent), unless
	// GOGC says otherwise.
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(server.DefaultGCPercent))
	}
	c := cluster.New(b, 3, cluster.Options{})
	leader := c.WaitForLeader(10 * time.Second)
	cls := make([]*client.Client, conns)
	for i := range cls {
		cl, err := client.New(client.Config{Addrs: []string{leader.Addr()}})
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		cls[i] = cl
		// Connect before the clock starts.
		if _, err := cl.Status(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	rpcs := (b.N + batch - 1) / batch
	var interval time.Duration // between RPCs due, open loop only
	if rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(batch) / float64(rate))
	}
	var next atomic.Int64
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ctx := context.Background()
			cl := cls[w%conns]
			keys := make([]*pb.ConnKey, batch)
			for {
				n := int(next.Add(1)) - 1
				if n >= rpcs {
					return
				}
				for j := range keys {
					keys[j] = benchKey(n*batch + j)
				}
				t0 := time.Now()
				if rate > 0 {
					t0 = start.Add(time.Duration(n) * interval)
					time.Sleep(time.Until(t0))
				}
				var err error
				if batch == 1 {
					_, err = cl.Claim(ctx, keys[0], "m1")
				} else {
					var res []*pb.ClaimResult
					res, err = cl.ClaimBatch(ctx, keys, "m1")
					for _, r := range res {
						if r.Status.GetCode() != 0 && err == nil {
							err = fmt.Errorf("item: %v", r.Status)
						}
					}
				}
				lat[w] = append(lat[w], time.Since(t0))
				if err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(rpcs*batch)/elapsed.Seconds(), "claims/s")
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(0, "ns/op")
}

// benchKey is a distinct TCP connection for each i.
func benchKey(i int) *pb.ConnKey {
	src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	return &pb.ConnKey{Protocol: 6, SrcIp: src.String(), SrcPort: uint32(1024 + i%50000),
		DstIp: "198.51.100.7", DstPort: 443}
}
