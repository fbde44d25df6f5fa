package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/chaos"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/internal/sabotage"
	"github.com/connsync/connsync/server"
)

// The chaos suite (docs/CHAOS.md). CI mode runs a fixed set of seeds; a
// failing schedule prints its seed and where its history, porcupine
// visualisation, member logs and data directories were kept.
//
//	go test ./integration -run 'TestChaos$' -v                          # a quick few (also in go test ./...)
//	go test ./integration -run 'TestChaos' -chaos.ci -v                 # the CI set (.ci/run)
//	go test ./integration -run 'TestChaos$' -chaos.seed 17 -v           # re-run one seed
//	go test ./integration -run 'TestChaos$' -chaos.seeds 200 -timeout 0 # long mode
var (
	chaosCI       = flag.Bool("chaos.ci", false, "run the CI set of seeds (every fault kind opens two schedules)")
	chaosSeed     = flag.Uint64("chaos.seed", 0, "run only the schedule of this seed")
	chaosSeeds    = flag.Int("chaos.seeds", 0, "long mode: run this many schedules, seeds from -chaos.first on (0: the CI set)")
	chaosFirst    = flag.Uint64("chaos.first", 0, "first seed of long mode (0: from the clock)")
	chaosDuration = flag.Duration("chaos.duration", 4*time.Second, "how long each schedule injects faults")
	chaosKeep     = flag.String("chaos.keep", os.TempDir(), "where a failing schedule's history, logs and data are kept")
)

// chaosCISeeds is the CI set: two schedules opening with each fault kind;
// plain go test runs the first chaosQuickSeeds of them. The CI set also
// runs chaosRegressionSeeds, long-run seeds that found bugs (docs/CHAOS.md).
const chaosCISeeds, chaosQuickSeeds = 24, 4

var chaosRegressionSeeds = []uint64{5014, 6111, 7051, 7098, 7176, 8294, 9011, 9255, 9528}

const chaosBuckets = 256

// chaosSpec is one schedule: a seed, and optionally the faults to inject
// (default: the first kind chosen by the seed, then random ones).
type chaosSpec struct {
	seed   uint64
	dur    time.Duration
	faults []fault
	hold   time.Duration // how long each fault lasts (0: 0.3-2 s at random)
	// sabotage, if set, is turned on once the site has formed (and off when
	// the test ends): the checkers must catch what it breaks.
	sabotage *atomic.Bool
}

// chaosResult is what the checkers found in one schedule.
type chaosResult struct {
	claims, locks  chaos.Verdict
	grants, writes int
	staleWrites    int
	fencing        []string
	act            chaos.ActivationReport
	staleSnapshots int // snapshots refused as older than the applied state
	terms          int
	termViolations []string
	durable        int
	lost           []string
	deltas, wiped  int
	deltaMissing   []string
	injected       []string
	published      int64
}

// appendViolations adds what checker found to out: at most ten of vs, then
// how many more.
func appendViolations(out []string, checker string, vs []string) []string {
	for i, v := range vs {
		if i == 10 {
			return append(out, fmt.Sprintf("%s: ... %d more", checker, len(vs)-10))
		}
		out = append(out, checker+": "+v)
	}
	return out
}

func (r *chaosResult) violations() []string {
	var out []string
	add := func(checker string, vs []string) { out = appendViolations(out, checker, vs) }
	if !r.claims.OK() {
		add("S3 claims (porcupine)", []string{r.claims.String()})
	}
	if !r.locks.OK() {
		add("S3 locks (porcupine)", []string{r.locks.String()})
	}
	add("S2 fencing", r.fencing)
	add("S1/S2 activations", r.act.Violations)
	add("leader per term", r.termViolations)
	add("S4 durability", r.lost)
	add("S5 session persistence", r.deltaMissing)
	return out
}

// chaosTotals adds up the checkers' figures over a run of schedules.
type chaosTotals struct {
	mu                                  sync.Mutex
	schedules, ops, unknown, grants     int
	activations, deltas, durable, terms int
	staleSnapshots                      int
	longest                             time.Duration
	overlaps                            int
	kinds                               map[string]int
}

func (tt *chaosTotals) add(r *chaosResult) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	tt.schedules++
	tt.ops += r.claims.Ops + r.locks.Ops
	tt.unknown += r.claims.Unknown + r.locks.Unknown
	tt.grants += r.grants
	tt.activations += r.act.Activations
	tt.overlaps += r.act.Overlaps
	tt.longest = max(tt.longest, r.act.Longest)
	tt.deltas += r.deltas
	tt.durable += r.durable
	tt.terms += r.terms
	tt.staleSnapshots += r.staleSnapshots
	for _, k := range r.injected {
		tt.kinds[k]++
	}
}

func (tt *chaosTotals) String() string {
	kinds := make([]string, 0, len(tt.kinds))
	for k, n := range tt.kinds {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	slices.Sort(kinds)
	return fmt.Sprintf("%d schedules; operations checked by porcupine %d (%d unknown); lock grants fenced %d; "+
		"acknowledged claims checked durable %d; confirmed deltas checked at the primaries %d; bucket activations %d, "+
		"dual-primary overlaps %d, longest %v; terms with a leader %d; stale snapshots refused %d; faults injected: %s",
		tt.schedules, tt.ops, tt.unknown, tt.grants, tt.durable, tt.deltas, tt.activations, tt.overlaps, tt.longest,
		tt.terms, tt.staleSnapshots, strings.Join(kinds, " "))
}

// TestChaos runs randomized fault schedules against in-process sites of
// five members (real Raft, raft-boltdb with fsync, loopback TCP through a
// fault-injecting network) under claim, lock and data-plane traffic, and
// checks S1-S5 (see chaosResult.violations).
func TestChaos(t *testing.T) {
	var set []uint64 // without -chaos.seed or -chaos.seeds: the quick set, or the CI set
	n := uint64(chaosQuickSeeds)
	if *chaosCI {
		n = chaosCISeeds
	}
	for s := uint64(1); s <= n; s++ {
		set = append(set, s)
	}
	if *chaosCI {
		set = append(set, chaosRegressionSeeds...)
	}
	seeds := seedsToRun(set)
	totals := &chaosTotals{kinds: map[string]int{}}
	start := time.Now()
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r := runChaos(t, chaosSpec{seed: seed, dur: *chaosDuration})
			totals.add(r)
			for _, v := range r.violations() {
				t.Error(v)
			}
		})
	}
	t.Logf("chaos totals after %v: %v", time.Since(start).Round(time.Second), totals)
	if (*chaosCI || *chaosSeeds >= len(faultKinds())) && *chaosSeed == 0 && !t.Failed() {
		for _, f := range faultKinds() {
			if totals.kinds[f.name()] == 0 {
				t.Errorf("fault %s was never injected", f.name())
			}
		}
	}
}

// seedsToRun returns the seeds the flags ask for: -chaos.seed, or the long
// mode's -chaos.seeds from -chaos.first (from the clock if not set), or else
// set.
func seedsToRun(set []uint64) []uint64 {
	switch {
	case *chaosSeed != 0:
		return []uint64{*chaosSeed}
	case *chaosSeeds > 0:
		first := *chaosFirst
		if first == 0 {
			first = uint64(time.Now().UnixNano()) & (1<<40 - 1)
		}
		seeds := make([]uint64, *chaosSeeds)
		for i := range seeds {
			seeds[i] = first + uint64(i)
		}
		return seeds
	}
	return set
}

// runChaos runs one schedule and checks it. A failing schedule keeps its
// directory (history.jsonl, porcupine HTML, member logs and data).
func runChaos(t *testing.T, spec chaosSpec) *chaosResult {
	t.Logf("chaos seed %d; re-run: go test ./integration -run 'TestChaos$' -chaos.seed %d -chaos.duration %v -v",
		spec.seed, spec.seed, spec.dur)
	dir, err := os.MkdirTemp(*chaosKeep, fmt.Sprintf("connsync-chaos-%d-", spec.seed))
	if err != nil {
		t.Fatal(err)
	}
	res := &chaosResult{}
	var tr *traffic
	t.Cleanup(func() { // registered first: runs after the cluster has shut down
		if !t.Failed() {
			os.RemoveAll(dir)
			return
		}
		if tr != nil {
			if err := tr.hist.WriteJSON(filepath.Join(dir, "history.jsonl")); err != nil {
				t.Logf("write history: %v", err)
			}
		}
		for name, v := range map[string]chaos.Verdict{"claims": res.claims, "locks": res.locks} {
			if v.Model != "" && !v.OK() {
				if err := v.Visualize(filepath.Join(dir, name+".html")); err != nil {
					t.Logf("porcupine visualisation: %v", err)
				}
			}
		}
		t.Logf("seed %d failed: history, porcupine visualisation, member logs and data kept in %s", spec.seed, dir)
	})
	rng := rand.New(rand.NewPCG(spec.seed, 0x5eed))
	disks := newSlowDisks()
	c := cluster.New(t, 5, cluster.Options{Dir: dir, Tweak: func(cfg *server.Config) {
		cfg.BucketCount = chaosBuckets
		// Snapshots often and few trailing entries (the default keeps
		// 10240), so followers install snapshots, old ones included: with
		// these a hashicorp/raft follower panicked now and then ("log not
		// found" in processLogs after installing a snapshot older than what
		// it had applied), until the state machine refused such snapshots
		// (docs/CHAOS.md, TestCluster_StaleSnapshotRefused).
		cfg.SnapshotThreshold, cfg.SnapshotInterval, cfg.TrailingLogs = 128, 100*time.Millisecond, 64
		disks.wrap(cfg)
	}})
	if spec.sabotage != nil {
		t.Cleanup(sabotage.Reset)
		spec.sabotage.Store(true)
	}
	admin := c.Client()
	obs := startObserver(c) // its report's times count from about when the schedule's log does
	tr = newTraffic(cluster.IDs(c.Members...))
	if err := tr.start(c.Addrs(), spec.seed, 3, 2); err != nil {
		t.Fatal(err)
	}
	dp := startDataPlane(c, 500, chaosBuckets, spec.seed)
	if n := dp.warm(10 * time.Second); n < 250 {
		t.Logf("only %d of 250 cold connections confirmed before the faults", n)
	}
	dp.startMap = c.Assignments() // for the S5 report
	var fill atomic.Int64
	logf := scheduleLogger(t)
	env := &chaosEnv{c: c, rng: rng, logf: logf, disk: disks, admin: admin, filler: func(n int) error {
		for range n {
			i := fill.Add(1)
			k := &pb.ConnKey{Protocol: 17, SrcIp: netip.AddrFrom4([4]byte{10, 98, byte(i >> 8), byte(i)}).String(),
				SrcPort: 53, DstIp: "198.51.100.8", DstPort: 53}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := admin.Claim(ctx, k, c.Members[0].ID)
			cancel()
			if err != nil {
				return err
			}
		}
		return nil
	}}

	kinds := faultKinds()
	faults := spec.faults
	if faults == nil {
		faults = []fault{kinds[spec.seed%uint64(len(kinds))]}
	}
	end := time.Now().Add(spec.dur)
	for i := 0; i < len(faults) || spec.faults == nil && time.Now().Before(end); i++ {
		var f fault
		if i < len(faults) {
			f = faults[i]
		} else {
			f = faultKinds()[rng.IntN(len(kinds))]
		}
		batch := []fault{f}
		if spec.faults == nil && rng.IntN(3) == 0 { // now and then two at once
			batch = append(batch, faultKinds()[rng.IntN(len(kinds))])
		}
		res.injected = append(res.injected, holdBatch(t, env, rng, batch, 300*time.Millisecond, 1700*time.Millisecond, spec.hold, logf)...)
	}
	// Heal everything, let the site settle, stop the traffic.
	c.HealAll()
	c.Hub.ClearDelays()
	for _, m := range c.Members {
		disks.set(m.ID, 0)
		if m.Server == nil {
			c.Start(m)
		}
	}
	waitMembers(t, c, 60*time.Second) // a member that joined at the end must be placed too: its moves would race the checks
	c.WaitPlaced(60 * time.Second)
	tr.halt()
	dp.halt()
	dp.flush(10 * time.Second)
	final, err := tr.finalReads(c.Addrs(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.WaitPlaced(30 * time.Second)
	c.WaitConverged(30 * time.Second)
	obs.stop()
	dp.closeAll()
	if err := compareLogs(c); err != nil {
		t.Errorf("logs differ: %v", err)
	}

	ops := tr.hist.Ops()
	res.claims = chaos.CheckLinearizable("claims", chaos.ClaimModel(), ops, []chaos.Kind{chaos.Claim, chaos.Release, chaos.Lookup}, time.Minute)
	res.locks = chaos.CheckLinearizable("locks", chaos.LockModel(obs.mayDrop), ops,
		[]chaos.Kind{chaos.Acquire, chaos.Renew, chaos.Unlock, chaos.GetLock}, time.Minute)
	res.grants, res.writes, res.staleWrites, res.fencing = tr.fencing.Check()
	res.act = obs.act.Check()
	res.terms, res.termViolations = obs.terms.Check()
	res.staleSnapshots = obs.staleSnapshots()
	res.durable, res.lost = chaos.CheckDurable(ops, final)
	res.deltas, res.wiped, res.deltaMissing = checkDeltas(t, c, dp, obs.wipedAfter)
	res.published = dp.published.Load()
	t.Logf("faults %v; %v; %v; fencing: %d grants, %d writes accepted, %d stale refused; activations: %d polls, %d spans, "+
		"%d overlaps (longest %v); %d terms; %d stale snapshots refused; %d acknowledged claims durable; %d connections confirmed checked at the primaries "+
		"(%d excused: their bucket lost every copy at once), of %d deltas published",
		res.injected, res.claims, res.locks, res.grants, res.writes, res.staleWrites, res.act.Polls, res.act.Activations,
		res.act.Overlaps, res.act.Longest, res.terms, res.staleSnapshots, res.durable, res.deltas, res.wiped, res.published)
	return res
}

// scheduleLogger returns t.Logf with each line stamped with the time since
// it was made and the wall clock (to match the members' logs).
func scheduleLogger(t *testing.T) func(format string, args ...any) {
	began := time.Now()
	return func(format string, args ...any) {
		now := time.Now()
		t.Logf("+%.1fms (%s) %s", float64(now.Sub(began))/1e6, now.UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

// faultOf is what the faults of the one-site (fault) and the two-site
// (siteFault) schedules share: they act on an environment of type E.
type faultOf[E any] interface {
	name() string
	inject(e E) error
	heal(e E) error
}

// holdBatch injects batch into env, keeps it for hold (when 0: holdMin plus
// up to holdSpan, drawn from rng after the injection, so a seed replays its
// draws in order), heals it in reverse and waits a quiet spell of 200-800 ms.
// A fault that cannot be injected is logged and skipped (two at once can
// leave nothing for the second to work on: no leader while the voters are
// cut off). It returns the names of the faults injected.
func holdBatch[E any, F faultOf[E]](t *testing.T, env E, rng *rand.Rand, batch []F, holdMin, holdSpan, hold time.Duration,
	logf func(format string, args ...any)) []string {
	t.Helper()
	var injected []string
	for _, f := range batch {
		if err := f.inject(env); err != nil {
			logf("%s not injected: %v", f.name(), err)
			continue
		}
		injected = append(injected, f.name())
	}
	drawn := holdMin + time.Duration(rng.IntN(int(holdSpan/time.Millisecond)))*time.Millisecond
	if hold == 0 {
		hold = drawn
	}
	time.Sleep(hold) // the fault lasts this long: the schedule's own time, not a wait for a condition
	for _, f := range slices.Backward(batch) {
		if err := f.heal(env); err != nil {
			t.Fatalf("heal %s: %v", f.name(), err)
		}
	}
	time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond) // quiet spell between faults
	return injected
}

// waitMembers waits until every running member is an alive (or draining)
// member in the leader's state machine: one that joined late is then in the
// bucket map WaitPlaced settles.
func waitMembers(t *testing.T, c *cluster.Cluster, timeout time.Duration) {
	cluster.CheckFor(t, timeout, 20*time.Millisecond, func() error {
		l := c.Leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		for _, m := range c.RunningNow() {
			st, ok := l.Server.FSM().Member(m.ID)
			if !ok || (st.State != pb.MemberState_MEMBER_STATE_ALIVE && st.State != pb.MemberState_MEMBER_STATE_DRAINING) {
				return fmt.Errorf("running member %s is not an alive member yet (known %v, %+v)", m.ID, ok, st)
			}
		}
		return nil
	})
}

// checkDeltas (S5): every connection whose version a primary confirmed
// replicated is at its bucket's primary now, at that version or newer,
// unless lost(bucket, confirmed at) says its bucket lost every copy after it
// was confirmed (on one site: the primary and its backup failed together, a
// double fault; counted in wiped). The map is read again when a member asked
// no longer is a bucket's primary.
func checkDeltas(t *testing.T, c *cluster.Cluster, dp *dataPlane, lost func(b uint32, at int64) bool) (checked, wiped int, missing []string) {
	t.Helper()
	cluster.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		var err error
		checked, wiped, missing, err = checkDeltasOnce(t, c, dp, lost)
		return err
	})
	return checked, wiped, missing
}

// checkDeltasOnce is checkDeltas on one reading of the bucket map; it
// returns an error when a primary's Dump says it no longer is.
func checkDeltasOnce(t *testing.T, c *cluster.Cluster, dp *dataPlane, lost func(b uint32, at int64) bool) (checked, wiped int, missing []string, err error) {
	as := c.Assignments()
	have := map[fsm.Key]uint32{}
	held := map[uint32]int{}                      // states the primary holds per bucket
	dps := map[string]pb.DataPlaneServiceClient{} // one connection per primary
	for b, a := range as {
		dc, ok := dps[a.Primary]
		if !ok {
			m := c.Member(a.Primary)
			if m == nil || m.Server == nil {
				t.Fatalf("primary %s is not running", a.Primary)
			}
			dc = pb.NewDataPlaneServiceClient(dial(t, m.Addr()))
			dps[a.Primary] = dc
		}
		r, err := dc.Dump(context.Background(), &pb.DumpRequest{Bucket: uint32(b)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Role != "primary" {
			return 0, 0, nil, fmt.Errorf("bucket %d: %s is %s, not primary, now: the map moved", b, a.Primary, r.Role)
		}
		for _, st := range r.States {
			k, _ := bucketOf(t, st)
			if len(st.Blob) == 4 {
				have[k] = binary.BigEndian.Uint32(st.Blob)
			}
			held[uint32(b)]++
		}
	}
	for i, v := range dp.confirmed {
		if v == 0 {
			continue
		}
		k, err := fsm.ParseKey(dataConn(i, 0).Key, "key")
		if err != nil {
			t.Fatal(err)
		}
		if lost(k.Bucket(uint32(dp.buckets)), dp.at[i]) {
			wiped++
			continue
		}
		checked++
		if got := have[k]; got < v {
			b := k.Bucket(uint32(dp.buckets))
			missing = append(missing, fmt.Sprintf("connection %d (bucket %d, now %+v; before the faults %+v): confirmed version %d, the primary has %d (and %d states of the bucket)",
				i, b, as[b], dp.startMap[b], v, got, held[b]))
		}
	}
	return checked, wiped, missing, nil
}

// compareLogs checks that the running members' Raft logs hold the same
// entries over the range all of them still have.
func compareLogs(c *cluster.Cluster) error {
	ms := c.Running()
	stores := make([]raft.LogStore, len(ms))
	for i, m := range ms {
		stores[i] = m.Server.LogStore()
	}
	_, err := compareLogStores(cluster.IDs(ms...), stores, true)
	return err
}

// compareLogStores checks that the members' logs (names[i] is stores[i]'s)
// hold the same entries, by term, type and data, over the range all of them
// have, and returns how many it compared. compacting: the members run, so
// an entry may be compacted away while it reads; such an entry is skipped.
func compareLogStores(names []string, stores []raft.LogStore, compacting bool) (int, error) {
	var first, last uint64
	for i, s := range stores {
		f, err := s.FirstIndex()
		if err != nil {
			return 0, err
		}
		l, err := s.LastIndex()
		if err != nil {
			return 0, err
		}
		if i == 0 || f > first {
			first = f
		}
		if i == 0 || l < last {
			last = l
		}
	}
	checked := 0
next:
	for idx := first; idx <= last && idx > 0; idx++ {
		var want raft.Log
		for i, s := range stores {
			var got raft.Log
			if err := s.GetLog(idx, &got); err != nil {
				if compacting && (i == 0 || errors.Is(err, raft.ErrLogNotFound)) {
					continue next
				}
				return checked, fmt.Errorf("%s: entry %d: %w", names[i], idx, err)
			}
			if i == 0 {
				want = got
				continue
			}
			if got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) {
				return checked, fmt.Errorf("entry %d: %s has term %d type %v, %s has term %d type %v (or other data)",
					idx, names[0], want.Term, want.Type, names[i], got.Term, got.Type)
			}
		}
		checked++
	}
	return checked, nil
}

// TestChaos_CheckersCatchBrokenProperties breaks each safety property on
// purpose (internal/sabotage) and runs a schedule that exercises it: the
// checker of that property must report it. A checker that cannot fail
// proves nothing.
func TestChaos_CheckersCatchBrokenProperties(t *testing.T) {
	cases := []struct {
		name     string
		sabotage *atomic.Bool
		faults   []fault
		caught   func(r *chaosResult) bool
	}{
		{"S1 member acts without a lease", &sabotage.IgnoreMemberLease, []fault{&leaderIsolation{}},
			func(r *chaosResult) bool { return r.act.Overlaps > 0 }},
		{"S2 lock tokens reused", &sabotage.ReuseLockTokens, []fault{&transferFault{}},
			func(r *chaosResult) bool { return len(r.fencing) > 0 && !r.locks.OK() }},
		{"S3 claims stolen", &sabotage.StealClaims, []fault{&transferFault{}},
			func(r *chaosResult) bool { return !r.claims.OK() }},
		{"S4 claims acknowledged but not stored", &sabotage.ForgetClaims, []fault{&transferFault{}},
			func(r *chaosResult) bool { return len(r.lost) > 0 }},
		{"S5 backups drop deltas", &sabotage.DropDeltas, []fault{&crashFault{}},
			func(r *chaosResult) bool { return len(r.deltaMissing) > 0 }},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runChaos(t, chaosSpec{seed: uint64(1000 + i), faults: tc.faults, hold: 3 * time.Second, sabotage: tc.sabotage})
			vs := r.violations()
			if !tc.caught(r) {
				t.Fatalf("the checker did not catch the sabotage; violations reported: %v", vs)
			}
			t.Logf("caught: %d violations, first: %s", len(vs), vs[0])
		})
	}
}
