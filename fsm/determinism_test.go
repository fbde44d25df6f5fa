package fsm

import (
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

// TestFSM_Determinism applies a random sequence of operations to two FSMs,
// moves the state of one into a third by snapshot and restore halfway, and
// checks all three return the same results and end in byte-identical state.
// The seed is logged; set CONNSYNC_SEED to replay one.
func TestFSM_Determinism(t *testing.T) {
	if s := os.Getenv("CONNSYNC_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CONNSYNC_SEED=%q: %v", s, err)
		}
		runDeterminism(t, seed)
		return
	}
	for _, seed := range []uint64{1, uint64(time.Now().UnixNano())} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runDeterminism(t, seed) })
	}
}

const determinismOps = 4000

// gen generates random operations, steered by what the FSMs answered so that
// a fair share of them succeed (right epochs and tokens) and the others fail
// in every way they can.
type gen struct {
	t     *testing.T
	rng   *rand.Rand
	keys  []Key
	mems  []string
	now   int64
	index uint64

	claims map[Key]Result // last known claim per key
	locks  map[Key]Result // last known lock per key
	seqs   map[uint64]uint64
	acked  map[uint64]uint64
	past   []*ipb.Proposal   // session proposals applied so far, for retries
	retry  []bool            // per proposal of the last entry: is it a retry
	tokens uint64            // largest token handed out by an acquire
	epochs map[uint32]uint64 // bucket epochs as the last reassign planned them
	fsm    *FSM              // read-only: current epochs for reassign plans
}

func newGen(t *testing.T, seed uint64) *gen {
	g := &gen{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), now: t0,
		claims: map[Key]Result{}, locks: map[Key]Result{}, seqs: map[uint64]uint64{}, acked: map[uint64]uint64{},
		epochs: map[uint32]uint64{}}
	for i := uint32(0); i < 24; i++ {
		g.keys = append(g.keys, tcpKey(t, 1000+i))
	}
	for i := uint32(0); i < 8; i++ {
		g.keys = append(g.keys, mustParse(t, "v6", 17, "2001:db8::1", 2000+i, "2001:db8::2", 53))
	}
	g.mems = []string{"m1", "m2", "m3", "m4", "m5"}
	return g
}

func (g *gen) key() Key { return g.keys[g.rng.IntN(len(g.keys))] }

func (g *gen) member() string {
	if g.rng.IntN(20) == 0 {
		return "ghost"
	}
	return g.mems[g.rng.IntN(len(g.mems))]
}

func (g *gen) ttl() time.Duration {
	switch g.rng.IntN(20) {
	case 0:
		return 0 // invalid
	case 1:
		return MaxLockTTL + time.Duration(g.rng.IntN(10)+1) // invalid
	}
	return time.Duration(g.rng.Int64N(int64(20*time.Second))) + time.Millisecond
}

// epoch returns the known epoch or token r, or sometimes a wrong or zero one.
func (g *gen) epoch(r Result) uint64 {
	switch g.rng.IntN(10) {
	case 0:
		return 0
	case 1:
		return r.Epoch + uint64(g.rng.IntN(3)) + 1
	}
	return r.Epoch
}

// holder returns the known holder of r, or sometimes another member.
func (g *gen) holder(r Result) string {
	if r.MemberID == "" || g.rng.IntN(6) == 0 {
		return g.member()
	}
	return r.MemberID
}

func (g *gen) op() *ipb.Op {
	k := g.key()
	switch n := g.rng.IntN(100); {
	case n < 25:
		return claimOp(k, g.member())
	case n < 45:
		c := g.claims[k]
		return releaseOp(k, g.holder(c), g.epoch(c))
	case n < 65:
		return acquireOp(k, g.member(), g.ttl())
	case n < 80:
		l := g.locks[k]
		return renewOp(k, g.holder(l), g.epoch(l), g.ttl())
	case n < 92:
		l := g.locks[k]
		return releaseLockOp(k, g.holder(l), g.epoch(l))
	case n < 95:
		states := []pb.MemberState{pb.MemberState_MEMBER_STATE_ALIVE, pb.MemberState_MEMBER_STATE_LEFT,
			pb.MemberState_MEMBER_STATE_FAILED}
		return setStateOp(g.member(), states[g.rng.IntN(len(states))])
	case n < 97:
		return registerOp(g.mems[g.rng.IntN(len(g.mems))])
	case n < 98:
		return g.reassign()
	case n < 99:
		var be []*pb.BucketEpoch
		for range g.rng.IntN(3) + 1 {
			b := g.key().Bucket(DefaultBucketCount)
			be = append(be, &pb.BucketEpoch{Bucket: b, Epoch: g.epochs[b]})
		}
		return markSyncedOp(g.member(), be...)
	default:
		var recs []*ipb.BucketRecord
		for range g.rng.IntN(4) + 1 {
			b := g.key().Bucket(DefaultBucketCount)
			if g.rng.IntN(15) == 0 {
				b = DefaultBucketCount + uint32(g.rng.IntN(10)) // invalid: the whole op fails
			}
			recs = append(recs, &ipb.BucketRecord{Bucket: b, Primary: g.member(), LocalBackup: g.member()})
		}
		return assignOp(recs...)
	}
}

// reassign changes a few buckets, planned from the current epochs (read
// from the first FSM) or sometimes a stale one, sometimes failing a member in
// the same step.
func (g *gen) reassign() *ipb.Op {
	var ms []*ipb.SetMemberStateOp
	if g.rng.IntN(8) == 0 {
		ms = append(ms, &ipb.SetMemberStateOp{MemberId: g.member(), State: pb.MemberState_MEMBER_STATE_FAILED})
	}
	var cs []*ipb.BucketChange
	for range g.rng.IntN(3) + 1 {
		b := g.key().Bucket(DefaultBucketCount)
		a, _ := g.fsm.Assignment(b)
		prev := a.Revision
		if g.rng.IntN(8) == 0 {
			prev++
		}
		p, lb := g.member(), g.member()
		if lb == p && g.rng.IntN(4) != 0 {
			lb = ""
		}
		cs = append(cs, &ipb.BucketChange{Bucket: b, PrevRevision: prev, Primary: p,
			LocalBackup: lb, BackupSynced: g.rng.IntN(2) == 0})
		if g.rng.IntN(3) == 0 {
			c := cs[len(cs)-1]
			c.Incoming, c.IncomingSynced, c.IncomingPrimary = g.member(), g.rng.IntN(2) == 0, g.rng.IntN(2) == 0
		}
		g.epochs[b] = g.index // what MarkSynced will report, if this succeeds
	}
	return reassignOp(ms, cs...)
}

func (g *gen) proposal() (p *ipb.Proposal, retry bool) {
	if len(g.past) > 0 && g.rng.IntN(10) == 0 {
		return proto.Clone(g.past[g.rng.IntN(len(g.past))]).(*ipb.Proposal), true
	}
	p = &ipb.Proposal{}
	if g.rng.IntN(2) == 0 {
		c := uint64(g.rng.IntN(4) + 1)
		g.seqs[c]++
		if g.rng.IntN(4) == 0 {
			g.acked[c] = max(g.acked[c], g.seqs[c]-uint64(g.rng.IntN(3)))
		}
		p.ClientId, p.Seq, p.AckedSeq = c, g.seqs[c], g.acked[c]
	}
	for range g.rng.IntN(3) + 1 {
		p.Ops = append(p.Ops, g.op())
	}
	if p.ClientId != 0 {
		g.past = append(g.past, proto.Clone(p).(*ipb.Proposal))
	}
	return p, false
}

func (g *gen) entry() *ipb.Entry {
	switch n := g.rng.IntN(100); {
	case n < 10: // a leader with a slower clock
		g.now -= g.rng.Int64N(int64(5 * time.Second))
	case n < 11: // a long pause: sessions expire
		g.now += int64(SessionTTL) + g.rng.Int64N(int64(time.Minute))
	case n < 20: // a slow period: locks expire, sweeps run
		g.now += g.rng.Int64N(int64(10 * time.Second))
	default:
		g.now += g.rng.Int64N(int64(500 * time.Millisecond))
	}
	e := &ipb.Entry{TimeUnixNano: g.now}
	g.retry = g.retry[:0]
	for range g.rng.IntN(3) + 1 {
		p, retry := g.proposal()
		e.Proposals = append(e.Proposals, p)
		g.retry = append(g.retry, retry)
	}
	return e
}

// learn records what the FSM answered, to aim later operations.
func (g *gen) learn(e *ipb.Entry, out []ProposalResult) {
	for i, p := range e.Proposals {
		for j, r := range out[i] {
			if j >= len(p.Ops) || r.Err != nil && r.MemberID == "" {
				continue // a cached answer of another shape, or nothing to learn
			}
			switch o := p.Ops[j].Op.(type) {
			case *ipb.Op_Claim:
				g.claims[Key(o.Claim.Key)] = r
			case *ipb.Op_Release:
				if r.Err == nil {
					delete(g.claims, Key(o.Release.Key))
				} else {
					g.claims[Key(o.Release.Key)] = r
				}
			case *ipb.Op_AcquireLock:
				g.locks[Key(o.AcquireLock.Key)] = r
			case *ipb.Op_RenewLock:
				g.locks[Key(o.RenewLock.Key)] = r
			case *ipb.Op_ReleaseLock:
				if r.Err == nil {
					delete(g.locks, Key(o.ReleaseLock.Key))
				}
			}
		}
	}
}

func runDeterminism(t *testing.T, seed uint64) {
	t.Logf("seed %d (replay with CONNSYNC_SEED=%d)", seed, seed)
	g := newGen(t, seed)
	a, idx := newSite(t, g.mems...)
	b, _ := newSite(t, g.mems...)
	var c *FSM
	g.index = idx
	g.fsm = a

	ops, okOps, entries := 0, map[string]int{}, 0
	restored := false
	for ops < determinismOps {
		e := g.entry()
		ra := a.ApplyEntry(g.index, e)
		rb := b.ApplyEntry(g.index, proto.Clone(e).(*ipb.Entry))
		if !reflect.DeepEqual(ra, rb) {
			t.Fatalf("index %d: results differ:\nA %+v\nB %+v", g.index, ra, rb)
		}
		if c != nil {
			rc := c.ApplyEntry(g.index, proto.Clone(e).(*ipb.Entry))
			if !reflect.DeepEqual(ra, rc) {
				t.Fatalf("index %d: restored FSM's results differ:\nA %+v\nC %+v", g.index, ra, rc)
			}
		}
		// Fencing tokens of fresh grants only grow (a retry answered from
		// its session repeats an older one).
		for i, p := range e.Proposals {
			for j, r := range ra[i] {
				if j >= len(p.Ops) || r.Err != nil {
					continue
				}
				okOps[fmt.Sprintf("%T", p.Ops[j].Op)]++
				if _, acq := p.Ops[j].Op.(*ipb.Op_AcquireLock); acq && !g.retry[i] {
					if r.Epoch <= g.tokens {
						t.Fatalf("index %d: acquire granted token %d after %d", g.index, r.Epoch, g.tokens)
					}
					g.tokens = r.Epoch
				}
			}
			ops += len(p.Ops)
		}
		g.learn(e, ra)
		g.index++
		entries++

		if !restored && ops >= determinismOps/2 {
			restored = true
			sameState(t, "A and B midway", a, b)
			snap, err := b.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			data := persistSnap(t, snap)
			// C had state of its own before; Restore must replace it.
			c, _ = newSite(t, "other")
			applyProposal(t, c, 100, sec(1), prop(3, 1, 0, claimOp(g.keys[0], "other"),
				acquireOp(g.keys[1], "other", time.Hour)))
			if err := restore(t, c, data); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			sameState(t, "A and C after restore", a, c)
		}
	}
	sameState(t, "A and B at the end", a, b)
	sameState(t, "A and C at the end", a, c)
	st := a.Stats()
	t.Logf("%d entries, %d ops; successes by kind %v; final %+v", entries, ops, okOps, st)

	// The sequence must exercise the interesting paths, or it proves little.
	for _, kind := range []string{"*raftlogv1.Op_Claim", "*raftlogv1.Op_Release", "*raftlogv1.Op_AcquireLock",
		"*raftlogv1.Op_RenewLock", "*raftlogv1.Op_ReleaseLock"} {
		if okOps[kind] < 10 {
			t.Errorf("only %d successful %s ops", okOps[kind], kind)
		}
	}
}
