package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/internal/proccluster"
)

// memoryBlobBytes is the size of each connection's state in the memory
// scenario: a typical firewall connection record.
const memoryBlobBytes = 60

// runMemory is the memory scenario: the live heap of every member (after a
// forced GC, read from its /debug/pprof/heap) before and after -conns
// connections are published and confirmed replicated; each member's growth
// is divided by the connections it holds, as primary or as local backup
// (both are rows of its connection table).
func runMemory(ctx context.Context, c *proccluster.Cluster, conns int, rep *reporter) (record, error) {
	before := make([]uint64, len(c.Members()))
	for i, m := range c.Members() {
		h, err := liveHeap(ctx, m.Metrics)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.ID, err)
		}
		before[i] = h
	}
	p, err := newPublisher(ctx, c)
	if err != nil {
		return nil, err
	}
	defer p.close()
	held, err := publishAll(ctx, p, conns, rep, "memory")
	if err != nil {
		return nil, err
	}
	var per []float64
	var heapMB float64
	for i, m := range c.Members() {
		h, err := liveHeap(ctx, m.Metrics)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.ID, err)
		}
		if held[m.ID] == 0 {
			continue
		}
		b := (float64(h) - float64(before[i])) / float64(held[m.ID])
		per = append(per, b)
		heapMB = max(heapMB, float64(h)/(1<<20))
		rep.event("member_heap", field{"member", m.ID}, field{"conns_held", held[m.ID]},
			field{"heap_before_mb", round(float64(before[i])/(1<<20), 1)}, field{"heap_after_mb", round(float64(h)/(1<<20), 1)},
			field{"bytes_per_conn", round(b, 1)})
	}
	if len(per) == 0 {
		return nil, fmt.Errorf("no member holds any connection")
	}
	slices.Sort(per)
	return record{{"scenario", "memory"}, {"bytes_per_conn", round(per[len(per)/2], 1)}, {"max_bytes_per_conn", round(per[len(per)-1], 1)},
		{"conns", conns}, {"members", len(c.Members())}, {"blob_bytes", memoryBlobBytes}, {"max_heap_mb", round(heapMB, 1)}}, nil
}

// publishAll publishes connections 0..n-1 in slices (so the publisher's own
// memory stays small), waits until all are replicated, reports it (a
// progress line named after the scenario, then a "published" event with how
// many events were refused and sent again), and returns how many each member
// holds as primary or local backup.
func publishAll(ctx context.Context, p *publisher, n int, rep *reporter, scenario string) (map[string]int, error) {
	began := time.Now()
	stop := rep.progress(func() string {
		return fmt.Sprintf("%s: publishing %s connections ... %.0fs", scenario, thousands(int64(n)), time.Since(began).Seconds())
	})
	held, refused, err := publishAllQuiet(ctx, p, n)
	stop()
	if err != nil {
		return nil, err
	}
	rep.event("published", field{"conns", n}, field{"s", round(time.Since(began).Seconds(), 2)}, field{"refused_and_resent", refused})
	return held, nil
}

func publishAllQuiet(ctx context.Context, p *publisher, n int) (held map[string]int, refused int, err error) {
	held = map[string]int{}
	const slice = 100_000
	for from := 0; from < n; from += slice {
		states := make([]*pb.ConnState, 0, min(slice, n-from))
		for i := from; i < min(from+slice, n); i++ {
			st := benchConn(i, memoryBlobBytes)
			b, err := p.bucketOf(st)
			if err != nil {
				return nil, 0, err
			}
			held[p.primary[b]]++
			if p.backup[b] != "" {
				held[p.backup[b]]++
			}
			states = append(states, st)
		}
		r, err := p.publish(ctx, states)
		refused += r
		if err != nil {
			return nil, refused, err
		}
	}
	return held, refused, p.waitReplicated(ctx, 20*time.Millisecond)
}

var heapAllocLine = regexp.MustCompile(`(?m)^# HeapAlloc = (\d+)$`)

// liveHeap forces a garbage collection in the member at metricsAddr and
// returns its heap in use after it (net/http/pprof's heap profile with gc=1
// collects first; debug=1 prints runtime.MemStats).
func liveHeap(ctx context.Context, metricsAddr string) (uint64, error) {
	if metricsAddr == "" {
		return 0, fmt.Errorf("no metrics address (the site was started without Metrics)")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/debug/pprof/heap?gc=1&debug=1", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("heap profile: %s", resp.Status)
	}
	m := heapAllocLine.FindSubmatch(body)
	if m == nil {
		return 0, fmt.Errorf("heap profile has no HeapAlloc line")
	}
	return strconv.ParseUint(string(m[1]), 10, 64)
}
