package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
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
