package main

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/internal/proccluster"
)

// persistenceFlags are the persistence scenario's flags.
type persistenceFlags struct {
	conns     int
	failovers int
	mirror    bool
}

// runPersistence is the persistence scenario: -conns connections published
// and confirmed replicated, then -failovers times a non-leader member (round
// robin) is SIGKILLed; once every bucket it was primary of is active at its
// new primary, each of those buckets is read there (DataPlaneService.Dump)
// and every connection published to it must be there with its state. The
// victim restarts and the site settles (its buckets come back make-before-
// break) before the next failover.
func runPersistence(ctx context.Context, c *proccluster.Cluster, f persistenceFlags, rep *reporter) (record, error) {
	admin, err := c.Client(10 * time.Second)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	p, err := newPublisher(ctx, c)
	if err != nil {
		return nil, err
	}
	defer p.close()
	if _, err := publishAll(ctx, p, f.conns, rep, "persistence"); err != nil {
		return nil, err
	}
	want := make([]map[fsm.Key][]byte, p.buckets) // bucket -> connection -> state
	for i := range f.conns {
		st := benchConn(i, memoryBlobBytes)
		k, err := fsm.ParseKey(st.Key, "key")
		if err != nil {
			return nil, err
		}
		b := k.Bucket(p.buckets)
		if want[b] == nil {
			want[b] = map[fsm.Key][]byte{}
		}
		want[b][k] = st.Blob
	}

	prog, stopProg := newTrialProgress(rep, "persistence", f.failovers)
	defer stopProg()
	checked, lost, lostInCopy := 0, 0, 0
	for i := range f.failovers {
		prog.trial(i + 1)
		leader, err := c.Leader(ctx)
		if err != nil {
			return nil, err
		}
		victim := (leader + 1 + i%(len(c.Members())-1)) % len(c.Members())
		r, err := admin.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return nil, err
		}
		var moved []uint32
		for _, a := range r.Assignments {
			if a.Primary == c.Members()[victim].ID {
				moved = append(moved, a.Bucket)
			}
		}
		tr, err := measureFailover(ctx, c, admin, victim, f.mirror, prog.set)
		if err != nil {
			return nil, fmt.Errorf("failover %d (SIGKILL of %s): %w", i+1, c.Members()[victim].ID, err)
		}
		prog.set("checking the %d buckets %s was primary of at their new primaries", len(moved), tr.victim)
		n, l, lc, err := checkBuckets(ctx, c, admin, moved, want, tr.atActive)
		if err != nil {
			return nil, fmt.Errorf("failover %d: %w", i+1, err)
		}
		checked, lost, lostInCopy = checked+n, lost+l, lostInCopy+lc
		prog.set("%s restarted, waiting for the site to settle", tr.victim)
		settle, err := restartAndSettle(ctx, c, victim)
		if err != nil {
			return nil, fmt.Errorf("failover %d: %w", i+1, err)
		}
		rep.event("failover", field{"failover", i + 1}, field{"victim", tr.victim}, field{"buckets", len(moved)},
			field{"failover_ms", ms(tr.took)}, field{"first_ms", ms(tr.first)}, field{"median_ms", ms(tr.median)}, field{"mirror_states", tr.mirrorStates}, field{"checked", n}, field{"lost", l}, field{"lost_in_copy", lc}, field{"settle_s", round(settle.Seconds(), 2)})
	}
	stopProg()
	persistence := 1.0
	if checked > 0 {
		persistence = 1 - float64(lost)/float64(checked)
	}
	return record{{"scenario", "persistence"}, {"synced", f.conns}, {"checked", checked}, {"lost", lost},
		{"persistence", round(persistence, 6)}, {"failovers", f.failovers}, {"members", len(c.Members())},
		{"mirror", f.mirror}, {"lost_in_copy", lostInCopy}}, nil
}

// checkBuckets reads each of buckets at its current primary (from the map
// admin reads) and counts the connections of want it should hold (checked)
// and those it does not hold with the published state (lost). With
// atActive (mirror streams: each bucket as the new primary's firewall held
// it when the activation came), a connection missing there, or with another
// state, is lost too, and counted in lostInCopy.
func checkBuckets(ctx context.Context, c *proccluster.Cluster, admin *client.Client, buckets []uint32, want []map[fsm.Key][]byte,
	atActive map[uint32]map[fsm.Key][]byte) (checked, lost, lostInCopy int, err error) {
	r, err := admin.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		return 0, 0, 0, err
	}
	dps := map[string]pb.DataPlaneServiceClient{}
	for _, m := range c.Members() {
		conn, err := grpc.NewClient(m.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, 0, 0, err
		}
		defer conn.Close()
		dps[m.ID] = pb.NewDataPlaneServiceClient(conn)
	}
	for _, b := range buckets {
		primary := r.Assignments[b].Primary
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := dps[primary].Dump(dctx, &pb.DumpRequest{Bucket: b})
		cancel()
		if err != nil {
			return 0, 0, 0, fmt.Errorf("dump bucket %d at %s: %w", b, primary, err)
		}
		if resp.Role != "primary" {
			return 0, 0, 0, fmt.Errorf("bucket %d: %s is %s of it, not primary (the map moved during the check)", b, primary, resp.Role)
		}
		have := make(map[fsm.Key][]byte, len(resp.States))
		for _, st := range resp.States {
			k, err := fsm.ParseKey(st.Key, "key")
			if err != nil {
				return 0, 0, 0, fmt.Errorf("bucket %d at %s: %w", b, primary, err)
			}
			have[k] = st.Blob
		}
		for k, blob := range want[b] {
			checked++
			got, ok := have[k]
			inTable := ok && bytes.Equal(got, blob)
			inCopy := true
			if atActive != nil {
				got, ok := atActive[b][k]
				inCopy = ok && bytes.Equal(got, blob)
			}
			if !inTable || !inCopy {
				lost++
			}
			if !inCopy {
				lostInCopy++
			}
		}
	}
	return checked, lost, lostInCopy, nil
}
