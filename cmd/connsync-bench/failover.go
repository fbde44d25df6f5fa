package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/internal/proccluster"
)

const (
	// readyTimeout bounds the wait for every survivor's WatchActivations
	// stream to report the buckets it is primary of, before the kill.
	readyTimeout = 15 * time.Second
	// takeoverTimeout bounds one failover: far above any target, so a
	// trial that hits it is a failure, not a slow figure.
	takeoverTimeout = 20 * time.Second
	// settleTimeout bounds the wait for the site to settle after the
	// victim restarts.
	settleTimeout = 2 * time.Minute
	// mirrorWindow is the HTTP/2 window of a mirror stream (see
	// dialOptions).
	mirrorWindow = 256 << 10
)

// dialOptions are the options to dial a member with, for a mirror stream
// or not. A mirror stream's window is fixed (gRPC's grows up to 16 MiB on
// its own): it bounds how much mirror data an activation can queue behind.
func dialOptions(mirror bool) []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if mirror {
		opts = append(opts, grpc.WithInitialWindowSize(mirrorWindow), grpc.WithInitialConnWindowSize(mirrorWindow))
	}
	return opts
}

// trial is one measured failover.
type trial struct {
	victim  string
	leader  bool
	buckets int           // buckets the victim was primary of
	took    time.Duration // SIGKILL -> the last of them reported active at its new primary
	first   time.Duration // SIGKILL -> the first of them reported active (the rest is delivery)
	median  time.Duration // SIGKILL -> half of them reported active
	// mirrorStates: states the mirror streams brought between the kill and
	// the last activation (full syncs to new backups, mostly).
	mirrorStates int64
	withoutCopy  int           // of them, taken over by a member that held no synced copy
	settle       time.Duration // restart -> site settled again
	// atActive, with mirror streams: each of the victim's buckets as the
	// new primary's firewall held it (its mirror copy) when the activation
	// came.
	atActive map[uint32]map[fsm.Key][]byte
}

// runFailover is the failover scenario.
func runFailover(ctx context.Context, c *proccluster.Cluster, f failoverFlags, rep *reporter) (record, error) {
	admin, err := c.Client(10 * time.Second)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	prog, stop := newTrialProgress(rep, "failover", f.trials)
	defer stop()
	setPhase := prog.set
	var trials []trial
	for i := range f.trials {
		prog.trial(i + 1)
		setPhase("finding the leader")
		leader, err := c.Leader(ctx)
		if err != nil {
			return nil, err
		}
		victim := leader
		if f.kill == "member" {
			var others []int
			for j := range c.Members() {
				if j != leader {
					others = append(others, j)
				}
			}
			victim = others[i%len(others)]
		}
		tr, err := measureFailover(ctx, c, admin, victim, f.mirror, setPhase)
		if err != nil {
			return nil, fmt.Errorf("trial %d (SIGKILL of %s): %w", i+1, c.Members()[victim].ID, err)
		}
		tr.leader = victim == leader
		setPhase("%s restarted, waiting for the site to settle", tr.victim)
		if tr.settle, err = restartAndSettle(ctx, c, victim); err != nil {
			return nil, fmt.Errorf("trial %d: %w", i+1, err)
		}
		trials = append(trials, tr)
		rep.event("trial", field{"trial", i + 1}, field{"victim", tr.victim}, field{"leader", tr.leader},
			field{"buckets", tr.buckets}, field{"ms", ms(tr.took)}, field{"first_ms", ms(tr.first)}, field{"median_ms", ms(tr.median)},
			field{"mirror_states", tr.mirrorStates}, field{"without_copy", tr.withoutCopy},
			field{"settle_s", round(tr.settle.Seconds(), 2)})
	}
	stop()

	rows := make([][]string, len(trials))
	var took []time.Duration
	buckets, withoutCopy := 0, 0
	for i, t := range trials {
		rows[i] = []string{strconv.Itoa(i + 1), t.victim, strconv.FormatBool(t.leader), strconv.Itoa(t.buckets),
			fmt.Sprintf("%.2f", ms(t.took)), fmt.Sprintf("%.1f", t.settle.Seconds())}
		took = append(took, t.took)
		buckets += t.buckets
		withoutCopy += t.withoutCopy
	}
	rep.table([]string{"trial", "victim", "leader", "buckets", "failover_ms", "settle_s"}, rows)
	target := 200 * time.Millisecond
	if f.kill == "leader" {
		target = 400 * time.Millisecond
	}
	if err := rep.plot("failover-"+f.kill, distributionPlot("failover ("+f.kill+"): SIGKILL to the last bucket active at its new primary", took, target)); err != nil {
		return nil, err
	}
	fastest := slices.Min(took)
	fig := record{{"scenario", "failover"}}
	fig = append(fig, latencyFigures(took)...)
	return append(fig, field{"min_ms", ms(fastest)}, field{"kill", f.kill}, field{"trials", len(trials)},
		field{"members", len(c.Members())}, field{"buckets_per_victim", buckets / len(trials)},
		field{"without_copy", withoutCopy}, field{"observed_by", "WatchActivations"}, field{"mirror", f.mirror}), nil
}

// trialProgress is the progress line of a scenario run as trials:
// "NAME trial i/n: phase".
type trialProgress struct {
	phase   atomic.Value
	current atomic.Int64
}

// newTrialProgress shows the line until stop is called.
func newTrialProgress(rep *reporter, name string, trials int) (*trialProgress, func()) {
	p := &trialProgress{}
	p.phase.Store("")
	stop := rep.progress(func() string {
		return fmt.Sprintf("%s trial %d/%d: %s", name, p.current.Load(), trials, p.phase.Load())
	})
	return p, stop
}

func (p *trialProgress) trial(i int)                    { p.current.Store(int64(i)) }
func (p *trialProgress) set(format string, args ...any) { p.phase.Store(fmt.Sprintf(format, args...)) }

// restartAndSettle restarts member i from its data directory and waits until
// the site is settled again; it returns how long that took.
func restartAndSettle(ctx context.Context, c *proccluster.Cluster, i int) (time.Duration, error) {
	began := time.Now()
	if err := c.Restart(i); err != nil {
		return 0, err
	}
	sctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	if err := c.WaitSettled(sctx, true); err != nil {
		return 0, fmt.Errorf("after restarting %s: %w", c.Members()[i].ID, err)
	}
	return time.Since(began), nil
}

// measureFailover opens DataPlaneService.WatchActivations on every member
// but the victim, waits until each stream has reported the buckets its
// member is primary of, SIGKILLs the victim at t0 and returns when every
// bucket the victim was primary of has been reported active (with a newer
// epoch, all its states delivered) on a surviving member. Each report is
// stamped when this process receives it.
//
// With mirror, the streams are mirror streams: this process keeps each
// member's copy of the buckets it is not active for, as a firewall would,
// waits until every stream has caught up before the kill, and an activation
// carries no states (the copy is what the firewall activates; returned in
// trial.atActive for the victim's buckets).
func measureFailover(ctx context.Context, c *proccluster.Cluster, admin *client.Client, victim int, mirror bool, setPhase func(string, ...any)) (trial, error) {
	ms := c.Members()
	tr := trial{victim: ms[victim].ID}
	setPhase("reading the bucket map")
	r, err := admin.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		return tr, err
	}
	want := map[uint32]*pb.Assignment{}
	primaryOf := map[string]int{}
	for _, a := range r.Assignments {
		primaryOf[a.Primary]++
		if a.Primary == tr.victim {
			want[a.Bucket] = a
		}
	}
	if len(want) == 0 {
		return tr, fmt.Errorf("%s is primary of no bucket; nothing to fail over", tr.victim)
	}
	tr.buckets = len(want)
	if mirror {
		tr.atActive = map[uint32]map[fsm.Key][]byte{}
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu        sync.Mutex
		got       = map[uint32]time.Time{}
		by        = map[uint32]string{}
		allDone   = make(chan struct{})
		doneOnce  sync.Once
		ready     = make(chan struct{}, len(ms))
		killed    atomic.Bool
		afterKill atomic.Int64 // mirror states received since the kill
		streamEr  = make(chan error, len(ms))
	)
	setPhase("opening WatchActivations streams")
	for i, m := range ms {
		if i == victim {
			continue
		}
		conn, err := grpc.NewClient("passthrough:///"+m.GRPC, dialOptions(mirror)...)
		if err != nil {
			return tr, err
		}
		defer conn.Close()
		st, err := pb.NewDataPlaneServiceClient(conn).WatchActivations(wctx, &pb.WatchActivationsRequest{Mirror: mirror})
		if err != nil {
			return tr, fmt.Errorf("WatchActivations on %s: %w", m.ID, err)
		}
		expect := primaryOf[m.ID]
		if expect == 0 && !mirror {
			ready <- struct{}{}
		}
		go func(id string) {
			// told: ready was sent, or (mirror) is sent on caught_up.
			active, told := map[uint32]bool{}, expect == 0 || mirror
			copies := map[uint32]map[fsm.Key][]byte{} // mirror: the buckets this member is not active for
			for {
				msg, err := st.Recv()
				now := time.Now()
				if err != nil {
					if wctx.Err() == nil {
						streamEr <- fmt.Errorf("WatchActivations on %s ended: %w", id, err)
					}
					return
				}
				if mirror {
					if msg.CaughtUp {
						ready <- struct{}{}
						continue
					}
					if msg.Mirror {
						if killed.Load() {
							afterKill.Add(int64(len(msg.States)))
						}
						if err := mirrorApply(copies, msg); err != nil {
							streamEr <- fmt.Errorf("WatchActivations on %s: %w", id, err)
							return
						}
						continue
					}
					if n := len(msg.States); n > 0 {
						streamEr <- fmt.Errorf("WatchActivations on %s: an activation of bucket %d on a mirror stream carried %d states", id, msg.Bucket, n)
						return
					}
				}
				if msg.More {
					continue // a large bucket's states come in chunks; it counts once all have arrived
				}
				b := msg.Bucket
				if !msg.Active {
					delete(active, b)
					continue
				}
				if active[b] = true; !told && len(active) >= expect {
					told = true
					ready <- struct{}{}
				}
				if a, ok := want[b]; ok && msg.Epoch > a.Epoch {
					mu.Lock()
					if _, seen := got[b]; !seen {
						got[b], by[b] = now, id
						if mirror {
							tr.atActive[b] = copies[b] // not changed any more: a bucket's copy is replaced, not cleared
						}
						if len(got) == len(want) {
							doneOnce.Do(func() { close(allDone) })
						}
					}
					mu.Unlock()
				}
			}
		}(m.ID)
	}
	if mirror {
		setPhase("waiting for the mirror streams to catch up")
	}
	timeout := time.After(readyTimeout)
	for range len(ms) - 1 {
		select {
		case <-ready:
		case err := <-streamEr:
			return tr, err
		case <-timeout:
			return tr, fmt.Errorf("the WatchActivations streams did not report their members' buckets (or, with mirror, catch up) within %v", readyTimeout)
		case <-ctx.Done():
			return tr, ctx.Err()
		case <-c.Died():
			return tr, c.Err()
		}
	}

	setPhase("SIGKILL %s, waiting for its %d buckets", tr.victim, len(want))
	beforeKill(ctx, tr.victim)
	t0 := time.Now()
	killed.Store(true)
	if err := c.Kill(victim); err != nil {
		return tr, err
	}
	select {
	case <-allDone:
		tr.mirrorStates = afterKill.Load()
	case err := <-streamEr:
		return tr, err
	case <-time.After(takeoverTimeout):
		mu.Lock()
		defer mu.Unlock()
		return tr, fmt.Errorf("only %d of %s's %d buckets were active at a new primary %v after SIGKILL", len(got), tr.victim, len(want), takeoverTimeout)
	case <-ctx.Done():
		return tr, ctx.Err()
	case <-c.Died():
		return tr, c.Err()
	}
	mu.Lock()
	defer mu.Unlock()
	tr.first = takeoverTimeout
	var each []time.Duration
	for b, at := range got {
		each = append(each, at.Sub(t0))
		tr.took, tr.first = max(tr.took, at.Sub(t0)), min(tr.first, at.Sub(t0))
		if a, p := want[b], by[b]; !(a.LocalBackup == p && a.BackupSynced) && !(a.Incoming == p && a.IncomingSynced) {
			tr.withoutCopy++
		}
	}
	if tr.took <= 0 {
		return tr, errors.New("measured a failover time of zero: the clock went wrong")
	}
	slices.Sort(each)
	tr.median = each[len(each)/2]
	return tr, nil
}

// mirrorApply applies a mirror message to copies, a firewall's copy of the
// buckets its member is not active for (blobs by connection).
func mirrorApply(copies map[uint32]map[fsm.Key][]byte, msg *pb.WatchActivationsResponse) error {
	b := msg.Bucket
	if msg.Replace || copies[b] == nil {
		copies[b] = make(map[fsm.Key][]byte, len(msg.States))
	}
	cp := copies[b]
	for i, st := range msg.States {
		k, err := fsm.ParseKey(st.Key, fmt.Sprintf("states[%d].key", i))
		if err != nil {
			return fmt.Errorf("mirror of bucket %d: %w", b, err)
		}
		cp[k] = st.Blob
	}
	for i, ck := range msg.Closed {
		k, err := fsm.ParseKey(ck, fmt.Sprintf("closed[%d]", i))
		if err != nil {
			return fmt.Errorf("mirror of bucket %d: %w", b, err)
		}
		delete(cp, k)
	}
	return nil
}
