package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/connsync/connsync/internal/proccluster"
)

func TestNormalizeArgs(t *testing.T) {
	got := normalizeArgs([]string{"-json", "claims", "-clients", "8", "--batch=4", "-duration", "-5s", "-h", "--", "-x"})
	want := []string{"--json", "claims", "--clients", "8", "--batch=4", "--duration", "-5s", "-h", "--", "-x"}
	if !slices.Equal(got, want) {
		t.Fatalf("normalizeArgs = %q, want %q", got, want)
	}
}

func TestPercentileNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		ds   []time.Duration
		p    float64
		want time.Duration
	}{
		{ds, 50, 50 * time.Millisecond},
		{ds, 99, 99 * time.Millisecond},
		{ds, 100, 100 * time.Millisecond},
		{ds[:2], 50, time.Millisecond},
		{ds[:2], 99, 2 * time.Millisecond},
		{ds[:1], 99, time.Millisecond},
		{nil, 99, 0},
	} {
		if got := percentile(c.ds, c.p); got != c.want {
			t.Errorf("percentile(%d values, %v) = %v, want %v", len(c.ds), c.p, got, c.want)
		}
	}
}

func TestRecordKeepsKeyOrder(t *testing.T) {
	b, err := json.Marshal(record{{"scenario", "claims"}, {"claims_per_sec", 1.5}, {"batch", 8}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"scenario":"claims","claims_per_sec":1.5,"batch":8}`; string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
}

// TestBadFlags: every bad flag is refused with a message that says what to
// fix, before anything is built or started.
func TestBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"claims", "-batch", "0"}, "-batch must be >= 1"},
		{[]string{"claims", "-batch", "20000"}, "-batch must be <= 10000"},
		{[]string{"claims", "-clients", "0"}, "-clients must be >= 1"},
		{[]string{"claims", "-clients", "4", "-grpc-conns", "5"}, "-grpc-conns must be between 0 (one per client) and -clients 4"},
		{[]string{"locks", "-grpc-conns", "-1"}, "-grpc-conns must be between 0"},
		{[]string{"claims", "-duration", "0s"}, "-duration must be > 0"},
		{[]string{"claims", "-duration", "soon"}, `invalid argument "soon"`},
		{[]string{"claims", "-via", "nowhere"}, "-via must be"},
		{[]string{"claims", "surplus"}, `unexpected argument "surplus"`},
		{[]string{"-members", "0", "claims"}, "-members must be >= 1"},
		{[]string{"-members", "100", "claims"}, "-members must be <= 32"},
		{[]string{"-profile-at", "end", "failover"}, "-profile-at must be start or kill"},
		{[]string{"-connsyncd", "/does/not/exist", "claims"}, "-connsyncd /does/not/exist"},
		{[]string{"locks", "-batch", "0"}, "-batch must be >= 1"},
		{[]string{"failover", "-kill", "everyone"}, "-kill must be member or leader"},
		{[]string{"failover", "-trials", "0"}, "-trials must be >= 1"},
		{[]string{"failover", "-members", "2"}, "-members must be >= 3 for failover"},
		{[]string{"claims", "-nosuch"}, "unknown flag"},
		{[]string{"lock-takeover", "-trials", "0"}, "-trials must be >= 1"},
		{[]string{"lock-takeover", "-members", "1"}, "-members must be >= 3 for lock-takeover"},
		{[]string{"memory", "-conns", "0"}, "-conns must be between 1 and 16777216"},
		{[]string{"memory", "-members", "1"}, "-members must be >= 2 for memory"},
		{[]string{"replicate", "-rate", "-1"}, "-rate must be >= 0"},
		{[]string{"persistence", "-failovers", "0"}, "-failovers must be >= 1"},
		{[]string{"persistence", "-conns", "0"}, "-conns must be between 1"},
		{[]string{"replicate", "-conns", "0"}, "-conns must be between 1"},
		{[]string{"replicate", "-duration", "0s"}, "-duration must be > 0"},
		{[]string{"site-failover", "-trials", "0"}, "-trials must be >= 1"},
		{[]string{"selective-sync", "-delay", "1ms"}, "-delay must be between 50ms and 10s"},
		{[]string{"selective-sync", "-rate", "0"}, "-rate must be between 100"},
		{[]string{"selective-sync", "-members", "1"}, "-members must be >= 2 for selective-sync"},
		{[]string{"site-failover", "-delay", "-1ms"}, "-delay must be between 0 and 5s"},
		{[]string{"site-failover", "-members", "2"}, "-members must be >= 3 for site-failover"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), c.args, &stdout, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), c.want) || stdout.Len() != 0 {
			t.Errorf("%q: exit %d, stderr %q, stdout %q; want exit 1 and an error containing %q",
				c.args, code, stderr.String(), stdout.String(), c.want)
		}
	}
}

// processTest skips t in -short mode (it starts connsyncd processes) and
// returns a context for it (cancelled when it ends, 5 minutes at most) and a
// connsyncd binary built from this checkout.
func processTest(t *testing.T) (context.Context, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts connsyncd processes; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	bin, err := proccluster.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ctx, bin
}

// TestScenariosOnProcesses runs each scenario once at a tiny size against
// real connsyncd processes and checks that the figures are sane, that the
// CLI's last JSON line is the figures, and that nothing is left behind.
func TestScenariosOnProcesses(t *testing.T) {
	ctx, bin := processTest(t)

	t.Run("cli", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		args := []string{"-json", "-connsyncd", bin, "claims", "-duration", "1s", "-clients", "4", "-batch", "4"}
		if code := run(ctx, args, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		for _, l := range lines {
			if !json.Valid([]byte(l)) {
				t.Fatalf("stdout line is not JSON: %q", l)
			}
		}
		var fig map[string]any
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &fig); err != nil {
			t.Fatal(err)
		}
		if fig["scenario"] != "claims" || fig["batch"] != float64(4) || fig["clients"] != float64(4) || fig["members"] != float64(3) {
			t.Fatalf("last line is not the claims figures: %v", fig)
		}
		var ready map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &ready); err != nil {
			t.Fatal(err)
		}
		if dir, _ := ready["dir"].(string); dir == "" {
			t.Fatalf("no site_ready event with the directory: %q", lines[0])
		} else if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("temporary directory %s left behind (stat: %v)", dir, err)
		}
	})

	var out, errs bytes.Buffer
	rep := newReporter(&out, &errs, true, false)
	s, err := startSite(ctx, &globalOpts{members: 3, connsyncd: bin, metrics: true}, rep)
	defer s.cleanup()
	if err != nil {
		t.Fatal(err)
	}
	num := func(fig record, key string) float64 {
		t.Helper()
		switch v := fig.get(key).(type) {
		case float64:
			return v
		case int:
			return float64(v)
		case int64:
			return float64(v)
		}
		t.Fatalf("figures have no number %q: %v", key, fig)
		return 0
	}
	saneLatency := func(fig record) {
		t.Helper()
		if p50, p99 := num(fig, "p50_ms"), num(fig, "p99_ms"); !(p50 > 0 && p99 >= p50) {
			t.Errorf("want p99 >= p50 > 0: %v", fig)
		}
	}

	claims, err := runClaims(ctx, s.c, loadFlags{clients: 8, grpcConns: 3, duration: time.Second, batch: 4, via: viaLeader}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("claims: %v", claims)
	if num(claims, "claims_per_sec") <= 0 || num(claims, "claim_errors") != 0 {
		t.Errorf("claims: want claims_per_sec > 0 and no failed claim: %v", claims)
	}
	saneLatency(claims)

	locks, err := runLocks(ctx, s.c, loadFlags{clients: 8, duration: time.Second, batch: 1, via: viaMember}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("locks: %v", locks)
	if num(locks, "locks_per_sec") <= 0 {
		t.Errorf("locks: want locks_per_sec > 0: %v", locks)
	}
	saneLatency(locks)

	fo, err := runFailover(ctx, s.c, failoverFlags{kill: "member", trials: 1}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("failover: %v", fo)
	if m := num(fo, "max_ms"); !(m > 0 && m < 10000) {
		t.Errorf("failover: want 0 < max_ms < 10000: %v", fo)
	}
	if num(fo, "without_copy") != 0 {
		t.Errorf("failover: buckets taken over by a member without a synced copy: %v", fo)
	}
	saneLatency(fo)

	lt, err := runLockTakeover(ctx, s.c, lockTakeoverFlags{trials: 1}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lock-takeover: %v", lt)
	if m := num(lt, "max_ms"); !(m > 0 && m < 10000) {
		t.Errorf("lock-takeover: want 0 < max_ms < 10000: %v", lt)
	}

	// Memory: 50,000 connections of 60-byte states; each member holds about
	// two thirds of them, so the figure is well above the heap's noise.
	mem, err := runMemory(ctx, s.c, 50_000, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("memory: %v", mem)
	if b := num(mem, "bytes_per_conn"); !(b > memoryBlobBytes && b < 5000) {
		t.Errorf("memory: want %d < bytes_per_conn < 5000 (a state is %d bytes): %v", memoryBlobBytes, memoryBlobBytes, mem)
	}

	per, err := runPersistence(ctx, s.c, persistenceFlags{conns: 20_000, failovers: 1, mirror: true}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("persistence: %v", per)
	if num(per, "checked") < 1000 || num(per, "lost") != 0 {
		t.Errorf("persistence: want thousands of connections checked (a third of 20,000) and none lost: %v", per)
	}

	repl, err := runReplicate(ctx, s.c, replicateFlags{rate: 20_000, conns: 10_000, duration: time.Second}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replicate: %v", repl)
	if d := num(repl, "deltas_per_sec"); !(d > 0) || num(repl, "lag_p99_ms") < num(repl, "lag_p50_ms") || !(num(repl, "lag_p50_ms") > 0) {
		t.Errorf("replicate: want deltas_per_sec > 0 and lag p99 >= p50 > 0: %v", repl)
	}

	g := &globalOpts{members: 3, connsyncd: bin}
	sel, err := runSelective(ctx, g, selectiveFlags{delay: 300 * time.Millisecond, rate: 5000}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("selective-sync: %v", sel)
	// 70% of the mix closes a third of a delay after it opened: those are
	// never sent (unless the tool falls 200 ms behind its schedule).
	if r := num(sel, "records_saved_fraction"); !(r > 0.3 && r < 1) {
		t.Errorf("selective-sync: want 0.3 < records_saved_fraction < 1 (the mix's short connections are 70%%): %v", sel)
	}

	dir := s.c.Dir()
	s.cleanup()
	for i := range s.c.Members() {
		if s.c.Running(i) {
			t.Errorf("member %d still running after cleanup", i)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary directory %s left behind (stat: %v)", dir, err)
	}
}

// TestSiteFailoverOnProcesses runs site-failover at a tiny size: two sites
// of three connsyncd processes and a witness, 20 ms apart.
//
// It found a bug (2026-11-27) that stalled the standby site short of a
// synced copy of every bucket, seen 3 runs in 8 beside another test's
// running site: a standby member refused a remote full sync when its own
// state machine lagged the member of its site the sender follows, and the
// sender never sends it again
// (TestRemote_ReceiverLaggingItsOwnSiteTakesTheCopy).
func TestSiteFailoverOnProcesses(t *testing.T) {
	ctx, bin := processTest(t)
	var out, errs bytes.Buffer
	rep := newReporter(&out, &errs, true, false)
	g := &globalOpts{members: 3, connsyncd: bin}
	sf, err := siteFailoverRun(ctx, g, siteFailoverFlags{trials: 2, delay: 20 * time.Millisecond}, rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("site-failover: %v", sf)
	// The lease (500 ms) must run out before the other site may act.
	p50, _ := number(sf.get("p50_ms"))
	trials, _ := number(sf.get("trials"))
	if !(p50 > 400 && p50 < 20_000) || trials != 2 {
		t.Errorf("site-failover: want 2 trials with a p50 above the site lease (500 ms) and far below the timeout: %v", sf)
	}
}
