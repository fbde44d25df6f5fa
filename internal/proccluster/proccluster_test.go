package proccluster

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

func alive(ids ...string) []*pb.Member {
	var out []*pb.Member
	for _, id := range ids {
		out = append(out, &pb.Member{Id: id, State: pb.MemberState_MEMBER_STATE_ALIVE})
	}
	return out
}

// bucketMap spreads n buckets round robin over ids, each backed up by the
// next member, synced.
func bucketMap(n int, ids ...string) []*pb.Assignment {
	var as []*pb.Assignment
	for i := range n {
		as = append(as, &pb.Assignment{Bucket: uint32(i), Primary: ids[i%len(ids)], LocalBackup: ids[(i+1)%len(ids)], BackupSynced: true})
	}
	return as
}

func TestSettled(t *testing.T) {
	ms := alive("m1", "m2", "m3")
	if err := Settled(ms, bucketMap(16, "m1", "m2", "m3"), 3, false, true); err != nil {
		t.Fatalf("a balanced, synced map: %v", err)
	}
	backupsOnM2 := bucketMap(16, "m1", "m2", "m3") // primaries even, local backups all on m2 but its own
	for _, a := range backupsOnM2 {
		a.LocalBackup = "m2"
		if a.Primary == "m2" {
			a.LocalBackup = "m1"
		}
	}
	if err := Settled(ms, backupsOnM2, 3, false, false); err != nil {
		t.Fatalf("uneven backups on a site that does not rebalance them: %v", err)
	}
	for name, c := range map[string]struct {
		members []*pb.Member
		as      []*pb.Assignment
		want    string
	}{
		"member missing":  {alive("m1", "m2"), bucketMap(16, "m1", "m2"), "2 members ALIVE, want 3"},
		"dead primary":    {ms, append(bucketMap(15, "m1", "m2", "m3"), &pb.Assignment{Bucket: 15, Primary: "m9", LocalBackup: "m1", BackupSynced: true}), "primary \"m9\""},
		"unsynced backup": {ms, func() []*pb.Assignment { as := bucketMap(16, "m1", "m2", "m3"); as[3].BackupSynced = false; return as }(), "not synced"},
		"move under way":  {ms, func() []*pb.Assignment { as := bucketMap(16, "m1", "m2", "m3"); as[5].Incoming = "m3"; return as }(), "move to m3"},
		"uneven":          {ms, append(bucketMap(12, "m1", "m2", "m3"), bucketMap(6, "m1", "m2")...), "its share is"},
		"one off":         {ms, bucketMap(16, "m2", "m1", "m3"), "m1 is primary of 5 buckets, its share is 6"},
		"uneven backups":  {ms, backupsOnM2, "would move its local backup"},
		"no backup":       {ms, func() []*pb.Assignment { as := bucketMap(16, "m1", "m2", "m3"); as[0].LocalBackup = ""; return as }(), "local backup"},
	} {
		err := Settled(c.members, c.as, 3, false, true)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Settled = %v, want an error containing %q", name, err, c.want)
		}
	}
}

// TestStartKillRestartStop runs a one-member site of a real connsyncd:
// Kill and Restart are not reported as deaths, a SIGKILL from outside is
// (with the log tail), and Stop removes the temporary directory.
func TestStartKillRestartStop(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a connsyncd process; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncWriter
	c, err := Start(ctx, Config{Binary: bin, Members: 1, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if i, err := c.Leader(ctx); err != nil || i != 0 {
		t.Fatalf("Leader = %d, %v; want 0", i, err)
	}
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Kill reported as a death: %v", err)
	}
	if err := c.Signal(0, syscall.SIGKILL); err != nil { // not through Kill: unexpected
		t.Fatal(err)
	}
	select {
	case <-c.Died():
	case <-time.After(10 * time.Second):
		t.Fatal("a member killed from outside was not reported")
	}
	if err := c.Err(); !errors.Is(err, ErrMemberDied) || !strings.Contains(err.Error(), "m1") {
		t.Fatalf("Err = %v, want ErrMemberDied naming m1", err)
	}
	dir := c.Dir()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s left behind (stat: %v)", dir, err)
	}
	if s := stderr.String(); !strings.Contains(s, "m1") || !strings.Contains(s, "last lines") {
		t.Fatalf("no log tail shown for the dead member: %q", s)
	}
}

// syncWriter lets the exit goroutine and the test share a builder.
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
