package server

import (
	"strings"
	"testing"
	"time"
)

// validConfig is DefaultConfig with identity, addresses and data dir filled.
func validConfig(t *testing.T) Config {
	t.Helper()
	c := DefaultConfig()
	c.MemberID = "m1"
	c.Site = "site-a"
	c.DataDir = t.TempDir()
	c.GRPCBind = "127.0.0.1:7420"
	c.RaftBind = "127.0.0.1:7421"
	return c
}

func TestConfig_DefaultValidates(t *testing.T) {
	c := validConfig(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(default + identity) = %v", err)
	}
	// Explicit advertise addresses with wildcard binds are fine.
	c.GRPCBind, c.GRPCAdvertise = "0.0.0.0:7420", "10.0.0.1:7420"
	c.RaftBind, c.RaftAdvertise = "[::]:7421", "node1.example.com:7421"
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(wildcard bind, explicit advertise) = %v", err)
	}
	// A joining member that does not bootstrap.
	c.Join = []string{"10.0.0.2:7420", "10.0.0.3:7420"}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(join) = %v", err)
	}
	if c.grpcAdvertise() != "10.0.0.1:7420" || c.raftAdvertise() != "node1.example.com:7421" {
		t.Fatalf("advertise = %q, %q", c.grpcAdvertise(), c.raftAdvertise())
	}
	c.GRPCAdvertise, c.RaftAdvertise = "", ""
	c.GRPCBind, c.RaftBind = "127.0.0.1:1", "127.0.0.1:2"
	if c.grpcAdvertise() != "127.0.0.1:1" || c.raftAdvertise() != "127.0.0.1:2" {
		t.Fatalf("advertise defaults = %q, %q", c.grpcAdvertise(), c.raftAdvertise())
	}
}

func TestConfig_DefaultTunables(t *testing.T) {
	c := DefaultConfig()
	if c.BucketCount == 0 || c.Weight != 1 || !c.Voter || c.MaxBatchOps < 1 || c.MaxInflightEntries != 1 {
		t.Fatalf("DefaultConfig = %+v", c)
	}
	if c.MemberID != "" || c.Site != "" || c.DataDir != "" || c.GRPCBind != "" || c.RaftBind != "" {
		t.Fatalf("DefaultConfig fills identity or addresses: %+v", c)
	}
}

func TestConfig_InvalidFields(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string // must appear in the error
		also   string // must also appear, if set
	}{
		{"empty member", func(c *Config) { c.MemberID = "" }, "member-id", ""},
		{"bad member", func(c *Config) { c.MemberID = "-m1" }, "member-id", `"-m1"`},
		{"long member", func(c *Config) { c.MemberID = strings.Repeat("m", 65) }, "member-id", ""},
		{"member with slash", func(c *Config) { c.MemberID = "a/b" }, "member-id", ""},
		{"empty site", func(c *Config) { c.Site = "" }, "site", ""},
		{"bad site", func(c *Config) { c.Site = "site a" }, "site", `"site a"`},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data-dir", ""},
		{"grpc bind not host:port", func(c *Config) { c.GRPCBind = "7420" }, "grpc-bind", ""},
		{"raft bind not host:port", func(c *Config) { c.RaftBind = "localhost" }, "raft-bind", ""},
		{"grpc advertise not host:port", func(c *Config) { c.GRPCAdvertise = "nohostport" }, "grpc-advertise", ""},
		{"raft advertise not host:port", func(c *Config) { c.RaftAdvertise = "a:b:c" }, "raft-advertise", ""},
		{"grpc wildcard bind, no advertise", func(c *Config) { c.GRPCBind = "0.0.0.0:7420" }, "grpc-advertise", "set it explicitly"},
		{"grpc v6 wildcard bind, no advertise", func(c *Config) { c.GRPCBind = "[::]:7420" }, "grpc-advertise", "set it explicitly"},
		{"grpc empty host bind, no advertise", func(c *Config) { c.GRPCBind = ":7420" }, "grpc-advertise", "set it explicitly"},
		{"raft wildcard bind, no advertise", func(c *Config) { c.RaftBind = "0.0.0.0:7421" }, "raft-advertise", "set it explicitly"},
		{"grpc port 0, no advertise", func(c *Config) { c.GRPCBind = "127.0.0.1:0" }, "grpc-advertise", ""},
		{"raft advertise wildcard", func(c *Config) { c.RaftAdvertise = "0.0.0.0:7421" }, "raft-advertise", ""},
		{"grpc advertise port 0", func(c *Config) { c.GRPCAdvertise = "10.0.0.1:0" }, "grpc-advertise", ""},
		{"bootstrap and join", func(c *Config) { c.Bootstrap = true; c.Join = []string{"10.0.0.2:7420"} }, "bootstrap", "join"},
		{"buckets not a power of two", func(c *Config) { c.BucketCount = 3000 }, "buckets", "3000"},
		{"buckets zero", func(c *Config) { c.BucketCount = 0 }, "buckets", ""},
		{"buckets too many", func(c *Config) { c.BucketCount = 1 << 21 }, "buckets", ""},
		{"election < heartbeat", func(c *Config) {
			c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, 500*time.Millisecond, 250*time.Millisecond
		}, "raft-election-timeout", "raft-heartbeat-timeout"},
		{"election < heartbeat", func(c *Config) { c.ElectionTimeout = c.HeartbeatTimeout - time.Millisecond },
			"raft-election-timeout", "raft-heartbeat-timeout"},
		{"lease below raft's minimum", func(c *Config) { c.LeaderLeaseTimeout = 4 * time.Millisecond }, "raft-leader-lease-timeout", ">= 5ms"},
		{"commit timeout below raft's minimum", func(c *Config) { c.CommitTimeout = 500 * time.Microsecond }, "raft-commit-timeout", ">= 1ms"},
		{"snapshot interval below raft's minimum", func(c *Config) { c.SnapshotInterval = time.Millisecond }, "snapshot-interval", ">= 5ms"},
		{"advertise with a named port", func(c *Config) { c.GRPCAdvertise = "10.0.0.1:http" }, "grpc-advertise", "port must be a number"},
		{"bind port out of range", func(c *Config) { c.RaftBind = "127.0.0.1:99999" }, "raft-bind", "port must be a number"},
		{"lease > heartbeat", func(c *Config) { c.LeaderLeaseTimeout = c.HeartbeatTimeout + time.Millisecond }, "raft-leader-lease-timeout", ""},
		{"lease zero", func(c *Config) { c.LeaderLeaseTimeout = 0 }, "raft-leader-lease-timeout", ""},
		{"commit timeout zero", func(c *Config) { c.CommitTimeout = 0 }, "raft-commit-timeout", ""},
		{"snapshot threshold zero", func(c *Config) { c.SnapshotThreshold = 0 }, "snapshot-threshold", ""},
		{"snapshot interval zero", func(c *Config) { c.SnapshotInterval = 0 }, "snapshot-interval", ""},
		{"apply timeout zero", func(c *Config) { c.ApplyTimeout = 0 }, "apply-timeout", ""},
		{"apply timeout negative", func(c *Config) { c.ApplyTimeout = -time.Second }, "apply-timeout", ""},
		{"max batch ops zero", func(c *Config) { c.MaxBatchOps = 0 }, "max-batch-ops", ""},
		{"max inflight zero", func(c *Config) { c.MaxInflightEntries = 0 }, "max-inflight-entries", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig(t)
			tt.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate() = nil, want an error naming %q", tt.field)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.field) {
				t.Errorf("Validate() = %q, want it to name %q", msg, tt.field)
			}
			if tt.also != "" && !strings.Contains(msg, tt.also) {
				t.Errorf("Validate() = %q, want it to contain %q", msg, tt.also)
			}
			// Exactly one problem was introduced: exactly one line.
			if n := len(strings.Split(msg, "\n")); n != 1 {
				t.Errorf("Validate() reported %d problems, want 1:\n%s", n, msg)
			}
		})
	}
}

func TestConfig_BucketCountsPowersOfTwo(t *testing.T) {
	for _, n := range []uint32{1, 2, 1024, 4096, 1 << 20} {
		c := validConfig(t)
		c.BucketCount = n
		if err := c.Validate(); err != nil {
			t.Errorf("BucketCount %d: Validate() = %v", n, err)
		}
	}
}

func TestConfig_TimingBoundaries(t *testing.T) {
	c := validConfig(t)
	// Election == heartbeat and lease == heartbeat are allowed.
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, time.Second, time.Second
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(equal timeouts) = %v", err)
	}
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 5*time.Millisecond, 5*time.Millisecond, 5*time.Millisecond
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(5ms timeouts) = %v", err)
	}
}

func TestConfig_ManyErrorsReported(t *testing.T) {
	c := validConfig(t)
	c.MemberID = ""
	c.Site = "!"
	c.DataDir = ""
	c.GRPCBind = "0.0.0.0:7420"
	c.RaftBind = "nope"
	c.Bootstrap, c.Join = true, []string{"10.0.0.2:7420"}
	c.BucketCount = 3000
	c.ElectionTimeout = c.HeartbeatTimeout - time.Millisecond
	c.LeaderLeaseTimeout = c.HeartbeatTimeout * 2
	c.ApplyTimeout = 0
	c.MaxBatchOps = 0
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	// errors.Join: one problem per line, and Unwrap lists them all.
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Validate() = %T, want an errors.Join result", err)
	}
	fields := []string{"member-id", "site", "data-dir", "grpc-advertise", "raft-bind", "bootstrap",
		"buckets", "raft-election-timeout", "raft-leader-lease-timeout", "apply-timeout", "max-batch-ops"}
	if got := len(joined.Unwrap()); got != len(fields) {
		t.Errorf("Validate() reported %d problems, want %d:\n%v", got, len(fields), err)
	}
	msg := err.Error()
	for _, f := range fields {
		if !strings.Contains(msg, f) {
			t.Errorf("Validate() does not name %q:\n%s", f, msg)
		}
	}
}
