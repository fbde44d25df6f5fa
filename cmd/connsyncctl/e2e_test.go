package main

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/connsync/connsync/integration/cluster"
)

// TestEndToEnd drives the commands through the cobra root against a real
// in-process single-member site.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real site")
	}
	c := cluster.New(t, 1, cluster.Options{})
	addr := c.Members[0].Addr()
	ctl := func(args ...string) (string, error) {
		t.Helper()
		return execute(t, append([]string{"--addr", addr, "--timeout", "20s"}, args...)...)
	}
	mustCtl := func(args ...string) string {
		t.Helper()
		out, err := ctl(args...)
		if err != nil {
			t.Fatalf("connsyncctl %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	wantLine := func(out string, re string) []string {
		t.Helper()
		m := regexp.MustCompile("(?m)" + re).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("output does not match %q:\n%s", re, out)
		}
		return m
	}
	const src, dst = "10.0.0.1:1234", "192.0.2.1:80"

	t.Run("status", func(t *testing.T) {
		out := mustCtl("status")
		wantLine(out, `^Member:\s+m0$`)
		wantLine(out, `^Site:\s+site1$`)
		wantLine(out, `^Raft state:\s+Leader$`)
		wantLine(out, `^Leader:\s+m0 \(`+regexp.QuoteMeta(addr)+`\)$`)
		wantLine(out, `^Members:\s+1$`)

		var st map[string]any
		if err := json.Unmarshal([]byte(mustCtl("status", "-o", "json")), &st); err != nil {
			t.Fatalf("status -o json: %v", err)
		}
		if st["member_id"] != "m0" || st["raft_state"] != "Leader" || st["leader_grpc_addr"] != addr {
			t.Errorf("status JSON: %v", st)
		}
		if _, ok := st["last_contact_ms"]; !ok {
			t.Errorf("status JSON lacks unpopulated last_contact_ms: %v", st)
		}
	})

	t.Run("members", func(t *testing.T) {
		out := mustCtl("members")
		wantLine(out, `^ID\s+SITE\s+STATE\s+ROLE\s+PRIMARY\s+BACKUP\s+GOSSIP\s+HEARTBEAT\s+GRPC ADDR\s+WEIGHT$`)
		wantLine(out, `^m0\s+site1\s+ALIVE\s+leader\s+\d+\s+0\s+\S+\s+.*`+regexp.QuoteMeta(addr)+`\s+1$`)

		var ms []map[string]any
		if err := json.Unmarshal([]byte(mustCtl("members", "--linearizable", "-o", "json")), &ms); err != nil {
			t.Fatalf("members -o json: %v", err)
		}
		if len(ms) != 1 || ms[0]["id"] != "m0" || ms[0]["state"] != "MEMBER_STATE_ALIVE" {
			t.Errorf("members JSON: %v", ms)
		}
	})

	t.Run("raft peers", func(t *testing.T) {
		out := mustCtl("raft", "peers")
		wantLine(out, `^ID\s+ADDRESS\s+SUFFRAGE\s+LEADER$`)
		wantLine(out, `^m0\s+\S+\s+Voter\s+\*$`)
		var peers []map[string]any
		if err := json.Unmarshal([]byte(mustCtl("raft", "peers", "-o", "json")), &peers); err != nil {
			t.Fatalf("raft peers -o json: %v", err)
		}
		if len(peers) != 1 || peers[0]["leader"] != true {
			t.Errorf("raft peers JSON: %v", peers)
		}
	})

	var epoch uint64
	t.Run("claim", func(t *testing.T) {
		out := mustCtl("claim", "tcp", src, dst)
		wantLine(out, `^Member:\s+m0$`)
		wantLine(out, `^Key:\s+tcp \S+ \S+$`)
		e, err := strconv.ParseUint(wantLine(out, `^Epoch:\s+(\d+)$`)[1], 10, 64)
		if err != nil || e == 0 {
			t.Fatalf("epoch %d, %v", e, err)
		}
		epoch = e

		// Claiming again (reversed direction, by number) returns the same
		// claim; the JSON form carries the canonical key.
		var cl struct {
			MemberID string `json:"member_id"`
			Epoch    string `json:"epoch"`
			Key      struct {
				Protocol float64 `json:"protocol"`
				SrcIP    string  `json:"src_ip"`
			} `json:"key"`
		}
		if err := json.Unmarshal([]byte(mustCtl("claim", "6", dst, src, "-o", "json")), &cl); err != nil {
			t.Fatalf("claim -o json: %v", err)
		}
		if cl.MemberID != "m0" || cl.Epoch != strconv.FormatUint(epoch, 10) || cl.Key.Protocol != 6 || cl.Key.SrcIP == "" {
			t.Errorf("reclaim JSON: %+v, want member m0 epoch %d", cl, epoch)
		}
	})

	t.Run("lookup", func(t *testing.T) {
		out := mustCtl("lookup", "tcp", src, dst)
		wantLine(out, `^Owner:\s+m0$`)
		wantLine(out, `^Claim:\s+m0 epoch `+strconv.FormatUint(epoch, 10)+`$`)
		wantLine(out, `^Bucket:\s+\d+$`)
		wantLine(out, `^Applied index:\s+[1-9]\d*$`)

		var own map[string]any
		if err := json.Unmarshal([]byte(mustCtl("lookup", "tcp", src, dst, "--linearizable", "-o", "json")), &own); err != nil {
			t.Fatalf("lookup -o json: %v", err)
		}
		if own["owner"] != "m0" {
			t.Errorf("lookup JSON: %v", own)
		}
	})

	t.Run("release", func(t *testing.T) {
		_, err := ctl("release", "tcp", src, dst, "--epoch", strconv.FormatUint(epoch+1000, 10))
		if err == nil || !strings.HasPrefix(err.Error(), "FailedPrecondition: ") {
			t.Errorf("release at a wrong epoch: %v, want FailedPrecondition", err)
		}
		out := mustCtl("release", "tcp", src, dst, "--epoch", strconv.FormatUint(epoch, 10))
		wantLine(out, `^Released tcp `+regexp.QuoteMeta(src)+` `+regexp.QuoteMeta(dst)+`$`)
		wantLine(mustCtl("lookup", "tcp", src, dst), `^Claim:\s+-$`)
	})

	t.Run("lock and unlock", func(t *testing.T) {
		var l struct {
			Token    string `json:"token"`
			MemberID string `json:"member_id"`
			TTL      string `json:"ttl"`
		}
		if err := json.Unmarshal([]byte(mustCtl("lock", "tcp", src, dst, "--ttl", "30s", "-o", "json")), &l); err != nil {
			t.Fatalf("lock -o json: %v", err)
		}
		token, err := strconv.ParseUint(l.Token, 10, 64)
		if err != nil || token == 0 || l.MemberID != "m0" || l.TTL != "30s" {
			t.Fatalf("lock JSON: %+v (%v)", l, err)
		}

		_, err = ctl("lock", "tcp", src, dst)
		if err == nil || !strings.HasPrefix(err.Error(), "FailedPrecondition: ") {
			t.Errorf("second lock: %v, want FailedPrecondition", err)
		}

		out := mustCtl("unlock", "tcp", src, dst, "--token", l.Token)
		wantLine(out, `^Unlocked tcp `)

		_, err = ctl("unlock", "tcp", src, dst, "--token", l.Token)
		if err == nil || !strings.HasPrefix(err.Error(), "NotFound: ") {
			t.Errorf("unlock of a free lock: %v, want NotFound", err)
		}

		out = mustCtl("lock", "tcp", src, dst)
		next, err := strconv.ParseUint(wantLine(out, `^Token:\s+(\d+)$`)[1], 10, 64)
		if err != nil || next <= token {
			t.Errorf("second grant token %d, want > %d", next, token)
		}
		wantLine(out, `^Holder:\s+m0$`)
		wantLine(out, `^TTL:\s+10s$`)
	})

	t.Run("invalid ip", func(t *testing.T) {
		_, err := ctl("claim", "tcp", "300.1.1.1:1234", dst)
		if err == nil || !strings.HasPrefix(err.Error(), "InvalidArgument: ") || !strings.Contains(err.Error(), "key.src_ip") {
			t.Errorf("claim of an invalid IP: %v, want InvalidArgument naming key.src_ip", err)
		}
	})

	t.Run("buckets", func(t *testing.T) {
		out := mustCtl("buckets")
		wantLine(out, `^MEMBER\s+PRIMARY\s+BACKUP\s+BACKUP UNSYNCED\s+MOVING IN$`)
		wantLine(out, `^m0\s+4096\s+0\s+0\s+0$`)
		wantLine(out, `^4096 buckets, 0 without a primary`)
		all := mustCtl("buckets", "--all")
		wantLine(all, `^4095\s+m0\s+-\s+-\s+-\s+\d+\s+-$`)
		var r map[string]any
		if err := json.Unmarshal([]byte(mustCtl("buckets", "-o", "json")), &r); err != nil {
			t.Fatalf("buckets -o json: %v", err)
		}
		if as, _ := r["assignments"].([]any); len(as) != 4096 {
			t.Errorf("buckets JSON has %d assignments", len(as))
		}
	})

	t.Run("rebalance", func(t *testing.T) {
		wantLine(mustCtl("rebalance", "--dry-run"), `^Would start 0 moves \(imbalance 1\.000 -> 1\.000; 0 moves already under way\)$`)
		wantLine(mustCtl("rebalance"), `^Started 0 moves`)
	})

	t.Run("drain the only member", func(t *testing.T) {
		_, err := ctl("drain", "m0")
		if err == nil || !strings.HasPrefix(err.Error(), "FailedPrecondition: ") || !strings.Contains(err.Error(), "only alive member") {
			t.Errorf("drain of the only member: %v, want FailedPrecondition", err)
		}
		_, err = ctl("drain", "ghost")
		if err == nil || !strings.HasPrefix(err.Error(), "InvalidArgument: ") || !strings.Contains(err.Error(), "member_id") {
			t.Errorf("drain of an unknown member: %v, want InvalidArgument naming member_id", err)
		}
		if _, err := ctl("drain"); err == nil || !strings.Contains(err.Error(), "drain takes one MEMBER_ID") {
			t.Errorf("drain without a member: %v", err)
		}
	})

	t.Run("sync status", func(t *testing.T) {
		out := mustCtl("sync", "status")
		wantLine(out, `^MEMBER\s+CONNECTIONS\s+TOMBSTONES\s+STATE BYTES\s+DELAYED\s+REFUSED\s+WAITING FOR SYNC$`)
		wantLine(out, `^m0\s+0\s+0\s+0\s+0\s+0\s+0$`)
		wantLine(out, `^web\s+tcp\s+80,443,8080,8443\s+3s$`)
		wantLine(out, `^default\s+any\s+any\s+immediate$`)
		var st []map[string]any
		if err := json.Unmarshal([]byte(mustCtl("sync", "status", "-o", "json")), &st); err != nil || len(st) != 1 {
			t.Fatalf("sync status -o json: %v %v", st, err)
		}
	})

	t.Run("sites and site commands", func(t *testing.T) {
		wantLine(mustCtl("sites"), `^\S+\s+active\s+m0\s+m0\s+local\s+-\s+-$`)
		for _, args := range [][]string{
			{"site", "failover", "elsewhere", "--yes"}, // not this member's site
			{"site", "handover", "elsewhere"},
		} {
			var out, errOut strings.Builder
			if code := run(t.Context(), append([]string{"--addr", addr}, args...), &out, &errOut); code != 1 ||
				!strings.Contains(errOut.String(), "InvalidArgument: site:") {
				t.Errorf("%v: exit %d, stderr %q", args, code, errOut.String())
			}
		}
	})

	t.Run("transfer-leader to self", func(t *testing.T) {
		wantLine(mustCtl("transfer-leader", "m0"), `^Leader is now m0$`)
	})

	t.Run("exit code", func(t *testing.T) {
		var out, errOut strings.Builder
		if code := run(t.Context(), []string{"--addr", addr, "claim", "tcp", "300.1.1.1:1234", dst}, &out, &errOut); code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		if !strings.HasPrefix(errOut.String(), "Error: InvalidArgument: key.src_ip") {
			t.Errorf("stderr %q", errOut.String())
		}
		if code := run(t.Context(), []string{"--addr", addr, "status", "-o", "json"}, &out, &errOut); code != 0 {
			t.Errorf("status exit code %d", code)
		}
		if !json.Valid([]byte(out.String())) {
			t.Errorf("status -o json is not JSON: %s", out.String())
		}
	})
}
