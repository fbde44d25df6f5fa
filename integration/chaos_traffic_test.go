package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/integration/chaos"
	"github.com/connsync/connsync/integration/cluster"
)

// chaosKey is the i-th key of one traffic class ("c" claims, "l" locks):
// a TCP connection that no delay class matches.
func chaosKey(class byte, i int) *pb.ConnKey {
	src := netip.AddrFrom4([4]byte{10, 99, class, byte(i)})
	return &pb.ConnKey{Protocol: 6, SrcIp: src.String(), SrcPort: uint32(20000 + i), DstIp: "198.51.100.7", DstPort: 443}
}

func keyName(k *pb.ConnKey) string { return fmt.Sprintf("%s:%d", k.SrcIp, k.SrcPort) }

// traffic drives claims, releases, lookups and locks through real clients
// and records every call in hist; lock holders write to the fencing oracle.
type traffic struct {
	hist    *chaos.History
	fencing *chaos.Fencing
	members []string // the members claims and locks are made for
	claims  []*pb.ConnKey
	locks   []*pb.ConnKey
	clients atomic.Int64
	wg      sync.WaitGroup
	stop    chan struct{}
}

func newTraffic(members []string) *traffic {
	tr := &traffic{hist: &chaos.History{}, fencing: chaos.NewFencing(), members: members, stop: make(chan struct{})}
	for i := 0; i < 12; i++ {
		tr.claims = append(tr.claims, chaosKey('c', i))
	}
	for i := 0; i < 6; i++ {
		tr.locks = append(tr.locks, chaosKey('l', i))
	}
	return tr
}

// newClient opens a client of the site at addrs with a short deadline: a
// call cut off by a fault ends as Unknown rather than hanging the run.
func newClient(addrs []string) (*client.Client, error) {
	return client.New(client.Config{Addrs: addrs, Timeout: 2 * time.Second})
}

// start runs nClaim claim clients and nLock lock clients, each with its own
// client and random source (seeded from seed).
func (tr *traffic) start(addrs []string, seed uint64, nClaim, nLock int) error {
	for i := 0; i < nClaim+nLock; i++ {
		cl, err := newClient(addrs)
		if err != nil {
			return err
		}
		id := int(tr.clients.Add(1)) - 1
		rng := rand.New(rand.NewPCG(seed, uint64(id)))
		tr.wg.Add(1)
		go func(lock bool) {
			defer tr.wg.Done()
			defer cl.Close()
			if lock {
				tr.lockClient(cl, id, rng)
			} else {
				tr.claimClient(cl, id, rng)
			}
		}(i >= nClaim)
	}
	return nil
}

func (tr *traffic) halt() {
	close(tr.stop)
	tr.wg.Wait()
}

func (tr *traffic) stopped() bool {
	select {
	case <-tr.stop:
		return true
	default:
		return false
	}
}

// pace waits a little between calls, so traffic leaves the two cores some
// room for the cluster and the observers.
func (tr *traffic) pace(rng *rand.Rand) {
	select {
	case <-tr.stop:
	case <-time.After(time.Duration(1+rng.IntN(5)) * time.Millisecond):
	}
}

// do makes one call and records it; call fills in the results it learns.
func (tr *traffic) do(op chaos.Op, call func(ctx context.Context, op *chaos.Op) error) chaos.Op {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	op.Call = chaos.Now()
	err := call(ctx, &op)
	op.Return = chaos.Now()
	op.Outcome, op.Reason = chaos.Classify(err)
	if err != nil {
		op.Err = err.Error()
	}
	tr.hist.Add(op)
	return op
}

func (tr *traffic) claimClient(cl *client.Client, id int, rng *rand.Rand) {
	for !tr.stopped() {
		k := tr.claims[rng.IntN(len(tr.claims))]
		op := chaos.Op{Client: id, Key: keyName(k), Member: tr.members[rng.IntN(len(tr.members))]}
		switch r := rng.IntN(10); {
		case r < 4:
			op.Kind = chaos.Claim
			tr.do(op, func(ctx context.Context, op *chaos.Op) error {
				c, err := cl.Claim(ctx, k, op.Member)
				op.Epoch = c.GetEpoch()
				return err
			})
		case r < 7:
			op.Kind = chaos.Release
			tr.do(op, func(ctx context.Context, op *chaos.Op) error { return cl.Release(ctx, k, op.Member, 0) })
		default:
			tr.lookup(cl, id, k)
		}
		tr.pace(rng)
	}
}

// lookup records a linearizable lookup of k's claim.
func (tr *traffic) lookup(cl *client.Client, id int, k *pb.ConnKey) chaos.Op {
	return tr.do(chaos.Op{Client: id, Kind: chaos.Lookup, Key: keyName(k)}, func(ctx context.Context, op *chaos.Op) error {
		own, err := cl.Lookup(ctx, k, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		op.Owner, op.Epoch = own.GetClaim().GetMemberId(), own.GetClaim().GetEpoch()
		return err
	})
}

// lockResult fills a lock answer into op.
func lockResult(op *chaos.Op, l *pb.Lock) {
	op.Owner, op.Epoch = l.GetMemberId(), l.GetToken()
	if l.GetExpiresAt() != nil {
		op.Expires = l.GetExpiresAt().AsTime().UnixNano()
	}
}

// lockClient acts for one member at a time: acquire a random lock, and
// while it holds it, write to the fenced resource, renew, and release.
func (tr *traffic) lockClient(cl *client.Client, id int, rng *rand.Rand) {
	for !tr.stopped() {
		k := tr.locks[rng.IntN(len(tr.locks))]
		member := tr.members[rng.IntN(len(tr.members))]
		if rng.IntN(4) == 0 {
			tr.getLock(cl, id, k)
			tr.pace(rng)
			continue
		}
		ttl := time.Duration(300+rng.IntN(1200)) * time.Millisecond
		op := tr.do(chaos.Op{Client: id, Kind: chaos.Acquire, Key: keyName(k), Member: member, TTL: int64(ttl)},
			func(ctx context.Context, op *chaos.Op) error {
				l, err := cl.AcquireLock(ctx, k, member, ttl)
				lockResult(op, l)
				return err
			})
		if op.Outcome != chaos.OK {
			tr.pace(rng)
			continue
		}
		tr.fencing.Grant(op.Key, member, op.Epoch, op.Call, op.Return)
		token := op.Epoch
		for n := rng.IntN(4); n >= 0 && !tr.stopped(); n-- {
			tr.fencing.Write(op.Key, token)
			tr.pace(rng)
			if rng.IntN(2) == 0 {
				continue
			}
			rop := tr.do(chaos.Op{Client: id, Kind: chaos.Renew, Key: op.Key, Member: member, Token: token, TTL: int64(ttl)},
				func(ctx context.Context, op *chaos.Op) error {
					l, err := cl.RenewLock(ctx, k, member, token, ttl)
					lockResult(op, l)
					return err
				})
			if rop.Outcome != chaos.OK {
				break
			}
		}
		if rng.IntN(5) > 0 { // else let it run out
			tr.do(chaos.Op{Client: id, Kind: chaos.Unlock, Key: op.Key, Member: member, Token: token},
				func(ctx context.Context, _ *chaos.Op) error { return cl.ReleaseLock(ctx, k, member, token) })
		}
		tr.pace(rng)
	}
}

// getLock records a linearizable read of k's lock.
func (tr *traffic) getLock(cl *client.Client, id int, k *pb.ConnKey) chaos.Op {
	return tr.do(chaos.Op{Client: id, Kind: chaos.GetLock, Key: keyName(k)}, func(ctx context.Context, op *chaos.Op) error {
		l, err := cl.GetLock(ctx, k, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		lockResult(op, l)
		return err
	})
}

// finalReads reads every key once more after the faults healed, until each
// read has a definite answer (or the deadline passes); they end the history,
// and the claims' answers are what S4 is checked against.
func (tr *traffic) finalReads(addrs []string, deadline time.Duration) (map[string]chaos.Op, error) {
	cl, err := newClient(addrs)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	id := int(tr.clients.Add(1)) - 1
	final := map[string]chaos.Op{}
	end := time.Now().Add(deadline)
	for _, k := range tr.claims {
		for op := tr.lookup(cl, id, k); ; op = tr.lookup(cl, id, k) {
			if op.Outcome == chaos.OK {
				final[op.Key] = op
				break
			}
			if time.Now().After(end) {
				return nil, fmt.Errorf("final lookup of %s: %s", op.Key, op.Err)
			}
		}
	}
	for _, k := range tr.locks {
		for op := tr.getLock(cl, id, k); op.Outcome == chaos.Unknown; op = tr.getLock(cl, id, k) {
			if time.Now().After(end) {
				return nil, fmt.Errorf("final lock read of %s: %s", op.Key, op.Err)
			}
		}
	}
	return final, nil
}

// observer polls every running member of c every few milliseconds: which
// buckets it acts for (S1, S2), whether it leads and in which term, and which
// members the leader's state machine has seen fail or leave.
type observer struct {
	watch
	// wiped: when a bucket got a primary that held no copy of it (its
	// primary and every synced backup had failed together), by bucket.
	// Guarded by mu.
	wiped map[uint32][]int64
	last  []fsm.Assignment // the leader's bucket map at the last poll
	// lastStandby: the site was standby at the last poll.
	lastStandby bool
	// On two sites (nil on one): when this site last acted for each bucket,
	// and when the other site last acted for bucket b (0: never).
	ownActed   func() map[uint32]int64
	otherActed func(b uint32) int64
	// staleRefused: snapshots each state machine (one per member process)
	// refused as older than its applied state (hashicorp/raft#697). Written
	// by the poll loop only; read after stop.
	staleRefused map[*fsm.FSM]uint64
	// ownLast is ownActed when the site last went standby (it acts for
	// nothing while standby).
	ownLast map[uint32]int64
	// wentStandby counts the polls that found the site standby after one
	// that found it active.
	wentStandby int
}

// watch is what the in-process and the multi-process observers share: the
// activation and term checkers, the members seen down, and the polling
// goroutine's stop.
type watch struct {
	act     *chaos.Activations
	terms   *chaos.Terms
	mu      sync.Mutex
	downed  map[string]bool // members seen failed or left (or made victims of a fault)
	stopped chan struct{}
	done    chan struct{}
}

func newWatch() watch {
	return watch{act: chaos.NewActivations(), terms: chaos.NewTerms(), downed: map[string]bool{},
		stopped: make(chan struct{}), done: make(chan struct{})}
}

// down records that member may have failed or left (and so lost its locks).
func (w *watch) down(member string) {
	w.mu.Lock()
	w.downed[member] = true
	w.mu.Unlock()
}

func (w *watch) mayDrop(member string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.downed[member]
}

func (w *watch) stop() {
	close(w.stopped)
	<-w.done
}

func startObserver(c *cluster.Cluster) *observer {
	o := &observer{watch: newWatch(), wiped: map[uint32][]int64{}, staleRefused: map[*fsm.FSM]uint64{}}
	go func() {
		defer close(o.done)
		tick := time.NewTicker(3 * time.Millisecond)
		defer tick.Stop()
		seen := map[string]bool{}
		for {
			select {
			case <-o.stopped:
				return
			case <-tick.C:
			}
			running := map[string]bool{}
			for _, m := range c.RunningNow() {
				running[m.ID] = true
				seen[m.ID] = true
				active, _ := m.Server.Active()
				set := make(map[uint32]uint64, len(active))
				for _, a := range active {
					set[a.Bucket] = a.Epoch
				}
				o.act.Observe(m.ID, chaos.Now(), set)
				if n, _ := m.Server.FSM().StaleRestores(); n > 0 {
					o.staleRefused[m.Server.FSM()] = n
				}
				r := m.Server.Raft()
				if r.State() == raft.Leader {
					o.terms.Leader(r.CurrentTerm(), m.ID)
					as, _ := m.Server.FSM().Buckets()
					alive := map[string]bool{}
					for _, mm := range m.Server.FSM().Members() {
						alive[mm.ID] = mm.State == pb.MemberState_MEMBER_STATE_ALIVE || mm.State == pb.MemberState_MEMBER_STATE_DRAINING
					}
					o.noteWiped(as, alive, m.Server.FSM().Standby())
				}
				for _, mm := range m.Server.FSM().Members() {
					if mm.State == pb.MemberState_MEMBER_STATE_FAILED || mm.State == pb.MemberState_MEMBER_STATE_LEFT {
						o.down(mm.ID)
					}
				}
			}
			for id := range seen {
				if !running[id] {
					o.act.Forget(id)
					delete(seen, id)
				}
			}
		}
	}()
	return o
}

// noteWiped records the buckets whose new primary held no copy (neither
// their primary, nor their synced local backup, nor a synced incoming member
// before) while none of those is alive: a double fault, for which S5
// promises nothing. On two sites only the active site's map says where the
// data is: a standby site's changes lose nothing (the active site still
// holds every copy and syncs them again), but a standby site that activates
// loses every bucket whose primary did not hold a synced remote copy while
// the other site acted for it since this one last did (its copy was lost,
// and the other site, which held the data, is lost or deposed: a site-level
// double fault; the site logs how many). Polls every few milliseconds may
// miss a state in between.
func (o *observer) noteWiped(as []fsm.Assignment, alive map[string]bool, standby bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := chaos.Now()
	for b, a := range as {
		if standby || b >= len(o.last) {
			continue
		}
		p := o.last[b]
		var held, holderAlive bool
		if o.lastStandby { // activated since the last poll
			// A copy recorded synced holds the other site's latest; with
			// none, this site's own state is the latest only if the other
			// site has not acted for the bucket since this one last did
			// (a take-back after a handover or a deposition).
			held = a.Primary == p.Primary && p.RemoteCopySynced ||
				o.otherActed != nil && o.otherActed(uint32(b)) <= o.ownLast[uint32(b)]
		} else {
			held = a.Primary == p.Primary || (a.Primary == p.LocalBackup && p.BackupSynced) ||
				(a.Primary == p.Incoming && p.IncomingSynced)
			holderAlive = alive[p.Primary] || (p.BackupSynced && alive[p.LocalBackup]) || (p.IncomingSynced && alive[p.Incoming])
		}
		if !held && !holderAlive {
			o.wiped[uint32(b)] = append(o.wiped[uint32(b)], now)
		}
	}
	if standby && !o.lastStandby {
		if o.last != nil { // not the first poll
			o.wentStandby++
		}
		if o.ownActed != nil {
			o.ownLast = o.ownActed()
		}
	}
	o.last, o.lastStandby = as, standby
}

// wipedAfter reports whether bucket b lost every copy after time t.
func (o *observer) wipedAfter(b uint32, t int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, w := range o.wiped[b] {
		if w > t {
			return true
		}
	}
	return false
}

// dataPlane publishes connection states through each bucket's primary and
// tracks, per connection, the highest version a primary confirmed
// replicated (S5: it must be at the bucket's primary at the end). The first
// half of the connections are cold: published until confirmed, then never
// again, so a failover that loses one is not hidden by a later update; the
// other half are updated all along.
type dataPlane struct {
	sites     []*cluster.Cluster
	site      bool // confirmed when the standby site's remote backups have it too (site_replicated_through)
	n         int
	buckets   int
	mu        sync.Mutex
	version   []uint32 // last version published per connection
	confirmed []uint32 // highest version confirmed replicated
	at        []int64  // when it was confirmed
	streams   map[string]*pubStream
	stop      chan struct{}
	done      chan struct{}
	published atomic.Int64
	startMap  []fsm.Assignment // the bucket map when the faults began
}

type pubStream struct {
	st   pb.DataPlaneService_PublishClient
	conn interface{ Close() error }
	seq  uint64
	sent map[uint64][]int // seq -> connections (with their versions in version at send time)
	vers map[uint64][]uint32
}

func dataConn(i int, v uint32) *pb.ConnState {
	st := conn(i, 0)
	st.Key.DstIp = "198.51.100.77" // apart from the claim and lock keys
	st.Blob = binary.BigEndian.AppendUint32(nil, v)
	return st
}

func startDataPlane(c *cluster.Cluster, n, buckets int, seed uint64) *dataPlane {
	return startSitesDataPlane([]*cluster.Cluster{c}, false, n, buckets, seed)
}

// startSitesDataPlane is startDataPlane publishing to whichever of sites is
// active; with site, a version counts as confirmed once the standby site's
// remote backups have it too.
func startSitesDataPlane(sites []*cluster.Cluster, site bool, n, buckets int, seed uint64) *dataPlane {
	d := &dataPlane{sites: sites, site: site, n: n, buckets: buckets, version: make([]uint32, n), confirmed: make([]uint32, n), at: make([]int64, n),
		streams: map[string]*pubStream{}, stop: make(chan struct{}), done: make(chan struct{})}
	rng := rand.New(rand.NewPCG(seed, 7))
	go func() {
		defer close(d.done)
		for {
			select {
			case <-d.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			d.publish(d.pick(rng))
		}
	}()
	return d
}

// pick chooses the next batch: cold connections not yet confirmed first,
// then hot ones at random.
func (d *dataPlane) pick(rng *rand.Rand) []int {
	var idx []int
	d.mu.Lock()
	for i := 0; i < d.n/2 && len(idx) < 10; i++ {
		if d.confirmed[i] == 0 && d.version[i] < 50 { // 50 tries: a cold connection is not sent for ever
			idx = append(idx, i)
		}
	}
	d.mu.Unlock()
	for len(idx) < 20 {
		idx = append(idx, d.n/2+rng.IntN(d.n-d.n/2))
	}
	return idx
}

// warm waits until every cold connection is confirmed (or timeout), so the
// faults find them at the backups.
func (d *dataPlane) warm(timeout time.Duration) (confirmed int) {
	for end := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		d.mu.Lock()
		confirmed = 0
		for _, v := range d.confirmed[:d.n/2] {
			if v > 0 {
				confirmed++
			}
		}
		d.mu.Unlock()
		if confirmed == d.n/2 || time.Now().After(end) {
			return confirmed
		}
	}
}

func (d *dataPlane) halt() {
	close(d.stop)
	<-d.done
}

// primaries returns the bucket map of the running leader of the first
// site that is not standby, or nil.
func (d *dataPlane) primaries() []fsm.Assignment {
	for _, c := range d.sites {
		for _, m := range c.RunningNow() {
			if m.Server.IsLeader() && !m.Server.FSM().Standby() {
				as, _ := m.Server.FSM().Buckets()
				return as
			}
		}
	}
	return nil
}

// through is how far the answer confirms replication.
func (d *dataPlane) through(resp *pb.PublishResponse) uint64 { return replicatedThrough(resp, d.site) }

func (d *dataPlane) publish(idx []int) {
	as := d.primaries()
	if as == nil {
		return
	}
	byMember := map[string][]int{}
	for _, i := range idx {
		k, err := fsm.ParseKey(dataConn(i, 0).Key, "key")
		if err != nil {
			panic(err)
		}
		p := as[k.Bucket(uint32(d.buckets))].Primary
		byMember[p] = append(byMember[p], i)
	}
	for id, list := range byMember {
		ps := d.stream(id)
		if ps == nil {
			continue
		}
		req := &pb.PublishRequest{}
		vers := make([]uint32, len(list))
		d.mu.Lock()
		for j, i := range list {
			d.version[i]++
			vers[j] = d.version[i]
			req.Events = append(req.Events, &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_UPDATED, State: dataConn(i, vers[j])})
		}
		d.mu.Unlock()
		resp := d.exchange(id, ps, req)
		if resp == nil {
			continue
		}
		d.published.Add(int64(len(list)))
		if resp.Refused == 0 { // a batch with refusals is never confirmed: which events were refused is not tracked
			ps.sent[resp.Seq], ps.vers[resp.Seq] = list, vers
		}
		d.confirm(ps, d.through(resp))
	}
}

func (d *dataPlane) confirm(ps *pubStream, through uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for seq, list := range ps.sent {
		if seq > through {
			continue
		}
		for j, i := range list {
			if v := ps.vers[seq][j]; v > d.confirmed[i] {
				d.confirmed[i], d.at[i] = v, chaos.Now()
			}
		}
		delete(ps.sent, seq)
		delete(ps.vers, seq)
	}
}

func (d *dataPlane) stream(id string) *pubStream {
	if ps := d.streams[id]; ps != nil {
		return ps
	}
	var addr string
	for _, c := range d.sites {
		for _, m := range c.RunningNow() {
			if m.ID == id {
				addr = m.Addr()
			}
		}
	}
	if addr == "" {
		return nil
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil
	}
	st, err := pb.NewDataPlaneServiceClient(conn).Publish(context.Background())
	if err != nil {
		conn.Close()
		return nil
	}
	ps := &pubStream{st: st, conn: conn, sent: map[uint64][]int{}, vers: map[uint64][]uint32{}}
	d.streams[id] = ps
	return ps
}

// exchange sends req on member id's stream with the stream's next seq and
// returns the answer, or nil if the stream broke (it is dropped).
func (d *dataPlane) exchange(id string, ps *pubStream, req *pb.PublishRequest) *pb.PublishResponse {
	ps.seq++
	req.Seq = ps.seq
	if err := ps.st.Send(req); err != nil {
		d.drop(id)
		return nil
	}
	resp, err := ps.st.Recv()
	if err != nil {
		d.drop(id)
		return nil
	}
	return resp
}

// drop forgets a broken stream; its unconfirmed batches stay unconfirmed.
func (d *dataPlane) drop(id string) {
	if ps := d.streams[id]; ps != nil {
		ps.conn.Close()
		delete(d.streams, id)
	}
}

// flush asks every stream, with empty batches, until every batch sent on a
// stream still open is confirmed, or timeout.
func (d *dataPlane) flush(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		left := 0
		for id, ps := range d.streams {
			if len(ps.sent) == 0 {
				continue
			}
			resp := d.exchange(id, ps, &pb.PublishRequest{})
			if resp == nil {
				continue
			}
			d.confirm(ps, d.through(resp))
			left += len(ps.sent)
		}
		if left == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *dataPlane) closeAll() {
	for id := range d.streams {
		d.drop(id)
	}
}

// staleSnapshots is how many snapshots the members refused as stale; call
// it after stop.
func (o *observer) staleSnapshots() int {
	n := 0
	for _, c := range o.staleRefused {
		n += int(c)
	}
	return n
}
