package membership

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	c := DefaultConfig()
	c.MemberID = "m1"
	c.BindAddr = "127.0.0.1:7946"
	return c
}

func TestConfig_DefaultsValid(t *testing.T) {
	c := validConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.BindAddr, c.AdvertiseAddr = "0.0.0.0:7946", "10.0.0.1:7946"
	if err := c.Validate(); err != nil {
		t.Fatalf("unspecified bind with explicit advertise: %v", err)
	}
	c.BindAddr, c.AdvertiseAddr = "[::1]:7946", ""
	if err := c.Validate(); err != nil {
		t.Fatalf("IPv6: %v", err)
	}
}

func TestConfig_Validate(t *testing.T) {
	cases := []struct {
		name  string
		tweak func(*Config)
		want  []string // substrings of the error
	}{
		{"no member id", func(c *Config) { c.MemberID = "" }, []string{"MemberID"}},
		{"no bind", func(c *Config) { c.BindAddr = "" }, []string{"BindAddr", "required"}},
		{"bind without port", func(c *Config) { c.BindAddr = "127.0.0.1" }, []string{"BindAddr", "missing port"}},
		{"bind host name", func(c *Config) { c.BindAddr = "localhost:7946" }, []string{"BindAddr", "not an IP address"}},
		{"bind port 0", func(c *Config) { c.BindAddr = "127.0.0.1:0" }, []string{"BindAddr", "1-65535"}},
		{"bind port too big", func(c *Config) { c.BindAddr = "127.0.0.1:70000" }, []string{"BindAddr", "1-65535"}},
		{"unspecified bind, no advertise", func(c *Config) { c.BindAddr = "0.0.0.0:7946" }, []string{"AdvertiseAddr", "BindAddr", "unspecified"}},
		{"unspecified v6 bind, no advertise", func(c *Config) { c.BindAddr = "[::]:7946" }, []string{"AdvertiseAddr", "unspecified"}},
		{"unspecified advertise", func(c *Config) { c.AdvertiseAddr = "0.0.0.0:7946" }, []string{"AdvertiseAddr", "unspecified"}},
		{"advertise host name", func(c *Config) { c.AdvertiseAddr = "blade1:7946" }, []string{"AdvertiseAddr", "not an IP address"}},
		{"meta too big", func(c *Config) { c.Meta.Site = strings.Repeat("x", 600) }, []string{"Meta", "bytes"}},
		{"label too long", func(c *Config) { c.Label = strings.Repeat("x", 300) }, []string{"Label"}},
		{"probe interval", func(c *Config) { c.ProbeInterval = time.Millisecond }, []string{"ProbeInterval"}},
		{"probe timeout zero", func(c *Config) { c.ProbeTimeout = 0 }, []string{"ProbeTimeout"}},
		{"probe timeout >= interval", func(c *Config) { c.ProbeTimeout = c.ProbeInterval }, []string{"ProbeTimeout 100ms", "ProbeInterval 100ms"}},
		{"suspicion mult", func(c *Config) { c.SuspicionMult = 0 }, []string{"SuspicionMult"}},
		{"suspicion max mult", func(c *Config) { c.SuspicionMaxTimeoutMult = 0 }, []string{"SuspicionMaxTimeoutMult"}},
		{"gossip interval", func(c *Config) { c.GossipInterval = 0 }, []string{"GossipInterval"}},
		{"gossip nodes", func(c *Config) { c.GossipNodes = 0 }, []string{"GossipNodes"}},
		{"retransmit", func(c *Config) { c.RetransmitMult = 0 }, []string{"RetransmitMult"}},
		{"indirect", func(c *Config) { c.IndirectChecks = -1 }, []string{"IndirectChecks"}},
		{"push pull", func(c *Config) { c.PushPullInterval = 0 }, []string{"PushPullInterval"}},
		{"gossip to the dead", func(c *Config) { c.GossipToTheDeadTime = -time.Second }, []string{"GossipToTheDeadTime"}},
		{"tcp timeout", func(c *Config) { c.TCPTimeout = 0 }, []string{"TCPTimeout"}},
		{"broadcast timeout", func(c *Config) { c.BroadcastTimeout = 0 }, []string{"BroadcastTimeout"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.tweak(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestConfig_ValidateReportsAll(t *testing.T) {
	var c Config // zero: everything wrong
	err := c.Validate()
	for _, field := range []string{"MemberID", "BindAddr", "ProbeInterval", "GossipInterval", "TCPTimeout"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("error %v does not mention %s", err, field)
		}
	}
}

func TestNew_InvalidConfig(t *testing.T) {
	c := validConfig()
	c.BindAddr = "0.0.0.0:7946"
	if _, err := New(c); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("New: %v, want ErrInvalidConfig", err)
	}
}
