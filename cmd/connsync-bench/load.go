package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/internal/proccluster"
)

// keySeq numbers the connection keys of a run: every claim and every lock
// is on a key never used before, so every claim is a real write.
var keySeq atomic.Uint64

// nextKey returns a fresh TCP connection key: 10.a.b.c:port -> 192.0.2.1:80,
// distinct for the first 2^24 x 64,000 calls.
func nextKey() *pb.ConnKey {
	n := keySeq.Add(1)
	src := netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
	return &pb.ConnKey{Protocol: 6, SrcIp: src.String(), SrcPort: uint32(1024 + (n>>24)%64000), DstIp: "192.0.2.1", DstPort: 80}
}

// worker is one load client: a client.Client (its gRPC connections, shared
// with the workers on the same connection) and the member it acts for.
type worker struct {
	cl     *client.Client
	member string
}

// newWorkers makes l.clients workers over l.connCount() clients. Client k
// acts for member k mod members and worker i uses client i mod conns; a
// client sends first to the leader (-via leader) or to its member's
// connsyncd (-via member), which forwards writes to the leader. Every
// client is connected before it returns, so dialling is not timed.
func newWorkers(ctx context.Context, c *proccluster.Cluster, l loadFlags) ([]*worker, func(), error) {
	leader, err := c.Leader(ctx)
	if err != nil {
		return nil, nil, err
	}
	ms := c.Members()
	var cls []*client.Client
	closeAll := func() {
		for _, cl := range cls {
			cl.Close()
		}
	}
	for k := range l.connCount() {
		m := ms[k%len(ms)]
		first := ms[leader].GRPC
		if l.via == viaMember {
			first = m.GRPC
		}
		addrs := []string{first}
		for _, o := range ms {
			if o.GRPC != first {
				addrs = append(addrs, o.GRPC)
			}
		}
		cl, err := client.New(client.Config{Addrs: addrs, Timeout: 10 * time.Second})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		cls = append(cls, cl)
	}
	for _, cl := range cls {
		if _, err := cl.Status(ctx); err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("connecting the load clients: %w", err)
		}
	}
	ws := make([]*worker, l.clients)
	for i := range ws {
		k := i % len(cls)
		ws[i] = &worker{cl: cls[k], member: ms[k%len(ms)].ID}
	}
	return ws, closeAll, nil
}

// op is one timed unit of load (one RPC, or one lock cycle): it returns
// its own latency (setup such as building keys excluded), the items that
// succeeded and failed within it, or an error for the whole unit.
type op func(ctx context.Context, w *worker) (lat time.Duration, ok, failed int, err error)

// loadStats is what drive measured.
type loadStats struct {
	ok, itemErrs int64 // items (claims, lock cycles) that succeeded or failed inside successful units
	units        int64 // successful units
	unitErrs     int64 // units that failed as a whole
	lat          []time.Duration
	wall         time.Duration
	firstErr     error
}

// drive runs op in a closed loop on every worker (one unit outstanding
// each) for l.duration, with a progress line, and returns every successful
// unit's latency. It stops early on ctx (Ctrl-C) or if a member dies.
func drive(ctx context.Context, c *proccluster.Cluster, l loadFlags, rep *reporter, name, unit string, fn op) (*loadStats, error) {
	ws, closeAll, err := newWorkers(ctx, c, l)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.Died():
			cancel()
		case <-lctx.Done():
		}
	}()
	var (
		okN, itemErrN, unitN, unitErrN atomic.Int64
		errMu                          sync.Mutex
		firstErr                       error
		wg                             sync.WaitGroup
	)
	lats := make([][]time.Duration, len(ws))
	start := time.Now()
	end := start.Add(l.duration)
	stop := rep.progress(func() string {
		el := time.Since(start)
		n := okN.Load()
		return fmt.Sprintf("%s: %4.1fs of %v  %s %s  %s/s  %d errors", name, el.Seconds(), l.duration,
			thousands(n), unit, thousands(int64(float64(n)/max(el.Seconds(), 1e-3))), unitErrN.Load()+itemErrN.Load())
	})
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			for lctx.Err() == nil && time.Now().Before(end) {
				d, ok, failed, err := fn(lctx, w)
				if err != nil {
					if lctx.Err() != nil {
						break // stopped: not the site's failure
					}
					unitErrN.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				local = append(local, d)
				unitN.Add(1)
				okN.Add(int64(ok))
				itemErrN.Add(int64(failed))
			}
			lats[i] = local
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	stop()
	if err := c.Err(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st := &loadStats{ok: okN.Load(), itemErrs: itemErrN.Load(), units: unitN.Load(), unitErrs: unitErrN.Load(), wall: wall, firstErr: firstErr}
	for _, l := range lats {
		st.lat = append(st.lat, l...)
	}
	if st.ok == 0 {
		return nil, fmt.Errorf("%s: nothing succeeded in %v (%d errors; first: %v)", name, wall.Round(time.Millisecond), st.unitErrs+st.itemErrs, firstErr)
	}
	if firstErr != nil {
		rep.event("errors", field{"scenario", name}, field{"failed_units", st.unitErrs}, field{"first_error", firstErr.Error()})
	}
	return st, nil
}

// runClaims is the claims scenario.
func runClaims(ctx context.Context, c *proccluster.Cluster, l loadFlags, rep *reporter) (record, error) {
	fn := func(ctx context.Context, w *worker) (time.Duration, int, int, error) {
		if l.batch == 1 {
			k := nextKey()
			t := time.Now()
			_, err := w.cl.Claim(ctx, k, w.member)
			return time.Since(t), 1, 0, err
		}
		keys := make([]*pb.ConnKey, l.batch)
		for i := range keys {
			keys[i] = nextKey()
		}
		t := time.Now()
		res, err := w.cl.ClaimBatch(ctx, keys, w.member)
		d := time.Since(t)
		if err != nil {
			return d, 0, 0, err
		}
		ok := 0
		for _, r := range res {
			if codes.Code(r.GetStatus().GetCode()) == codes.OK {
				ok++
			}
		}
		return d, ok, len(keys) - ok, nil
	}
	st, err := drive(ctx, c, l, rep, "claims", "claims", fn)
	if err != nil {
		return nil, err
	}
	lat := latencyFigures(st.lat)
	fig := record{{"scenario", "claims"}, {"claims_per_sec", round(float64(st.ok)/st.wall.Seconds(), 1)}}
	fig = append(fig, lat...)
	return append(fig,
		field{"clients", l.clients}, field{"grpc_conns", l.connCount()}, field{"batch", l.batch}, field{"members", len(c.Members())}, field{"via", l.via},
		field{"duration_s", l.duration.Seconds()}, field{"wall_s", round(st.wall.Seconds(), 3)},
		field{"claims", st.ok}, field{"rpcs", st.units}, field{"rpc_errors", st.unitErrs}, field{"claim_errors", st.itemErrs},
	), nil
}

// lockTTL is the lease of every lock the locks scenario takes; each is
// released at once, so it only matters if a release fails.
const lockTTL = 30 * time.Second

// runLocks is the locks scenario: one unit is AcquireLock then ReleaseLock
// of a fresh key, or with -batch N, AcquireLockBatch of N fresh keys then
// ReleaseLockBatch of those granted (N cycles).
func runLocks(ctx context.Context, c *proccluster.Cluster, l loadFlags, rep *reporter) (record, error) {
	fn := func(ctx context.Context, w *worker) (time.Duration, int, int, error) {
		if l.batch == 1 {
			k := nextKey()
			t := time.Now()
			lock, err := w.cl.AcquireLock(ctx, k, w.member, lockTTL)
			if err != nil {
				return time.Since(t), 0, 0, fmt.Errorf("acquire: %w", err)
			}
			if err := w.cl.ReleaseLock(ctx, k, w.member, lock.GetToken()); err != nil {
				return time.Since(t), 0, 0, fmt.Errorf("release: %w", err)
			}
			return time.Since(t), 1, 0, nil
		}
		keys := make([]*pb.ConnKey, l.batch)
		for i := range keys {
			keys[i] = nextKey()
		}
		t := time.Now()
		res, err := w.cl.AcquireLockBatch(ctx, keys, w.member, lockTTL)
		if err != nil {
			return time.Since(t), 0, 0, fmt.Errorf("acquire: %w", err)
		}
		held := make([]*pb.HeldLock, 0, len(res))
		for i, r := range res {
			if codes.Code(r.GetStatus().GetCode()) == codes.OK {
				held = append(held, &pb.HeldLock{Key: keys[i], Token: r.GetLock().GetToken()})
			}
		}
		if len(held) == 0 {
			return time.Since(t), 0, len(keys), nil
		}
		st, err := w.cl.ReleaseLockBatch(ctx, held, w.member)
		d := time.Since(t)
		if err != nil {
			return d, 0, 0, fmt.Errorf("release: %w", err)
		}
		ok := 0
		for _, s := range st {
			if codes.Code(s.GetCode()) == codes.OK {
				ok++
			}
		}
		return d, ok, len(keys) - ok, nil
	}
	st, err := drive(ctx, c, l, rep, "locks", "cycles", fn)
	if err != nil {
		return nil, err
	}
	fig := record{{"scenario", "locks"}, {"locks_per_sec", round(float64(st.ok)/st.wall.Seconds(), 1)}}
	fig = append(fig, latencyFigures(st.lat)...)
	return append(fig,
		field{"clients", l.clients}, field{"grpc_conns", l.connCount()}, field{"batch", l.batch}, field{"members", len(c.Members())}, field{"via", l.via},
		field{"duration_s", l.duration.Seconds()}, field{"wall_s", round(st.wall.Seconds(), 3)},
		field{"cycles", st.ok}, field{"rpcs", 2 * st.units}, field{"errors", st.unitErrs}, field{"cycle_errors", st.itemErrs},
	), nil
}
