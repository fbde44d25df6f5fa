package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
	"github.com/connsync/connsync/server/repl"
)

// lagRecorder stamps when each connection was last published and measures,
// for every record a backup applies, the time since.
type lagRecorder struct {
	shards  [64]lagShard
	mu      sync.Mutex
	lags    []time.Duration
	applied atomic.Int64
}

type lagShard struct {
	mu sync.Mutex
	at map[fsm.Key]int64
}

func newLagRecorder() *lagRecorder {
	l := &lagRecorder{}
	for i := range l.shards {
		l.shards[i].at = map[fsm.Key]int64{}
	}
	return l
}

func (l *lagRecorder) shard(k fsm.Key) *lagShard { return &l.shards[k[len(k)-3]%64] }

func (l *lagRecorder) published(k fsm.Key, at int64) {
	s := l.shard(k)
	s.mu.Lock()
	s.at[k] = at
	s.mu.Unlock()
}

func (l *lagRecorder) apply(_ uint32, k fsm.Key, _ uint64) {
	now := time.Now().UnixNano()
	s := l.shard(k)
	s.mu.Lock()
	at, ok := s.at[k]
	s.mu.Unlock()
	l.applied.Add(1)
	if ok {
		l.mu.Lock()
		l.lags = append(l.lags, time.Duration(now-at))
		l.mu.Unlock()
	}
}

func (l *lagRecorder) percentiles() (p50, p99 time.Duration, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.Sort(l.lags)
	if len(l.lags) == 0 {
		return 0, 0, 0
	}
	return l.lags[len(l.lags)/2], l.lags[int(0.99*float64(len(l.lags)-1))], len(l.lags)
}

// ratePublisher publishes UPDATED events to connections 0..conns-1, round
// robin, at rate events/s (0: as fast as it can), for d, through one stream
// per primary, in batches of batch events.
func ratePublisher(b testing.TB, c *cluster.Cluster, lag *lagRecorder, conns, rate, batch int, d time.Duration) (sent int) {
	as := c.Assignments()
	type target struct {
		st    pb.DataPlaneService_PublishClient
		queue []int
	}
	targets := map[string]*target{}
	keys := make([]fsm.Key, conns)
	for i := range conns {
		k, bk := bucketOf(b, conn(i, 0))
		keys[i] = k
		id := as[bk].Primary
		if targets[id] == nil {
			st, err := pb.NewDataPlaneServiceClient(dial(b, c.Member(id).Addr())).Publish(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			targets[id] = &target{st: st}
		}
		targets[id].queue = append(targets[id].queue, i)
	}
	var wg sync.WaitGroup
	var total atomic.Int64
	share := float64(rate) / float64(len(targets))
	start := time.Now()
	for _, tg := range targets {
		wg.Add(2)
		go func() { // answers: read them so the stream flows
			defer wg.Done()
			for {
				if _, err := tg.st.Recv(); err != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			defer tg.st.CloseSend()
			next, n := 0, 0
			for seq := uint64(1); time.Since(start) < d; seq++ {
				if share > 0 { // open loop: batch seq is due at start + seq*batch/share
					due := start.Add(time.Duration(float64(seq*uint64(batch)) / share * float64(time.Second)))
					time.Sleep(time.Until(due))
				}
				req := &pb.PublishRequest{Seq: seq, Events: make([]*pb.ConnEvent, 0, batch)}
				now := time.Now().UnixNano()
				for range batch {
					i := tg.queue[next%len(tg.queue)]
					next++
					typ := pb.ConnEventType_CONN_EVENT_TYPE_UPDATED
					if next <= len(tg.queue) {
						typ = pb.ConnEventType_CONN_EVENT_TYPE_CREATED
					}
					if lag != nil {
						lag.published(keys[i], now)
					}
					req.Events = append(req.Events, &pb.ConnEvent{Type: typ, State: conn(i, byte(next))})
				}
				if err := tg.st.Send(req); err != nil {
					return
				}
				n += batch
			}
			total.Add(int64(n))
		}()
	}
	wg.Wait()
	return int(total.Load())
}

// BenchmarkReplicationLag offers 100,000 connection updates/s (open loop,
// spread over the three primaries of a 3-member site in one process) for
// 5 s and measures, for every record a backup applies, the time since its
// connection was published on the primary.
//
//	go test ./integration -run XXX -bench ReplicationLag -benchtime 1x -count 3
func BenchmarkReplicationLag(b *testing.B) {
	for b.Loop() {
		lag := newLagRecorder()
		c := cluster.New(b, 3, cluster.Options{Tweak: func(cfg *server.Config) { cfg.OnReplicaApply = lag.apply }})
		const rate, d = 100_000, 5 * time.Second
		sent := ratePublisher(b, c, lag, 200_000, rate, 100, d)
		cluster.CheckFor(b, 20*time.Second, 20*time.Millisecond, func() error {
			if got := lag.applied.Load(); got < int64(sent)/2 {
				return fmt.Errorf("%d of %d applied", got, sent)
			}
			return nil
		})
		p50, p99, n := lag.percentiles()
		b.ReportMetric(float64(sent)/d.Seconds(), "deltas/s")
		b.ReportMetric(float64(p50.Microseconds())/1000, "lag_p50_ms")
		b.ReportMetric(float64(p99.Microseconds())/1000, "lag_p99_ms")
		b.ReportMetric(float64(n), "records_applied")
	}
	b.ReportMetric(0, "ns/op")
}

// BenchmarkReplicationThroughput measures one member pair at full speed: a
// 2-member site where the publisher sends as fast as it can to the primary
// of one member's buckets for 5 s; deltas/s is what the backup applied per
// second (coalescing can make it less than what was published).
//
//	go test ./integration -run XXX -bench ReplicationThroughput -benchtime 1x -count 3
func BenchmarkReplicationThroughput(b *testing.B) {
	for b.Loop() {
		lag := newLagRecorder()
		c := cluster.New(b, 2, cluster.Options{Tweak: func(cfg *server.Config) { cfg.OnReplicaApply = lag.apply }})
		start := time.Now()
		sent := ratePublisher(b, c, nil, 500_000, 0, 5000, 5*time.Second)
		el := time.Since(start)
		applied := lag.applied.Load()
		b.ReportMetric(float64(applied)/el.Seconds(), "deltas/s")
		b.ReportMetric(float64(sent)/el.Seconds(), "published/s")
	}
	b.ReportMetric(0, "ns/op")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSelectiveSync runs one connection mix three times on a 3-member
// site — delay classes off (everything replicated at once), on (3 s for the
// test service), and "never" (nothing replicated: the cost of publishing
// alone) — and reports how much of the replication CPU and of the records
// sent the delay classes save. The mix: 2,000 new connections/s for 8 s,
// 70% closed after 1 s, 30% after 5 s, each updated twice in its first
// second and every second after.
//
//	go test ./integration -run XXX -bench SelectiveSync -benchtime 1x -count 3
func BenchmarkSelectiveSync(b *testing.B) {
	run := func(classes string) (cpu time.Duration, records int64) {
		cs, err := repl.ParseDelayClasses(classes)
		if err != nil {
			b.Fatal(err)
		}
		lag := newLagRecorder()
		c := cluster.New(b, 3, cluster.Options{Tweak: func(cfg *server.Config) {
			cfg.DelayClasses = cs
			cfg.OnReplicaApply = lag.apply
		}})
		before := cpuTime()
		connMix(b, c, 2000, 8*time.Second)
		time.Sleep(500 * time.Millisecond) // let the last records drain: part of the measured work
		return cpuTime() - before, lag.applied.Load()
	}
	for b.Loop() {
		cpuOff, recOff := run("all=any=immediate")
		cpuOn, recOn := run("test=tcp:5000=3s;rest=any=immediate")
		cpuNone, _ := run("all=any=never")
		saved := 1 - float64(cpuOn-cpuNone)/float64(cpuOff-cpuNone)
		b.ReportMetric(saved, "cpu_saved_fraction")
		b.ReportMetric(1-float64(recOn)/float64(recOff), "records_saved_fraction")
		b.ReportMetric(cpuOff.Seconds(), "cpu_s_off")
		b.ReportMetric(cpuOn.Seconds(), "cpu_s_on")
		b.ReportMetric(cpuNone.Seconds(), "cpu_s_publish_only")
	}
	b.ReportMetric(0, "ns/op")
}

// connMix drives the selective-sync mix for d.
func connMix(b testing.TB, c *cluster.Cluster, perSec int, d time.Duration) {
	as := c.Assignments()
	streams := map[string]pb.DataPlaneService_PublishClient{}
	var wg sync.WaitGroup
	for _, m := range c.Running() {
		st, err := pb.NewDataPlaneServiceClient(dial(b, m.Addr())).Publish(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		streams[m.ID] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, err := st.Recv(); err != nil {
					return
				}
			}
		}()
	}
	type conn1 struct {
		i     int
		birth time.Time
		life  time.Duration
	}
	var live []conn1
	start, next, seq := time.Now(), 0, uint64(0)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for now := range tick.C {
		if now.Sub(start) > d+6*time.Second {
			break
		}
		batches := map[string][]*pb.ConnEvent{}
		add := func(i int, typ pb.ConnEventType, v byte) {
			st := conn(i, v)
			_, bk := bucketOf(b, st)
			id := as[bk].Primary
			batches[id] = append(batches[id], &pb.ConnEvent{Type: typ, State: st})
		}
		if now.Sub(start) < d {
			for range perSec / 10 {
				life := time.Second
				if next%10 >= 7 {
					life = 5 * time.Second
				}
				live = append(live, conn1{next, now, life})
				add(next, pb.ConnEventType_CONN_EVENT_TYPE_CREATED, 0)
				next++
			}
		}
		kept := live[:0]
		for _, cn := range live {
			age := now.Sub(cn.birth)
			switch {
			case age >= cn.life:
				add(cn.i, pb.ConnEventType_CONN_EVENT_TYPE_CLOSED, 0)
				continue
			case age > 0 && (age < time.Second && age.Milliseconds()/100%5 == 2 || age.Milliseconds()%1000 < 100):
				add(cn.i, pb.ConnEventType_CONN_EVENT_TYPE_UPDATED, byte(age/(100*time.Millisecond)))
			}
			kept = append(kept, cn)
		}
		live = kept
		for id, evs := range batches {
			seq++
			if err := streams[id].Send(&pb.PublishRequest{Seq: seq, Events: evs}); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, st := range streams {
		st.CloseSend()
	}
	wg.Wait()
}
