package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/integration/chaos"
)

// chaosProcSeeds is how many multi-process schedules CI runs (each takes
// about 20 s: five connsyncd processes start, place 4096 buckets, and are
// killed and paused).
const chaosProcSeeds = 2

// TestChaos_Processes runs fault schedules against a site of five real
// connsyncd processes on loopback: SIGKILL and restart from the data
// directory, and SIGSTOP for longer than the member lease then SIGCONT, of
// random members (the leader among them), under claim and lock traffic. It
// checks S3 (porcupine), S2 (fencing oracle), S1 (activations polled with
// GetActive), S4 (acknowledged claims at the end), one leader per term, and
// that every member's Raft log holds the same entries (read from the
// raft.db files once the processes have stopped).
//
//	go test ./integration -run 'TestChaos_Processes$' -chaos.seed 5 -v
func TestChaos_Processes(t *testing.T) {
	for _, seed := range seedsToRun([]uint64{101, 102}[:chaosProcSeeds]) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			ps := startProcSite(t, 5)
			runProcChaos(t, seed, *chaosDuration, ps, signalFaults(ps))
		})
	}
}

// TestChaos_Namespaces is TestChaos_Processes with every member in its own
// network namespace (netLab), which adds the kernel's faults: packet loss
// and delay with tc netem on a member's interface, and the interface down.
// It needs root; elsewhere it is skipped, saying why.
//
//	go test ./integration -run 'TestChaos_Namespaces$' -chaos.seed 5 -v
func TestChaos_Namespaces(t *testing.T) {
	for _, seed := range seedsToRun([]uint64{103, 104}[:chaosProcSeeds]) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			lab, err := newNetLab(t, 5)
			if err != nil {
				t.Skipf("no network namespaces: %v", err)
			}
			ps := startNetnsSite(t, lab, 5)
			rng := rand.New(rand.NewPCG(seed, 0x7c))
			faults := append(signalFaults(ps),
				procFault{"link-down", func(i int) error { return lab.link(i, false) }, func(i int) error { return lab.link(i, true) }})
			if lab.hasNft {
				faults = append(faults, procFault{"loss", func(i int) error {
					pct := 5 + rng.IntN(30)
					t.Logf("dropping %d%% of %s's packets", pct, ps.procs[i].id)
					return lab.loss(i, pct)
				}, func(i int) error { return lab.loss(i, 0) }})
			} else {
				t.Log("nft not installed: no packet-loss fault")
			}
			if lab.hasNetem {
				faults = append(faults, procFault{"netem-delay", func(i int) error {
					delay := 20 + rng.IntN(80)
					t.Logf("delaying %s's packets by %dms +- 10ms", ps.procs[i].id, delay)
					return lab.netem(i, "delay", fmt.Sprintf("%dms", delay), "10ms")
				}, func(i int) error { return lab.netem(i) }})
			} else {
				t.Log("tc netem is not available in this kernel: no delay fault here (the in-process schedules inject delays)")
			}
			runProcChaos(t, seed, *chaosDuration, ps, faults)
		})
	}
}

// A procFault is a fault of the multi-process schedules, on member i.
type procFault struct {
	name         string
	inject, heal func(i int) error
}

// signalFaults: SIGKILL and restart from the data directory; SIGSTOP, then
// SIGCONT (held longer than the member lease).
func signalFaults(ps *procSite) []procFault {
	return []procFault{
		{"kill-restart", func(i int) error { ps.procs[i].kill(); return nil }, func(i int) error { ps.restart(ps.procs[i]); return nil }},
		{"pause", func(i int) error { ps.procs[i].signal(syscall.SIGSTOP); return nil },
			func(i int) error { ps.procs[i].signal(syscall.SIGCONT); return nil }},
	}
}

// runProcChaos injects faults (the first chosen by the seed) into a running
// site of processes under traffic, then checks.
func runProcChaos(t *testing.T, seed uint64, dur time.Duration, ps *procSite, faults []procFault) {
	t.Logf("chaos seed %d; re-run: go test ./integration -run '%s$' -chaos.seed %d -chaos.duration %v -v",
		seed, strings.Split(t.Name(), "/")[0], seed, dur)
	rng := rand.New(rand.NewPCG(seed, 0x9e))
	began := time.Now()
	logf := func(format string, args ...any) {
		t.Logf("+%.1fms %s", float64(time.Since(began))/1e6, fmt.Sprintf(format, args...))
	}
	ids := make([]string, len(ps.procs))
	for i, p := range ps.procs {
		ids[i] = p.id
	}
	obs := startProcObserver(ps)
	tr := newTraffic(ids)
	if err := tr.start(ps.addrs(), seed, 3, 2); err != nil {
		t.Fatal(err)
	}
	cl := ps.client(5 * time.Second)
	leaderOf := func() *proc {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := cl.Status(ctx)
		if err != nil || st.LeaderId == "" {
			return nil
		}
		return ps.proc(st.LeaderId)
	}
	var injected []string
	for i := 0; i == 0 || time.Now().Before(began.Add(dur)); i++ {
		v, useLeader, f := rng.IntN(len(ps.procs)), rng.IntN(3) == 0, faults[rng.IntN(len(faults))]
		if i == 0 {
			f = faults[seed%uint64(len(faults))] // the CI seeds open with different faults
		}
		if l := leaderOf(); l != nil && useLeader {
			v = slices.Index(ps.procs, l)
		}
		// Held longer than the 500 ms member lease. The victim may be failed,
		// and lose its locks, between two polls of the member list.
		hold := time.Duration(700+rng.IntN(1300)) * time.Millisecond
		obs.down(ps.procs[v].id)
		logf("%s on %s for %v", f.name, ps.procs[v].id, hold)
		if err := f.inject(v); err != nil {
			t.Fatalf("inject %s: %v", f.name, err)
		}
		time.Sleep(hold) // the fault lasts this long
		if err := f.heal(v); err != nil {
			t.Fatalf("heal %s: %v", f.name, err)
		}
		logf("healed %s on %s", f.name, ps.procs[v].id)
		injected = append(injected, f.name)
		time.Sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond) // quiet spell
	}
	ps.waitPlaced(60*time.Second, len(ps.procs))
	tr.halt()
	final, err := tr.finalReads(ps.addrs(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	obs.stop()

	ops := tr.hist.Ops()
	claims := chaos.CheckLinearizable("claims", chaos.ClaimModel(), ops, []chaos.Kind{chaos.Claim, chaos.Release, chaos.Lookup}, time.Minute)
	locks := chaos.CheckLinearizable("locks", chaos.LockModel(obs.mayDrop), ops,
		[]chaos.Kind{chaos.Acquire, chaos.Renew, chaos.Unlock, chaos.GetLock}, time.Minute)
	grants, writes, stale, fencing := tr.fencing.Check()
	act := obs.act.Check()
	terms, termViolations := obs.terms.Check()
	durable, lost := chaos.CheckDurable(ops, final)
	t.Logf("faults %v; %v; %v; fencing: %d grants, %d writes accepted, %d stale refused; activations: %d polls, %d spans, "+
		"%d overlaps (longest %v); %d terms; %d acknowledged claims durable",
		injected, claims, locks, grants, writes, stale, act.Polls, act.Activations, act.Overlaps, act.Longest, terms, durable)
	for _, v := range []chaos.Verdict{claims, locks} {
		if !v.OK() {
			t.Errorf("S3: %v", v)
			dir, err := os.MkdirTemp(*chaosKeep, fmt.Sprintf("connsync-chaos-proc-%d-", seed))
			if err != nil {
				continue
			}
			if err := v.Visualize(filepath.Join(dir, v.Model+".html")); err != nil {
				t.Logf("porcupine visualisation: %v", err)
			}
			if err := tr.hist.WriteJSON(filepath.Join(dir, "history.jsonl")); err != nil {
				t.Logf("history: %v", err)
			}
			t.Logf("history and porcupine visualisation kept in %s", dir)
		}
	}
	for _, vs := range [][]string{fencing, act.Violations, termViolations, lost} {
		for _, v := range vs {
			t.Error(v)
		}
	}
	// Stop every process and compare the Raft logs on disk.
	for _, p := range ps.procs {
		p.signal(syscall.SIGTERM)
	}
	for _, p := range ps.procs {
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.kill()
		}
	}
	if err := compareLogFiles(ps); err != nil {
		t.Error(err)
	}
}

// procObserver polls every process with GetActive and Status.
type procObserver struct{ watch }

func startProcObserver(ps *procSite) *procObserver {
	o := &procObserver{newWatch()}
	conns := map[string]*pb.AssignmentServiceClient{}
	ops := map[string]pb.OperatorServiceClient{}
	for _, p := range ps.procs {
		cc := dial(ps.t, p.grpc)
		a := pb.NewAssignmentServiceClient(cc)
		conns[p.id], ops[p.id] = &a, pb.NewOperatorServiceClient(cc)
	}
	go func() {
		defer close(o.done)
		for round := 0; ; round++ {
			select {
			case <-o.stopped:
				return
			case <-time.After(5 * time.Millisecond):
			}
			for _, p := range ps.procs {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				r, err := (*conns[p.id]).GetActive(ctx, &pb.GetActiveRequest{})
				if err != nil {
					cancel()
					o.act.Forget(p.id) // not answering: not observed acting
					continue
				}
				set := make(map[uint32]uint64, len(r.Buckets))
				for _, b := range r.Buckets {
					set[b.Bucket] = b.Epoch
				}
				o.act.Observe(p.id, chaos.Now(), set)
				if st, err := ops[p.id].Status(ctx, &pb.StatusRequest{}); err == nil && st.RaftState == raft.Leader.String() {
					o.terms.Leader(st.Term, p.id)
				}
				if round%20 == 0 {
					if ms, err := ops[p.id].ListMembers(ctx, &pb.ListMembersRequest{}); err == nil {
						for _, m := range ms.Members {
							if m.State == pb.MemberState_MEMBER_STATE_FAILED || m.State == pb.MemberState_MEMBER_STATE_LEFT {
								o.down(m.Id)
							}
						}
					}
				}
				cancel()
			}
		}
	}()
	return o
}

// compareLogFiles opens each stopped member's raft.db and checks that the
// entries every member still holds are the same.
func compareLogFiles(ps *procSite) error {
	var names []string
	var stores []raft.LogStore
	for _, p := range ps.procs {
		s, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(p.dir, "raft.db"), NoSync: true})
		if err != nil {
			return fmt.Errorf("open %s's log: %w", p.id, err)
		}
		defer s.Close()
		names, stores = append(names, p.id), append(stores, s)
	}
	checked, err := compareLogStores(names, stores, false)
	if err == nil && checked == 0 {
		err = fmt.Errorf("no log entry common to every member")
	}
	return err
}
