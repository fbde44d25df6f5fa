package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/internal/proccluster"
)

// replicateFlags are the replicate scenario's flags.
type replicateFlags struct {
	rate     int // deltas per second over the site; 0: as fast as the window allows
	conns    int
	duration time.Duration
	remote   bool          // c is the active one of two sites: report the lag to the remote backups too
	delay    time.Duration // with sites 2: one way between the sites
	sites    int           // 1, or 2 (active and standby, started by the command)
	mirror   bool          // a mirror stream open on every member while publishing (its cost)
}

// replicateWindow is how many batches a stream may have unanswered.
const replicateWindow = 8

// replicateTick is how often a paced stream sends a batch.
const replicateTick = 10 * time.Millisecond

// runReplicate is the replicate scenario: every member's firewall publishes
// updates of -conns connections to the buckets it is primary of, -rate per
// second over the site (open loop, a batch every 10 ms per member, empty
// requests every millisecond in between while batches are unconfirmed), for
// -duration. A batch's lag is from its send to the first answer on its
// stream whose replicated_through covers it: the firewall's view of "my
// update is at the backup", the answer's way back and up to a millisecond
// of polling included.
func runReplicate(ctx context.Context, c *proccluster.Cluster, f replicateFlags, rep *reporter) (record, error) {
	p, err := newPublisher(ctx, c)
	if err != nil {
		return nil, err
	}
	defer p.close()
	// Every connection once, so the run measures updates of known ones.
	if _, err := publishAll(ctx, p, f.conns, rep, "replicate"); err != nil {
		return nil, err
	}
	byMember := map[string][]*pb.ConnState{}
	for i := range f.conns {
		st := benchConn(i, memoryBlobBytes)
		b, err := p.bucketOf(st)
		if err != nil {
			return nil, err
		}
		byMember[p.primary[b]] = append(byMember[p.primary[b]], st)
	}
	var mirrored *atomic.Int64
	if f.mirror {
		var stopMirrors func() error
		if mirrored, stopMirrors, err = openMirrors(ctx, c); err != nil {
			return nil, err
		}
		defer stopMirrors()
	}
	var confirmed, refused atomic.Int64
	var mu sync.Mutex
	var firstRefusal string
	var lags lagSet
	perTick := 0
	if f.rate > 0 {
		perTick = max(1, int(float64(f.rate)*replicateTick.Seconds())/max(1, len(byMember)))
	}
	began := time.Now()
	var mirroredBefore int64
	if mirrored != nil {
		mirroredBefore = mirrored.Load()
	}
	stop := rep.progress(func() string {
		return fmt.Sprintf("replicate: %s deltas confirmed ... %.0f of %.0fs", thousands(confirmed.Load()),
			time.Since(began).Seconds(), f.duration.Seconds())
	})
	rctx, cancel := context.WithTimeout(ctx, f.duration)
	defer cancel()
	err = eachStream(ctx, p.streams, func(_ context.Context, id string, s *pubStream) error {
		mine := byMember[id]
		if len(mine) == 0 {
			return nil
		}
		l, why, err := s.paced(rctx, mine, perTick, &confirmed, &refused)
		mu.Lock()
		lags.local, lags.remote = append(lags.local, l.local...), append(lags.remote, l.remote...)
		if why != "" && firstRefusal == "" {
			firstRefusal = why
		}
		mu.Unlock()
		return err
	})
	wall := time.Since(began)
	var mirroredDuring int64
	if mirrored != nil {
		mirroredDuring = mirrored.Load() - mirroredBefore
	}
	stop()
	if err != nil {
		return nil, err
	}
	if len(lags.local) == 0 {
		return nil, fmt.Errorf("no batch was confirmed in %v", f.duration)
	}
	if refused.Load() > 0 {
		rep.event("refused", field{"events", refused.Load()}, field{"first", firstRefusal})
	}
	local, remote := lagsOf(lags.local), lagsOf(lags.remote)
	fig := record{{"scenario", "replicate"}, {"deltas_per_sec", round(float64(confirmed.Load())/wall.Seconds(), 1)},
		{"lag_p50_ms", ms(percentile(local, 50))}, {"lag_p99_ms", ms(percentile(local, 99))},
		{"lag_max_ms", ms(local[len(local)-1])}}
	if f.mirror {
		fig = append(fig, field{"mirror", true}, field{"mirrored_per_sec", round(float64(mirroredDuring)/wall.Seconds(), 1)})
	}
	name := fmt.Sprintf("replicate-%d", f.rate)
	if err := rep.plot(name, lagPlot(fmt.Sprintf("replication lag to the local backups at %s deltas/s", thousands(int64(f.rate))),
		lags.local, began, 10*time.Millisecond)); err != nil {
		return nil, err
	}
	if f.remote {
		fig = append(fig, field{"remote_lag_p50_ms", ms(percentile(remote, 50))}, field{"remote_lag_p99_ms", ms(percentile(remote, 99))},
			field{"remote_lag_max_ms", ms(remote[len(remote)-1])})
		if err := rep.plot(name+"-remote", lagPlot(fmt.Sprintf("replication lag to the other site's remote backups (%v each way)", f.delay),
			lags.remote, began, 0)); err != nil {
			return nil, err
		}
	}
	return append(fig, field{"rate", f.rate}, field{"conns", f.conns}, field{"members", len(c.Members())},
		field{"duration_s", f.duration.Seconds()}, field{"batches", len(lags.local)}, field{"deltas", confirmed.Load()},
		field{"refused", refused.Load()}), nil
}

// lagSet is the lags of confirmed batches: to the local backups
// (replicated_through), and to the other site's remote backups as well
// (site_replicated_through; equal to local on a site with no other).
type lagSet struct{ local, remote []lagSample }

// lagSample is one confirmed batch: when it was sent, and its lag.
type lagSample struct {
	at  time.Time
	lag time.Duration
}

// lagsOf returns the samples' lags, sorted.
func lagsOf(s []lagSample) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, x := range s {
		out[i] = x.lag
	}
	slices.Sort(out)
	return out
}

// lagPlot is the lag of every batch against when it was sent.
func lagPlot(title string, s []lagSample, began time.Time, target time.Duration) plot {
	p := plot{title: title, xLabel: "seconds into the run (batch sent)", yLabel: "lag, milliseconds"}
	for _, x := range s {
		p.points = append(p.points, [2]float64{x.at.Sub(began).Seconds(), ms(x.lag)})
	}
	slices.SortFunc(p.points, func(a, b [2]float64) int { return cmp.Compare(a[0], b[0]) })
	if target > 0 {
		p.lines = append(p.lines, refLine{label: fmt.Sprintf("target p99 < %v", target), v: ms(target)})
	}
	return p
}

// paced publishes updates of conns round robin on s until ctx ends: perTick
// events every replicateTick (0: batches of publishBatch as fast as the
// window allows), at most replicateWindow requests unanswered. It returns each
// confirmed batch's lags and adds its events to confirmed. Batches still
// unconfirmed at the end are waited for (with empty requests) and counted.
func (s *pubStream) paced(ctx context.Context, conns []*pb.ConnState, perTick int, confirmed, refused *atomic.Int64) (lagSet, string, error) {
	type sent struct {
		at     time.Time
		n      int
		local  bool // confirmed at the local backups
		remote bool // confirmed at the other site's remote backups too
	}
	var (
		mu      sync.Mutex
		pending = map[uint64]sent{}
		lags    lagSet
		window  = make(chan struct{}, replicateWindow)
		recvErr = make(chan error, 1)
		last    uint64 // highest seq sent with events
		// firstRefusal is the first refused event's error (guarded by mu).
		firstRefusal string
	)
	why := func() string {
		mu.Lock()
		defer mu.Unlock()
		return firstRefusal
	}
	confirm := func(local, remote uint64, now time.Time) {
		mu.Lock()
		defer mu.Unlock()
		for seq, b := range pending {
			if !b.local && seq <= local {
				b.local = true
				lags.local = append(lags.local, lagSample{b.at, now.Sub(b.at)})
				confirmed.Add(int64(b.n))
			}
			if !b.remote && seq <= remote {
				b.remote = true
				lags.remote = append(lags.remote, lagSample{b.at, now.Sub(b.at)})
			}
			if b.local && b.remote {
				delete(pending, seq)
			} else {
				pending[seq] = b
			}
		}
	}
	go func() { // the stream's answers, in order
		for {
			resp, err := s.st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if resp.Refused > 0 { // not replicated: taken off the batch, counted, and the first one kept
				mu.Lock()
				if b, ok := pending[resp.Seq]; ok {
					b.n -= int(resp.Refused)
					pending[resp.Seq] = b
				}
				if refused.Add(int64(resp.Refused)) == int64(resp.Refused) && len(resp.Errors) > 0 {
					firstRefusal = resp.Errors[0].Message
				}
				mu.Unlock()
			}
			confirm(resp.ReplicatedThrough, resp.SiteReplicatedThrough, time.Now())
			<-window
		}
	}()
	send := func(req *pb.PublishRequest, n int) error {
		select {
		case window <- struct{}{}:
		case err := <-recvErr:
			return err
		}
		mu.Lock()
		s.seq++
		req.Seq = s.seq
		if n > 0 {
			pending[s.seq], last = sent{at: time.Now(), n: n}, s.seq
		}
		mu.Unlock()
		return s.st.Send(req)
	}
	next := 0
	batch := func(n int) *pb.PublishRequest {
		req := &pb.PublishRequest{Events: make([]*pb.ConnEvent, n)}
		for i := range req.Events {
			req.Events[i] = &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_UPDATED, State: conns[next]}
			next = (next + 1) % len(conns)
		}
		return req
	}
	// Paced: a batch every replicateTick, and in between an empty request
	// every millisecond while batches wait for confirmation, so that an
	// answer reports replication within about a millisecond of it (the
	// stream only answers requests).
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	nextBatch := time.Now()
	for ctx.Err() == nil {
		if perTick == 0 {
			if err := send(batch(publishBatch), publishBatch); err != nil {
				return lags, why(), err
			}
			continue
		}
		select {
		case <-ctx.Done():
			continue
		case <-poll.C:
		}
		if !time.Now().Before(nextBatch) { // open loop: a late batch is sent at once, not skipped
			nextBatch = nextBatch.Add(replicateTick)
			if err := send(batch(perTick), perTick); err != nil {
				return lags, why(), err
			}
			continue
		}
		mu.Lock()
		waiting := len(pending) > 0
		mu.Unlock()
		if waiting && len(window) < replicateWindow/2 {
			if err := send(&pb.PublishRequest{}, 0); err != nil {
				return lags, why(), err
			}
		}
	}
	// Drain: empty requests until the last batch with events is confirmed.
	for deadline := time.Now().Add(30 * time.Second); ; {
		mu.Lock()
		left := len(pending)
		mu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			return lags, why(), fmt.Errorf("%d batches (through seq %d) not confirmed 30s after the run", left, last)
		}
		if err := send(&pb.PublishRequest{}, 0); err != nil {
			return lags, why(), err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return lags, why(), nil
}

// replicateTwoSites runs replicate on the active one of two sites.
func replicateTwoSites(cmd *cobra.Command, g *globalOpts, f replicateFlags, stdout, stderr io.Writer) error {
	f.remote = true
	return ownSitesRun(cmd, g, stdout, stderr, func(ctx context.Context, rep *reporter) (record, error) {
		return twoSitesRun(ctx, g, f.delay, rep, func(ts *twoSites) (record, error) {
			fig, err := runReplicate(ctx, ts.sites[0], f, rep)
			return append(fig, field{"sites", 2}, field{"delay_ms", ms(f.delay)}), err
		})
	})
}

// openMirrors opens a mirror stream (WatchActivations with mirror, as a
// firewall would) on every member of c, keeps each member's copy in this
// process and waits until every stream has caught up. mirrored counts the
// states the streams bring; stop closes them.
func openMirrors(ctx context.Context, c *proccluster.Cluster) (mirrored *atomic.Int64, stop func() error, err error) {
	mctx, cancel := context.WithCancel(ctx)
	var conns []*grpc.ClientConn
	stop = func() error {
		cancel()
		for _, cc := range conns {
			cc.Close()
		}
		return nil
	}
	mirrored = &atomic.Int64{}
	caught := make(chan error, len(c.Members()))
	for _, m := range c.Members() {
		cc, err := grpc.NewClient("passthrough:///"+m.GRPC, dialOptions(true)...)
		if err != nil {
			stop()
			return nil, nil, err
		}
		conns = append(conns, cc)
		st, err := pb.NewDataPlaneServiceClient(cc).WatchActivations(mctx, &pb.WatchActivationsRequest{Mirror: true})
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("WatchActivations on %s: %w", m.ID, err)
		}
		go func(id string) {
			copies := map[uint32]map[fsm.Key][]byte{}
			told := false
			for {
				msg, err := st.Recv()
				if err != nil {
					if !told {
						caught <- fmt.Errorf("mirror stream on %s ended before it caught up: %w", id, err)
					}
					return
				}
				switch {
				case msg.CaughtUp:
					told = true
					caught <- nil
				case msg.Mirror:
					mirrored.Add(int64(len(msg.States)))
					if err := mirrorApply(copies, msg); err != nil && !told {
						told = true
						caught <- fmt.Errorf("mirror stream on %s: %w", id, err)
					}
				}
			}
		}(m.ID)
	}
	timeout := time.After(readyTimeout)
	for range c.Members() {
		select {
		case err := <-caught:
			if err != nil {
				stop()
				return nil, nil, err
			}
		case <-timeout:
			stop()
			return nil, nil, fmt.Errorf("the mirror streams did not catch up within %v", readyTimeout)
		}
	}
	return mirrored, stop, nil
}
