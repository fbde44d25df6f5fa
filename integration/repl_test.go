package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
	"github.com/connsync/connsync/server/repl"
)

// conn returns the i-th test connection: TCP from ports 10000-59999 to port
// 5000, so no default delay class matches it.
func conn(i int, version byte) *pb.ConnState {
	src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	return &pb.ConnState{
		Key:        &pb.ConnKey{Protocol: 6, SrcIp: src.String(), SrcPort: uint32(10000 + i%50000), DstIp: "198.51.100.9", DstPort: 5000},
		TcpState:   pb.TcpState_TCP_STATE_ESTABLISHED,
		TcpWindows: []*pb.TcpWindow{{End: uint32(i), MaxEnd: uint32(i) + 1000, MaxWin: 65535}, {End: 7, MaxEnd: 9, MaxWin: 512}},
		TimeoutMs:  3600_000,
		Blob:       []byte{version},
	}
}

func bucketOf(t testing.TB, st *pb.ConnState) (fsm.Key, uint32) {
	t.Helper()
	k, err := fsm.ParseKey(st.Key, "key")
	if err != nil {
		t.Fatal(err)
	}
	return k, k.Bucket(fsm.DefaultBucketCount)
}

// publisher publishes through each member's DataPlaneService, routing every
// event to its bucket's primary, and tracks which batches each member has
// confirmed as replicated.
type publisher struct {
	t       testing.TB
	c       *cluster.Cluster
	mu      sync.Mutex
	streams map[string]pb.DataPlaneService_PublishClient
	seq     map[string]uint64
	// sent[member][seq] lists the connections (indexes) of that batch.
	sent    map[string]map[uint64][]int
	acked   map[int]bool // connections whose batch was reported replicated
	version map[int]byte // last version byte published per connection
	// site: a batch counts as replicated once the remote backups on the
	// other site have it too (site_replicated_through).
	site bool
}

func newPublisher(t testing.TB, c *cluster.Cluster) *publisher {
	return &publisher{t: t, c: c, streams: map[string]pb.DataPlaneService_PublishClient{}, seq: map[string]uint64{},
		sent: map[string]map[uint64][]int{}, acked: map[int]bool{}, version: map[int]byte{}}
}

func (p *publisher) stream(m *cluster.Member) pb.DataPlaneService_PublishClient {
	if st := p.streams[m.ID]; st != nil {
		return st
	}
	st, err := pb.NewDataPlaneServiceClient(dial(p.t, m.Addr())).Publish(context.Background())
	if err != nil {
		p.t.Fatal(err)
	}
	p.streams[m.ID] = st
	p.sent[m.ID] = map[uint64][]int{}
	return st
}

// publish sends connections idx (with version byte v) to their primaries, in
// batches, and returns how many were refused. A batch with refusals is sent
// again (to the primaries of the moment) for up to 5 s: right after a site
// forms or a bucket moves, a primary may not be active yet (a firewall
// learns that from WatchActivations); events sent twice just get a newer
// version.
func (p *publisher) publish(idx []int, v byte, typ pb.ConnEventType) int {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		refused := p.publishOnce(idx, v, typ)
		if refused == 0 || time.Now().After(deadline) {
			return refused
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *publisher) publishOnce(idx []int, v byte, typ pb.ConnEventType) int {
	p.t.Helper()
	as := p.c.Assignments()
	byMember := map[string][]int{}
	for _, i := range idx {
		_, b := bucketOf(p.t, conn(i, v))
		byMember[as[b].Primary] = append(byMember[as[b].Primary], i)
	}
	refused := 0
	for id, list := range byMember {
		m := p.c.Member(id)
		if m == nil || m.Server == nil {
			refused += len(list)
			continue
		}
		st := p.stream(m)
		for start := 0; start < len(list); start += 5000 {
			part := list[start:min(start+5000, len(list))]
			p.seq[id]++
			req := &pb.PublishRequest{Seq: p.seq[id]}
			for _, i := range part {
				req.Events = append(req.Events, &pb.ConnEvent{Type: typ, State: conn(i, v)})
			}
			if err := st.Send(req); err != nil {
				p.t.Fatalf("publish to %s: %v", id, err)
			}
			resp, err := st.Recv()
			if err != nil {
				p.t.Fatalf("publish answer from %s: %v", id, err)
			}
			refused += int(resp.Refused)
			p.sent[id][resp.Seq] = part
			for _, i := range part {
				p.version[i] = v
			}
			p.confirm(id, p.through(resp))
		}
	}
	return refused
}

func (p *publisher) through(resp *pb.PublishResponse) uint64 { return replicatedThrough(resp, p.site) }

// replicatedThrough is how far a Publish answer confirms replication: to the
// local backups, or with site to the standby site's remote backups too.
func replicatedThrough(resp *pb.PublishResponse, site bool) uint64 {
	if site {
		return resp.SiteReplicatedThrough
	}
	return resp.ReplicatedThrough
}

func (p *publisher) confirm(id string, through uint64) {
	for seq, part := range p.sent[id] {
		if seq <= through {
			for _, i := range part {
				p.acked[i] = true
			}
			delete(p.sent[id], seq)
		}
	}
}

// waitReplicated polls every stream (empty batches) until every batch sent
// has been confirmed replicated.
func (p *publisher) waitReplicated(timeout time.Duration) {
	p.t.Helper()
	cluster.CheckFor(p.t, timeout, 10*time.Millisecond, func() error {
		left := 0
		for id, st := range p.streams {
			if len(p.sent[id]) == 0 {
				continue
			}
			p.seq[id]++
			err := st.Send(&pb.PublishRequest{Seq: p.seq[id]})
			var resp *pb.PublishResponse
			if err == nil {
				resp, err = st.Recv()
			} else if _, rerr := st.Recv(); rerr != nil { // Send says io.EOF; Recv has the stream's status
				err = rerr
			}
			if status.Code(err) == codes.Aborted {
				p.resend(id)
				return fmt.Errorf("stream to %s aborted (%v): its unconfirmed events sent again", id, err)
			}
			if err != nil {
				return err
			}
			p.confirm(id, p.through(resp))
			left += len(p.sent[id])
		}
		if left > 0 {
			return fmt.Errorf("%d batches not confirmed replicated", left)
		}
		return nil
	})
}

// resend does what the API asks of a firewall whose Publish stream ended
// with Aborted: it sends the stream's unconfirmed events again, to the
// primaries of the moment, on new streams.
func (p *publisher) resend(id string) {
	p.t.Helper()
	byVersion := map[byte][]int{}
	for _, part := range p.sent[id] {
		for _, i := range part {
			byVersion[p.version[i]] = append(byVersion[p.version[i]], i)
		}
	}
	delete(p.streams, id)
	delete(p.sent, id)
	for v, idx := range byVersion {
		if r := p.publish(idx, v, pb.ConnEventType_CONN_EVENT_TYPE_UPDATED); r != 0 {
			p.t.Fatalf("%d unconfirmed events refused when sent again after the stream to %s was aborted", r, id)
		}
	}
}

// holds returns the states member m holds, by canonical key.
func holds(t testing.TB, m *cluster.Member, buckets map[uint32]bool) map[fsm.Key]*pb.ConnState {
	t.Helper()
	out := map[fsm.Key]*pb.ConnState{}
	dp := pb.NewDataPlaneServiceClient(dial(t, m.Addr()))
	for b := range buckets {
		r, err := dp.Dump(context.Background(), &pb.DumpRequest{Bucket: b})
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range r.States {
			k, _ := bucketOf(t, st)
			out[k] = st
		}
	}
	return out
}

// roleCounts counts the buckets of each primary/backup pair.
func roleCounts(as []fsm.Assignment) map[string]int {
	out := map[string]int{}
	for _, a := range as {
		out[a.Primary+"/"+a.LocalBackup]++
	}
	return out
}

// envInt reads a positive integer from the environment, or returns def.
func envInt(t testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// TestCluster_FailoversLoseNothing (S5): connections published on a
// 3-member site and confirmed replicated are all at the new primaries, at
// the version published, after each of several primary crashes (a member
// stopped); each stopped member restarts and is refilled by full sync before
// the next crash. The victims are chosen by a seeded random generator.
//
//	CONNSYNC_REPL_CONNS=1000000 CONNSYNC_REPL_FAILOVERS=5 go test ./integration -run FailoversLoseNothing -v -timeout 30m
func TestCluster_FailoversLoseNothing(t *testing.T) {
	n := envInt(t, "CONNSYNC_REPL_CONNS", 20000)
	failovers := envInt(t, "CONNSYNC_REPL_FAILOVERS", 2)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d connections, %d failovers", seed, n, failovers)
	rng := rand.New(rand.NewPCG(seed, seed))
	c := cluster.New(t, 3, cluster.Options{})
	p := newPublisher(t, c)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	start := time.Now()
	if r := p.publish(idx, 1, pb.ConnEventType_CONN_EVENT_TYPE_CREATED); r != 0 {
		t.Fatalf("%d connections refused", r)
	}
	t.Logf("published %d connections in %v", n, time.Since(start))
	totalChecked, totalLost := 0, 0
	for round := 1; round <= failovers; round++ {
		// Move some versions on, then wait until everything is confirmed.
		some := idx[:0:0]
		for _, i := range idx {
			if rng.IntN(4) == 0 {
				some = append(some, i)
			}
		}
		if r := p.publish(some, byte(round+1), pb.ConnEventType_CONN_EVENT_TYPE_UPDATED); r != 0 {
			t.Fatalf("round %d: %d updates refused", round, r)
		}
		p.waitReplicated(60 * time.Second)
		victim := c.Running()[rng.IntN(len(c.Running()))]
		checked, lost := crashAndCheck(t, c, p, idx, victim)
		totalChecked, totalLost = totalChecked+checked, totalLost+lost
		t.Logf("failover %d: stopped %s; %d connections it was primary of, %d lost", round, victim.ID, checked, lost)
		refill(t, c, victim, idx)
		p.streams = map[string]pb.DataPlaneService_PublishClient{} // the primaries have changed
	}
	t.Logf("%d failovers: %d connections checked, %d lost", failovers, totalChecked, totalLost)
	if totalLost > 0 {
		t.Fatalf("S5 violated: %d acknowledged connections lost", totalLost)
	}
}

// crashAndCheck stops victim, waits for its buckets to move, and checks that
// every connection of those buckets confirmed replicated is at the new
// primary at the version published. It returns how many it checked and lost.
func crashAndCheck(t *testing.T, c *cluster.Cluster, p *publisher, idx []int, victim *cluster.Member) (checked, lost int) {
	t.Helper()
	before := c.Assignments()
	moved := map[uint32]bool{}
	for b, a := range before {
		if a.Primary == victim.ID {
			moved[uint32(b)] = true
		}
	}
	c.Stop(victim)
	c.WaitForLeader(10 * time.Second)
	cluster.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		now := c.Assignments()
		for b := range moved {
			if now[b].Primary == victim.ID {
				return fmt.Errorf("bucket %d still on %s", b, victim.ID)
			}
		}
		return nil
	})
	after := c.Assignments()
	got := map[fsm.Key]*pb.ConnState{}
	for _, m := range c.Running() {
		mine := map[uint32]bool{}
		for b := range moved {
			if after[b].Primary == m.ID {
				mine[b] = true
			}
		}
		for k, st := range holds(t, m, mine) {
			got[k] = st
		}
	}
	for _, i := range idx {
		k, b := bucketOf(t, conn(i, 0))
		if !moved[b] || !p.acked[i] {
			continue
		}
		checked++
		if st := got[k]; st == nil || st.Blob[0] < p.version[i] {
			lost++
			if lost <= 5 {
				t.Logf("lost %s in bucket %d: at the new primary %v, published version byte %d; before %+v after %+v",
					k, b, st, p.version[i], before[b], after[b])
			}
		}
	}
	return checked, lost
}

// refill restarts a stopped member, waits until it has joined again and the
// site is placed with synced backups, and checks that the buckets it backs
// up hold every connection the test published into them.
func refill(t *testing.T, c *cluster.Cluster, victim *cluster.Member, idx []int) {
	t.Helper()
	c.Start(victim)
	cluster.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if m, _ := c.WaitForLeader(10 * time.Second).Server.FSM().Member(victim.ID); m.State != pb.MemberState_MEMBER_STATE_ALIVE {
			return fmt.Errorf("%s is %s", victim.ID, m.State)
		}
		return nil
	})
	c.WaitPlaced(120 * time.Second)
	now := c.Assignments()
	mine := map[uint32]bool{}
	for b, a := range now {
		if a.LocalBackup == victim.ID {
			mine[uint32(b)] = true
		}
	}
	held := holds(t, victim, mine)
	want := 0
	for _, i := range idx {
		if _, b := bucketOf(t, conn(i, 0)); mine[b] {
			want++
		}
	}
	if len(mine) == 0 || len(held) != want {
		t.Fatalf("restarted %s backs up %d buckets holding %d connections, want %d", victim.ID, len(mine), len(held), want)
	}
}

// TestCluster_DelayedConnectionsNeverSent: a connection of a delayed service
// closed within its delay never reaches the backup; one that lives longer is
// sent when its delay passes.
func TestCluster_DelayedConnectionsNeverSent(t *testing.T) {
	classes, err := repl.ParseDelayClasses("test=tcp:5000=300ms;default=any=immediate")
	if err != nil {
		t.Fatal(err)
	}
	c := cluster.New(t, 2, cluster.Options{Tweak: func(cfg *server.Config) { cfg.DelayClasses = classes }})
	p := newPublisher(t, c)
	short, long := []int{1, 2, 3}, []int{4, 5, 6}
	if r := p.publish(append(short, long...), 1, pb.ConnEventType_CONN_EVENT_TYPE_CREATED); r != 0 {
		t.Fatalf("%d refused", r)
	}
	if r := p.publish(short, 1, pb.ConnEventType_CONN_EVENT_TYPE_CLOSED); r != 0 {
		t.Fatalf("%d closes refused", r)
	}
	as := c.Assignments()
	backupHolds := func(i int) bool {
		k, b := bucketOf(t, conn(i, 0))
		return holds(t, c.Member(as[b].LocalBackup), map[uint32]bool{b: true})[k] != nil
	}
	for _, i := range long {
		if backupHolds(i) {
			t.Fatalf("connection %d reached its backup before its delay", i)
		}
	}
	cluster.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, i := range long {
			if !backupHolds(i) {
				return fmt.Errorf("connection %d not at its backup after its delay", i)
			}
		}
		return nil
	})
	for _, i := range short {
		if backupHolds(i) {
			t.Fatalf("short-lived connection %d reached its backup", i)
		}
	}
	st, err := pb.NewOperatorServiceClient(dial(t, c.Members[0].Addr())).SyncStatus(context.Background(), &pb.SyncStatusRequest{})
	if err != nil || len(st.DelayClasses) != 2 || st.DelayClasses[0].DelayMs != 300 {
		t.Fatalf("sync status: %v, %v", st, err)
	}
}

// TestCluster_BadEventsRefusedOneByOne: malformed or foreign events are
// refused with a reason naming the field; the good ones in the same batch
// are applied.
func TestCluster_BadEventsRefusedOneByOne(t *testing.T) {
	c := cluster.New(t, 2, cluster.Options{})
	m := c.Members[0]
	st, err := pb.NewDataPlaneServiceClient(dial(t, m.Addr())).Publish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	as := c.Assignments()
	var mineI, otherI = -1, -1
	for i := 0; mineI < 0 || otherI < 0; i++ {
		if i == 1<<20 {
			t.Fatalf("no connection found whose bucket %s is primary of and one it is not (map %v)", m.ID, roleCounts(as))
		}
		_, b := bucketOf(t, conn(i, 0))
		if as[b].Primary == m.ID && mineI < 0 {
			mineI = i
		} else if as[b].Primary != m.ID && otherI < 0 {
			otherI = i
		}
	}
	big := conn(mineI, 1)
	big.Blob = make([]byte, 2000)
	badIP := conn(mineI, 1)
	badIP.Key = &pb.ConnKey{Protocol: 6, SrcIp: "300.1.1.1", SrcPort: 1, DstIp: "10.0.0.1", DstPort: 2}
	req := &pb.PublishRequest{Seq: 1, Events: []*pb.ConnEvent{
		{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: conn(mineI, 1)},
		{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: big},
		{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: badIP},
		{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: conn(otherI, 1)},
		{Type: pb.ConnEventType_CONN_EVENT_TYPE_UNSPECIFIED, State: conn(mineI, 1)},
		{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED},
	}}
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]string{1: "events[1].state.blob", 2: "events[2].state.key.src_ip", 3: "is not active on", 4: "events[4].type", 5: "events[5].state.key"}
	if resp.Accepted != 1 || resp.Refused != 5 || len(resp.Errors) != 5 {
		t.Fatalf("answer %v", resp)
	}
	for _, e := range resp.Errors {
		if w := want[e.Index]; w == "" || !strings.Contains(e.Message, w) {
			t.Errorf("event %d refused with %q, want a message with %q", e.Index, e.Message, w)
		}
	}
	// Every refused event is named, beyond the 16 with a message: a firewall
	// resending only those named lost the rest (connsync-bench persistence
	// on a loaded machine, a whole batch refused while a lease lapsed).
	var many []*pb.ConnEvent
	for i := 0; len(many) < 40; i++ { // 40 connections of buckets m is not primary of
		if _, b := bucketOf(t, conn(i, 0)); as[b].Primary != m.ID {
			many = append(many, &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: conn(i, 2)})
		}
	}
	if err := st.Send(&pb.PublishRequest{Seq: 2, Events: append(many, &pb.ConnEvent{
		Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: conn(mineI, 2)})}); err != nil {
		t.Fatal(err)
	}
	if resp, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, e := range resp.Errors {
		if int(e.Index) != refused || e.Code != int32(codes.FailedPrecondition) {
			t.Fatalf("refusal %d: %v; want event %d, FailedPrecondition (answer %v)", refused, e, refused, resp)
		}
		if (e.Message != "") != (refused < 16) {
			t.Errorf("refusal %d: message %q; want one on the first 16 only", refused, e.Message)
		}
		refused++
	}
	if resp.Refused != 40 || refused != 40 || resp.Accepted != 1 {
		t.Fatalf("answer: %d accepted, %d refused, %d named; want 1, 40, 40", resp.Accepted, resp.Refused, refused)
	}
}

// backedUpBy picks a follower (the victim: stopping it starts no election)
// and the member backing up most of its buckets (the heir; placement spreads
// backups, but not necessarily over every pair), and returns n connections
// of buckets with that primary and backup, by bucket.
func backedUpBy(t *testing.T, c *cluster.Cluster, n int) (victim, heir *cluster.Member, idx []int, want map[uint32]map[fsm.Key]bool) {
	t.Helper()
	as := c.Assignments()
	pairs := roleCounts(as)
	for _, v := range c.Followers() {
		for _, h := range c.Running() {
			if h != v && (victim == nil || pairs[v.ID+"/"+h.ID] > pairs[victim.ID+"/"+heir.ID]) {
				victim, heir = v, h
			}
		}
	}
	if pairs[victim.ID+"/"+heir.ID] == 0 {
		t.Fatalf("no follower's bucket has a backup: %v", pairs)
	}
	want = map[uint32]map[fsm.Key]bool{}
	for i := 0; len(idx) < n; i++ {
		if i == 1<<22 {
			t.Fatalf("found %d of %d connections with primary %s and backup %s (%v)", len(idx), n, victim.ID, heir.ID, pairs)
		}
		k, b := bucketOf(t, conn(i, 0))
		if as[b].Primary == victim.ID && as[b].LocalBackup == heir.ID {
			idx = append(idx, i)
			if want[b] == nil {
				want[b] = map[fsm.Key]bool{}
			}
			want[b][k] = true
		}
	}
	return victim, heir, idx, want
}

// TestCluster_ActivationHandsOverBackedUpStates: when a primary stops, the
// member that takes a bucket over hands the bucket's backed-up states to its
// firewall on WatchActivations, at once and complete.
func TestCluster_ActivationHandsOverBackedUpStates(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	victim, heir, idx, want := backedUpBy(t, c, 500)
	p := newPublisher(t, c)
	if r := p.publish(idx, 3, pb.ConnEventType_CONN_EVENT_TYPE_CREATED); r != 0 {
		t.Fatalf("%d refused", r)
	}
	p.waitReplicated(10 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := pb.NewDataPlaneServiceClient(dial(t, heir.Addr())).WatchActivations(ctx, &pb.WatchActivationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint32]map[fsm.Key]byte{}
	recv := make(chan error, 1)
	var mu sync.Mutex
	go func() {
		for {
			a, err := st.Recv()
			if err != nil {
				recv <- err
				return
			}
			mu.Lock()
			if a.Active {
				if got[a.Bucket] == nil {
					got[a.Bucket] = map[fsm.Key]byte{}
				}
				for _, s := range a.States {
					k, _ := bucketOf(t, s)
					got[a.Bucket][k] = s.Blob[0]
				}
			}
			mu.Unlock()
		}
	}()
	c.Stop(victim)
	cluster.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for b, keys := range want {
			for k := range keys {
				if v, ok := got[b][k]; !ok || v != 3 {
					return fmt.Errorf("bucket %d: %s not handed over (have %d states)", b, k, len(got[b]))
				}
			}
		}
		return nil
	})
}

// TestCluster_SlowBackupBoundedByConnections: a backup that applies slowly
// makes the primary's stream coalesce: what waits is bounded by the number
// of connections, not by the number of updates, and the backup ends with
// the latest version of every connection.
func TestCluster_SlowBackupBoundedByConnections(t *testing.T) {
	var slow sync.Mutex
	c := cluster.New(t, 2, cluster.Options{Tweak: func(cfg *server.Config) {
		cfg.OnReplicaApply = func(uint32, fsm.Key, uint64) {
			slow.Lock() // one record at a time, 50 µs each: ~20k records/s
			time.Sleep(50 * time.Microsecond)
			slow.Unlock()
		}
	}})
	p := newPublisher(t, c)
	const conns, rounds = 1000, 30
	idx := make([]int, conns)
	for i := range idx {
		idx[i] = i
	}
	maxQueued := uint64(0)
	op := pb.NewOperatorServiceClient(dial(t, c.Members[0].Addr()))
	op1 := pb.NewOperatorServiceClient(dial(t, c.Members[1].Addr()))
	for r := 1; r <= rounds; r++ {
		typ := pb.ConnEventType_CONN_EVENT_TYPE_UPDATED
		if r == 1 {
			typ = pb.ConnEventType_CONN_EVENT_TYPE_CREATED
		}
		if n := p.publish(idx, byte(r), typ); n != 0 {
			t.Fatalf("round %d: %d refused", r, n)
		}
		for _, o := range []pb.OperatorServiceClient{op, op1} {
			st, err := o.SyncStatus(context.Background(), &pb.SyncStatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range st.Streams {
				maxQueued = max(maxQueued, s.Queued)
			}
		}
	}
	t.Logf("%d updates of %d connections: at most %d connections queued on a stream", conns*rounds, conns, maxQueued)
	if maxQueued > conns {
		t.Fatalf("%d queued on one stream for %d connections", maxQueued, conns)
	}
	p.waitReplicated(60 * time.Second)
	as := c.Assignments()
	byBackup := map[string]map[uint32]bool{}
	for _, i := range idx {
		_, b := bucketOf(t, conn(i, 0))
		lb := as[b].LocalBackup
		if byBackup[lb] == nil {
			byBackup[lb] = map[uint32]bool{}
		}
		byBackup[lb][b] = true
	}
	held := map[fsm.Key]*pb.ConnState{}
	for id, bs := range byBackup {
		for k, st := range holds(t, c.Member(id), bs) {
			held[k] = st
		}
	}
	for _, i := range idx {
		k, _ := bucketOf(t, conn(i, 0))
		if st := held[k]; st == nil || st.Blob[0] != rounds {
			t.Fatalf("connection %d at its backup: %v, want version byte %d", i, st, rounds)
		}
	}
}
