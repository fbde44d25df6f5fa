package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

// unusedAddr is an address nothing listens on.
func unusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// execute runs one command line through a fresh root command and returns
// what it printed on stdout.
func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if errOut.Len() > 0 {
		t.Logf("stderr of %v: %s", args, errOut.String())
	}
	return out.String(), err
}

func TestParseAddrs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"127.0.0.1:7420", []string{"127.0.0.1:7420"}, false},
		{"a:1, b:2,,c:3 ", []string{"a:1", "b:2", "c:3"}, false},
		{"", nil, true},
		{" , ", nil, true},
	} {
		got, err := parseAddrs(tc.in)
		if (err != nil) != tc.wantErr || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("parseAddrs(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestAddrDefault(t *testing.T) {
	t.Setenv(envAddr, "")
	if got := newRootCommand().PersistentFlags().Lookup(flagAddr).DefValue; got != defaultAddr {
		t.Errorf("default --addr = %q, want %q", got, defaultAddr)
	}
	t.Setenv(envAddr, "10.0.0.1:7420,10.0.0.2:7420")
	if got := newRootCommand().PersistentFlags().Lookup(flagAddr).DefValue; got != "10.0.0.1:7420,10.0.0.2:7420" {
		t.Errorf("--addr from %s = %q", envAddr, got)
	}
}

func TestParseKey(t *testing.T) {
	k, err := parseKey("blue", []string{"udp", "[2001:db8::1]:53", "[2001:db8::2]:5353"})
	if err != nil {
		t.Fatal(err)
	}
	want := &pb.ConnKey{Zone: "blue", Protocol: 17, SrcIp: "2001:db8::1", SrcPort: 53, DstIp: "2001:db8::2", DstPort: 5353}
	if k.String() != want.String() {
		t.Errorf("parseKey = %v, want %v", k, want)
	}
	if k, err := parseKey("", []string{"132", "10.0.0.1:1", "10.0.0.2:2"}); err != nil || k.Protocol != 132 {
		t.Errorf("numeric protocol: %v, %v", k, err)
	}
	// A bare address means port 0, for protocols without ports.
	if k, err := parseKey("", []string{"icmp", "10.0.0.1", "10.0.0.2"}); err != nil || k.SrcPort != 0 || k.DstIp != "10.0.0.2" {
		t.Errorf("bare addresses: %v, %v", k, err)
	}
	for _, args := range [][]string{
		{"bogus", "10.0.0.1:1", "10.0.0.2:2"},
		{"tcp", "host-name", "10.0.0.2:2"},
		{"tcp", "10.0.0.1:1", "10.0.0.2:99999"},
		{"tcp", "10.0.0.1:1"},
	} {
		if _, err := parseKey("", args); err == nil {
			t.Errorf("parseKey(%q) succeeded", args)
		}
	}
}

// TestArgumentCounts checks that wrong argument counts fail before any call
// with a message saying what is expected.
func TestArgumentCounts(t *testing.T) {
	addr := unusedAddr(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"claim", "tcp"}, "claim needs PROTO SRC DST, e.g. connsyncctl claim tcp 10.0.0.1:1234 192.0.2.1:80 (got 1 argument)"},
		{[]string{"release", "tcp", "a:1", "b:2", "extra"}, "release needs PROTO SRC DST"},
		{[]string{"lookup"}, "lookup needs PROTO SRC DST"},
		{[]string{"lock", "tcp", "a:1"}, "lock needs PROTO SRC DST"},
		{[]string{"unlock", "--token", "1"}, "unlock needs PROTO SRC DST"},
		{[]string{"remove"}, "remove needs MEMBER_ID"},
		{[]string{"join", "--site", "s", "--raft-addr", "a:1", "--grpc-addr", "a:2"}, "join needs MEMBER_ID"},
		{[]string{"transfer-leader", "m1", "m2"}, "transfer-leader takes at most one MEMBER_ID"},
		{[]string{"status", "x"}, "status takes no arguments"},
		{[]string{"members", "x"}, "members takes no arguments"},
		{[]string{"raft", "peers", "x"}, "raft peers takes no arguments"},
		{[]string{"raft", "bogus"}, `unknown command "bogus" for "connsyncctl raft"`},
	} {
		_, err := execute(t, append([]string{"--addr", addr}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
}

// TestFlagValidation checks the flags rejected before any call.
func TestFlagValidation(t *testing.T) {
	addr := unusedAddr(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "yaml", "status"}, `invalid --output "yaml": valid values are "table" and "json"`},
		{[]string{"--output=wide", "members"}, `valid values are "table" and "json"`},
		{[]string{"--timeout", "0s", "status"}, "invalid --timeout"},
		{[]string{"--addr", " , ", "status"}, "no member address"},
		{[]string{"lock", "tcp", "10.0.0.1:1", "10.0.0.2:2", "--ttl", "0s"}, "invalid --ttl 0s: the lease length must be > 0"},
		{[]string{"lock", "tcp", "10.0.0.1:1", "10.0.0.2:2", "--ttl", "-5s"}, "must be > 0"},
		{[]string{"unlock", "tcp", "10.0.0.1:1", "10.0.0.2:2"}, `required flag(s) "token" not set`},
		{[]string{"join", "m3", "--site", "s"}, `required flag(s) "grpc-addr", "raft-addr" not set`},
		{[]string{"claim", "tcp", "host-name", "10.0.0.2:2"}, `source "host-name": want IP:PORT`},
		{[]string{"claim", "carrier-pigeon", "10.0.0.1:1", "10.0.0.2:2"}, `protocol "carrier-pigeon"`},
		{[]string{"status", "--bogus"}, "unknown flag: --bogus\nRun 'connsyncctl status --help' for usage."},
	} {
		_, err := execute(t, append([]string{"--addr", addr}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
}

func TestReadableError(t *testing.T) {
	addrs := []string{"127.0.0.1:7420"}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.FailedPrecondition, "fsm: connection claimed by another member: m1 at epoch 3"),
			"FailedPrecondition: fsm: connection claimed by another member: m1 at epoch 3"},
		{status.Error(codes.InvalidArgument, "key.src_ip: bad"), "InvalidArgument: key.src_ip: bad"},
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:7420: connect: connection refused"`),
			"Unavailable: connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:7420: connect: connection refused\"\n" +
				"is connsyncd running at 127.0.0.1:7420? (set --addr or CONNSYNC_ADDR)"},
		{status.Error(codes.Unavailable, "server: no leader"), "Unavailable: server: no leader"},
		{errors.New("plain"), "plain"},
	} {
		if got := readableError(tc.err, addrs, time.Second).Error(); got != tc.want {
			t.Errorf("readableError(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if readableError(nil, addrs, time.Second) != nil {
		t.Error("readableError(nil) != nil")
	}
}

// TestUnreachable checks the hint when nothing listens at --addr, and the
// exit code and "Error: " prefix of run.
func TestUnreachable(t *testing.T) {
	addr := unusedAddr(t)
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--addr", addr, "--timeout", "300ms", "status"}, &out, &errOut)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	got := errOut.String()
	for _, want := range []string{"Error: Unavailable: ", "connection refused",
		"is connsyncd running at " + addr + "? (set --addr or CONNSYNC_ADDR)"} {
		if !strings.Contains(got, want) {
			t.Errorf("stderr %q does not contain %q", got, want)
		}
	}
	if out.Len() != 0 {
		t.Errorf("stdout: %q", out.String())
	}
}
