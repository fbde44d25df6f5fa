package repl

import (
	"context"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/internal/connmix"
	"github.com/connsync/connsync/server/conntable"
)

// staticView is a member whose state machine never changes: every bucket
// has primary "a" and a synced local backup "b".
type staticView struct {
	self  string
	addrs map[string]string
	as    []fsm.Assignment
	ch    chan struct{}
}

func newStaticView(self string, addrs map[string]string, buckets uint32) *staticView {
	as := make([]fsm.Assignment, buckets)
	for i := range as {
		as[i] = fsm.Assignment{Primary: "a", LocalBackup: "b", BackupSynced: true, Epoch: 10, Revision: 10}
	}
	return &staticView{self: self, addrs: addrs, as: as, ch: make(chan struct{})}
}

func (v *staticView) Self() string                            { return v.self }
func (v *staticView) Incarnation() uint64                     { return 1 }
func (v *staticView) Assignments() ([]fsm.Assignment, uint64) { return v.as, 10 }
func (v *staticView) Watch() (uint64, <-chan struct{})        { return 10, v.ch }
func (v *staticView) Generation() uint64                      { return 0 }
func (v *staticView) Assignment(b uint32) (fsm.Assignment, bool) {
	if int(b) < len(v.as) {
		return v.as[b], true
	}
	return fsm.Assignment{}, false
}
func (v *staticView) Acting() bool                   { return true }
func (v *staticView) Pending(uint32, uint64) bool    { return false }
func (v *staticView) Addr(m string) (string, bool)   { a, ok := v.addrs[m]; return a, ok }
func (v *staticView) Site() string                   { return "s1" }
func (v *staticView) Standby() bool                  { return false }
func (v *staticView) Peer() (*Peer, <-chan struct{}) { return nil, nil }

type receiverServer struct {
	pb.UnimplementedMemberServiceServer
	r *Replicator
}

func (s receiverServer) Replicate(st pb.MemberService_ReplicateServer) error { return s.r.Receive(st) }

// pair starts a primary "a" and a backup "b" replicating over real gRPC on
// loopback; applied counts what b applies. They stop when the test ends.
func pair(tb testing.TB) (a, b *Replicator, applied *atomic.Int64) {
	tb.Helper()
	a, b, applied, stop := pairWith(tb, nil)
	tb.Cleanup(stop)
	return a, b, applied
}

// pairWith is pair with the primary's delay classes (nil: the defaults),
// stopped by calling stop.
func pairWith(tb testing.TB, delays []DelayClass) (a, b *Replicator, applied *atomic.Int64, stop func()) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addrs := map[string]string{"b": ln.Addr().String()}
	applied = &atomic.Int64{}
	b = New(Config{View: newStaticView("b", addrs, 4096), BucketCount: 4096,
		OnApply: func(uint32, fsm.Key, uint64) { applied.Add(1) }})
	srv := grpc.NewServer()
	pb.RegisterMemberServiceServer(srv, receiverServer{r: b})
	go srv.Serve(ln)
	var mu sync.Mutex
	conns := map[string]*grpc.ClientConn{}
	dialer := func(addr string) (*grpc.ClientConn, error) {
		mu.Lock()
		defer mu.Unlock()
		if c := conns[addr]; c != nil {
			return c, nil
		}
		c, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		conns[addr] = c
		return c, err
	}
	a = New(Config{View: newStaticView("a", addrs, 4096), BucketCount: 4096, Dial: dialer, Delays: delays})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, r := range []*Replicator{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(ctx) }()
	}
	// Publish refuses events until the first plan names this member primary;
	// the tests' writes skip Publish, so they wait for that plan (a write
	// before it is not queued: the test then never saw it replicated).
	for deadline := time.Now().Add(10 * time.Second); len(a.planOf(0).targets) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatal("the primary's replicator planned no backup in 10s")
		}
	}
	stop = func() {
		cancel()
		wg.Wait()
		srv.Stop()
		for _, c := range conns {
			c.Close()
		}
	}
	return a, b, applied, stop
}

// write is what Publish does once an event is validated: next version in
// the primary's table, then queued for the backups.
func write(r *Replicator, k fsm.Key, state string) {
	b := k.Bucket(4096)
	r.table.Update(b, k, conntable.Record{State: state}, 0, 0)
	r.mark(b, k)
}

// TestPair_ReplicatesLatestVersion: 20 updates of 1,000 connections end at the
// backup at their last version (whether or not some coalesced on the way).
func TestPair_ReplicatesLatestVersion(t *testing.T) {
	a, b, _ := pair(t)
	keys := make([]fsm.Key, 1000)
	for i := range keys {
		keys[i] = testKey(t, i)
	}
	for round := range 20 {
		for _, k := range keys {
			write(a, k, string(rune('a'+round)))
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, k := range keys {
		for {
			r, ok := b.table.Get(k.Bucket(4096), k)
			if ok && r.Version == 20 && r.State == "t" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s at the backup: %+v %v, want version 20", k, r, ok)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// BenchmarkPair measures the replicator of one member pair: the primary
// writes as fast as it can (the table update and queueing that Publish does
// after decoding), the backup applies over real gRPC on loopback; both in
// this process on the same cores. Reports records applied per second.
//
//	go test ./server/repl -run XXX -bench Pair -benchtime 2000000x -count 3
func BenchmarkPair(b *testing.B) {
	a, _, applied := pair(b)
	const conns = 500_000
	keys := make([]fsm.Key, conns)
	for i := range keys {
		keys[i] = testKey(b, i)
	}
	state := string(make([]byte, 60))
	b.ResetTimer()
	start := time.Now()
	go func() {
		for i := range b.N {
			write(a, keys[i%conns], state)
		}
	}()
	for applied.Load() < int64(b.N)*9/10 && time.Since(start) < time.Minute {
		time.Sleep(time.Millisecond)
	}
	// Coalescing may merge a connection's updates: count the time until the
	// stream is idle as well.
	for q := uint64(1); q > 0 && time.Since(start) < time.Minute; {
		time.Sleep(time.Millisecond)
		st, _ := a.senders["b"].status()
		q = st.Queued
	}
	el := time.Since(start)
	b.ReportMetric(float64(applied.Load())/el.Seconds(), "deltas/s")
	b.ReportMetric(float64(b.N)/el.Seconds(), "writes/s")
	b.ReportMetric(0, "ns/op")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runMix drives the selective-sync mix (internal/connmix) through the
// primary's publish path, on the scale of a delay of delay: 50,000 new
// connections/s.
func runMix(a *Replicator, delay time.Duration) {
	seq := uint64(0)
	connmix.Run(context.Background(), delay, 500, func(evs []*pb.ConnEvent) error {
		seq++
		for start := 0; start < len(evs); start += MaxEventsPerBatch {
			a.publishBatch(&pb.PublishRequest{Seq: seq, Events: evs[start:min(start+MaxEventsPerBatch, len(evs))]})
		}
		return nil
	})
}

// BenchmarkSelectiveSync runs the same connection mix (70% of connections
// live a third of the delay, 30% over three delays) through a member pair
// three times: delay classes off, on, and "never" (nothing replicated: the
// cost of publishing alone), and reports how much of the replication CPU
// (process CPU above the "never" run) and of the records sent the delays
// save. The delay is 300 ms instead of 3 s to keep the run short; all the
// lifetimes scale with it.
//
//	go test ./server/repl -run XXX -bench SelectiveSync -benchtime 1x -count 3
func BenchmarkSelectiveSync(b *testing.B) {
	const delay = 300 * time.Millisecond
	run := func(classes string) (cpu time.Duration, records int64) {
		cs, err := ParseDelayClasses(classes)
		if err != nil {
			b.Fatal(err)
		}
		a, _, applied, stop := pairWith(b, cs)
		runtime.GC()
		before := cpuTime()
		runMix(a, delay)
		for q := uint64(1); q > 0; { // until the stream is idle
			time.Sleep(10 * time.Millisecond)
			st, _ := a.senders["b"].status()
			q = st.Queued
		}
		cpu, records = cpuTime()-before, applied.Load()
		stop()
		return cpu, records
	}
	for b.Loop() {
		cpuNone, _ := run("all=any=never")
		cpuOff, recOff := run("all=any=immediate")
		cpuOn, recOn := run("test=tcp:5000=300ms;rest=any=immediate")
		b.ReportMetric(1-float64(cpuOn-cpuNone)/float64(cpuOff-cpuNone), "cpu_saved_fraction")
		b.ReportMetric(1-float64(recOn)/float64(recOff), "records_saved_fraction")
		b.ReportMetric(1-float64(cpuOn)/float64(cpuOff), "process_cpu_saved_fraction")
		b.ReportMetric(cpuNone.Seconds(), "cpu_s_publish_only")
		b.ReportMetric(cpuOff.Seconds(), "cpu_s_off")
		b.ReportMetric(cpuOn.Seconds(), "cpu_s_on")
	}
	b.ReportMetric(0, "ns/op")
}
