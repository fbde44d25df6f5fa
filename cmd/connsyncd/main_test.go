package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/connsync/connsync/server"
)

// parse declares the flags into a fresh options and parses args.
func parse(t *testing.T, args ...string) (*options, *flag.FlagSet) {
	t.Helper()
	o := &options{}
	fs := newFlagSet(o)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return o, fs
}

// writeConfig writes a YAML config file and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "connsyncd.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewFlagSet_Defaults(t *testing.T) {
	o, _ := parse(t)
	def := server.DefaultConfig()
	if o.cfg.GRPCBind != defaultGRPC || o.cfg.RaftBind != defaultRaft {
		t.Errorf("binds = %q, %q", o.cfg.GRPCBind, o.cfg.RaftBind)
	}
	if o.cfg.BucketCount != def.BucketCount || o.cfg.Weight != def.Weight ||
		o.cfg.ElectionTimeout != def.ElectionTimeout || o.cfg.MaxBatchOps != def.MaxBatchOps {
		t.Errorf("cfg = %+v, want DefaultConfig's tunables", o.cfg)
	}
	if o.logLevel != "info" || o.dev || o.join != "" || o.configFile != "" {
		t.Errorf("options = %+v", o)
	}
}

func TestApplyConfigFile_SetsFlags(t *testing.T) {
	p := writeConfig(t, `
member-id: m1
site: site-a
data-dir: /var/lib/connsync
grpc-bind: 0.0.0.0:7420
grpc-advertise: 10.0.0.1:7420
raft-bind: 0.0.0.0:7421
raft-advertise: 10.0.0.1:7421
nonvoter: true
buckets: 1024
weight: 3
raft-heartbeat-timeout: 1s
raft-election-timeout: 2s
raft-leader-lease-timeout: 500ms
snapshot-threshold: 100000
apply-timeout: 3s
max-batch-ops: 512
log-level: debug
metrics-addr: ""
join:
  - 10.0.0.2:7420
  - 10.0.0.3:7420
`)
	o, fs := parse(t)
	if err := applyConfigFile(fs, p); err != nil {
		t.Fatalf("applyConfigFile: %v", err)
	}
	c := o.cfg
	if c.MemberID != "m1" || c.Site != "site-a" || c.DataDir != "/var/lib/connsync" {
		t.Errorf("identity = %q %q %q", c.MemberID, c.Site, c.DataDir)
	}
	if c.GRPCBind != "0.0.0.0:7420" || c.GRPCAdvertise != "10.0.0.1:7420" ||
		c.RaftBind != "0.0.0.0:7421" || c.RaftAdvertise != "10.0.0.1:7421" {
		t.Errorf("addresses = %q %q %q %q", c.GRPCBind, c.GRPCAdvertise, c.RaftBind, c.RaftAdvertise)
	}
	if !o.nonvoter || c.BucketCount != 1024 || c.Weight != 3 {
		t.Errorf("nonvoter %v, buckets %d, weight %d", o.nonvoter, c.BucketCount, c.Weight)
	}
	if c.HeartbeatTimeout != time.Second || c.ElectionTimeout != 2*time.Second ||
		c.LeaderLeaseTimeout != 500*time.Millisecond || c.ApplyTimeout != 3*time.Second {
		t.Errorf("timeouts = %v %v %v %v", c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout, c.ApplyTimeout)
	}
	if c.SnapshotThreshold != 100000 || c.MaxBatchOps != 512 || o.logLevel != "debug" || o.metricsAddr != "" {
		t.Errorf("snapshot-threshold %d, max-batch-ops %d, log-level %q, metrics-addr %q",
			c.SnapshotThreshold, c.MaxBatchOps, o.logLevel, o.metricsAddr)
	}
	if o.join != "10.0.0.2:7420,10.0.0.3:7420" {
		t.Errorf("join = %q, want the list comma-joined", o.join)
	}
	// The result is a config the server accepts.
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(config from file) = %v", err)
	}
}

func TestApplyConfigFile_JoinAsString(t *testing.T) {
	p := writeConfig(t, "join: 10.0.0.2:7420,10.0.0.3:7420\nbootstrap: false\n")
	o, fs := parse(t)
	if err := applyConfigFile(fs, p); err != nil {
		t.Fatalf("applyConfigFile: %v", err)
	}
	if o.join != "10.0.0.2:7420,10.0.0.3:7420" || o.cfg.Bootstrap {
		t.Errorf("join = %q, bootstrap = %v", o.join, o.cfg.Bootstrap)
	}
}

func TestApplyConfigFile_CommandLineWins(t *testing.T) {
	p := writeConfig(t, `
member-id: from-file
site: from-file
raft-election-timeout: 2s
join: [10.0.0.9:7420]
buckets: 64
`)
	o, fs := parse(t, "-member-id", "from-cli", "-raft-election-timeout", "3s", "-join", "10.0.0.1:7420", "-config", p)
	if err := applyConfigFile(fs, p); err != nil {
		t.Fatalf("applyConfigFile: %v", err)
	}
	if o.cfg.MemberID != "from-cli" || o.cfg.ElectionTimeout != 3*time.Second || o.join != "10.0.0.1:7420" {
		t.Errorf("command line lost: member-id %q, election %v, join %q", o.cfg.MemberID, o.cfg.ElectionTimeout, o.join)
	}
	if o.cfg.Site != "from-file" || o.cfg.BucketCount != 64 {
		t.Errorf("file not applied where the command line was silent: site %q, buckets %d", o.cfg.Site, o.cfg.BucketCount)
	}
}

func TestApplyConfigFile_NullAndEmpty(t *testing.T) {
	p := writeConfig(t, "site: ~\nmember-id:\n")
	o, fs := parse(t)
	if err := applyConfigFile(fs, p); err != nil {
		t.Fatalf("applyConfigFile(null values): %v", err)
	}
	if o.cfg.Site != "" || o.cfg.MemberID != "" {
		t.Errorf("null values set site %q, member-id %q", o.cfg.Site, o.cfg.MemberID)
	}
	_, fs = parse(t)
	if err := applyConfigFile(fs, writeConfig(t, "")); err != nil {
		t.Errorf("applyConfigFile(empty file): %v", err)
	}
	_, fs = parse(t)
	if err := applyConfigFile(fs, writeConfig(t, "# only a comment\n")); err != nil {
		t.Errorf("applyConfigFile(comment only): %v", err)
	}
}

func TestApplyConfigFile_Errors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"unknown key", "member-id: m1\nmembr-id: m1\n", []string{`"membr-id"`, "unknown key"}},
		{"underscore key", "member_id: m1\n", []string{`"member_id"`}},
		{"bad duration", "raft-election-timeout: soon\n", []string{"raft-election-timeout"}},
		{"bad int", "max-batch-ops: many\n", []string{"max-batch-ops"}},
		{"bad bool", "bootstrap: perhaps\n", []string{"bootstrap"}},
		{"bad buckets", "buckets: lots\n", []string{"buckets"}},
		{"config key", "config: other.yaml\n", []string{`"config"`}},
		{"not a mapping", "- a\n- b\n", []string{"config"}},
		{"broken yaml", "site: [unclosed\n", []string{"config"}},
		{"mapping value", "site: {a: b}\n", []string{"site", "not a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeConfig(t, tt.yaml)
			_, fs := parse(t)
			err := applyConfigFile(fs, p)
			if err == nil {
				t.Fatalf("applyConfigFile(%q) = nil", tt.yaml)
			}
			for _, w := range append(tt.want, p) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("applyConfigFile(%q) = %q, want it to contain %q", tt.yaml, err, w)
				}
			}
		})
	}
}

func TestApplyConfigFile_Missing(t *testing.T) {
	_, fs := parse(t)
	if err := applyConfigFile(fs, filepath.Join(t.TempDir(), "nope.yaml")); err == nil {
		t.Fatal("applyConfigFile(missing file) = nil")
	}
}

func TestDevDefaults(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	o, fs := parse(t, "-dev")
	cleanup, err := devDefaults(fs, &o.cfg)
	if err != nil {
		t.Fatalf("devDefaults: %v", err)
	}
	c := o.cfg
	if c.MemberID != "dev" || c.Site != "dev" || !c.Bootstrap {
		t.Errorf("member-id %q, site %q, bootstrap %v", c.MemberID, c.Site, c.Bootstrap)
	}
	if c.DataDir == "" || filepath.Dir(c.DataDir) != filepath.Clean(tmp) {
		t.Errorf("data dir %q is not a fresh temp dir under %s", c.DataDir, tmp)
	}
	if fi, err := os.Stat(c.DataDir); err != nil || !fi.IsDir() {
		t.Fatalf("data dir %q: %v", c.DataDir, err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(dev config) = %v", err)
	}
	// Something written by the member is removed too.
	if err := os.WriteFile(filepath.Join(c.DataDir, "raft.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cleanup()
	if _, err := os.Stat(c.DataDir); !os.IsNotExist(err) {
		t.Errorf("data dir %q still exists after cleanup (%v)", c.DataDir, err)
	}
}

func TestDevDefaults_KeepsExplicitFlags(t *testing.T) {
	dir := t.TempDir()
	o, fs := parse(t, "-dev", "-member-id", "alice", "-site", "lab", "-data-dir", dir)
	cleanup, err := devDefaults(fs, &o.cfg)
	if err != nil {
		t.Fatalf("devDefaults: %v", err)
	}
	if o.cfg.MemberID != "alice" || o.cfg.Site != "lab" || o.cfg.DataDir != dir || !o.cfg.Bootstrap {
		t.Errorf("cfg = member-id %q, site %q, data-dir %q, bootstrap %v", o.cfg.MemberID, o.cfg.Site, o.cfg.DataDir, o.cfg.Bootstrap)
	}
	cleanup()
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("cleanup removed the explicit data dir %s: %v", dir, err)
	}
}

func TestDevDefaults_KeepsMemberIDOnly(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	o, fs := parse(t, "-dev", "-member-id", "m9")
	cleanup, err := devDefaults(fs, &o.cfg)
	if err != nil {
		t.Fatalf("devDefaults: %v", err)
	}
	defer cleanup()
	if o.cfg.MemberID != "m9" || o.cfg.Site != "dev" {
		t.Errorf("member-id %q, site %q", o.cfg.MemberID, o.cfg.Site)
	}
}

func TestDevDefaults_RefusesJoin(t *testing.T) {
	o, fs := parse(t, "-dev", "-join", "10.0.0.2:7420")
	cleanup, err := devDefaults(fs, &o.cfg)
	if err == nil {
		cleanup()
		t.Fatal("devDefaults with -join = nil error")
	}
	if !strings.Contains(err.Error(), "-join") {
		t.Errorf("devDefaults with -join = %v, want it to name -join", err)
	}
	// join from a config file counts as given too.
	p := writeConfig(t, "join: [10.0.0.2:7420]\n")
	o, fs = parse(t, "-dev")
	if err := applyConfigFile(fs, p); err != nil {
		t.Fatal(err)
	}
	if cleanup, err := devDefaults(fs, &o.cfg); err == nil {
		cleanup()
		t.Error("devDefaults with join from the config file = nil error")
	}
}

// runQuick runs run(args) and fails the test if it does not return promptly:
// every case here must fail before the server starts serving.
func runQuick(t *testing.T, args ...string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- run(args) }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("run(%q) did not return: it started a server", args)
		return nil
	}
}

func TestRun_PositionalArgument(t *testing.T) {
	err := runQuick(t, "-member-id", "m1", "extra")
	if err == nil || !strings.Contains(err.Error(), "unexpected arguments") || !strings.Contains(err.Error(), "extra") {
		t.Fatalf("run(positional) = %v", err)
	}
}

func TestRun_BadFlag(t *testing.T) {
	if err := runQuick(t, "-no-such-flag"); err == nil {
		t.Fatal("run(-no-such-flag) = nil")
	}
	if err := runQuick(t, "-raft-election-timeout", "soon"); err == nil {
		t.Fatal("run(-raft-election-timeout soon) = nil")
	}
}

func TestRun_InvalidConfig(t *testing.T) {
	dir := t.TempDir()
	err := runQuick(t, "-member-id", "x", "-site", "y", "-data-dir", dir, "-grpc-bind", "0.0.0.0:0")
	if err == nil {
		t.Fatal("run(invalid config) = nil")
	}
	if !strings.Contains(err.Error(), "grpc-advertise") {
		t.Errorf("run(invalid config) = %v, want it to name grpc-advertise", err)
	}
	// Validation comes before anything touches the data dir.
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("data dir holds %d entries after a failed validation", len(ents))
	}

	err = runQuick(t, "-site", "y", "-data-dir", dir)
	if err == nil || !strings.Contains(err.Error(), "member-id") {
		t.Errorf("run(no member-id) = %v, want it to name member-id", err)
	}
	err = runQuick(t, "-member-id", "x", "-site", "y", "-data-dir", dir, "-bootstrap", "-join", "10.0.0.2:7420")
	if err == nil || !strings.Contains(err.Error(), "bootstrap") {
		t.Errorf("run(bootstrap and join) = %v, want it to name bootstrap", err)
	}
}

func TestRun_InvalidConfigFromFile(t *testing.T) {
	dir := t.TempDir()
	p := writeConfig(t, "member-id: x\nsite: y\ndata-dir: "+dir+"\nbuckets: 3000\n")
	err := runQuick(t, "-config", p)
	if err == nil || !strings.Contains(err.Error(), "buckets") {
		t.Errorf("run(-config with buckets 3000) = %v, want it to name buckets", err)
	}
	p = writeConfig(t, "membr-id: x\n")
	err = runQuick(t, "-config", p)
	if err == nil || !strings.Contains(err.Error(), "membr-id") {
		t.Errorf("run(-config with unknown key) = %v, want it to name the key", err)
	}
	err = runQuick(t, "-config", filepath.Join(dir, "missing.yaml"))
	if err == nil {
		t.Error("run(-config missing file) = nil")
	}
}

func TestRun_BadLogLevel(t *testing.T) {
	err := runQuick(t, "-log-level", "loud")
	if err == nil || !strings.Contains(err.Error(), "log-level") {
		t.Fatalf("run(-log-level loud) = %v", err)
	}
}

func TestRun_DevRefusesJoin(t *testing.T) {
	err := runQuick(t, "-dev", "-join", "10.0.0.2:7420")
	if err == nil || !strings.Contains(err.Error(), "-join") {
		t.Fatalf("run(-dev -join) = %v", err)
	}
}

func TestRun_DevInvalidConfigCleansUp(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	err := runQuick(t, "-dev", "-grpc-bind", "0.0.0.0:0")
	if err == nil || !strings.Contains(err.Error(), "grpc-advertise") {
		t.Fatalf("run(-dev -grpc-bind 0.0.0.0:0) = %v, want it to name grpc-advertise", err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("the -dev temp data dir was not removed: %d entries in %s", len(ents), tmp)
	}
}
