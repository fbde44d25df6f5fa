package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// wantInvalid checks err is INVALID_ARGUMENT and names field.
func wantInvalid(t *testing.T, what string, err error, field string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: nil error, want INVALID_ARGUMENT naming %q", what, field)
		return
	}
	wantStatus(t, what, err, codes.InvalidArgument, field+": ")
}

func TestCheckMemberID(t *testing.T) {
	for _, id := range []string{"m1", "M", "a.b-c_d", "0", strings.Repeat("x", 64)} {
		if err := checkMemberID("member_id", id); err != nil {
			t.Errorf("checkMemberID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "-m", ".m", "_m", "a b", "a/b", "é", strings.Repeat("x", 65)} {
		wantInvalid(t, fmt.Sprintf("checkMemberID(%q)", id), checkMemberID("target_id", id), "target_id")
	}
}

func TestCheckHostPort(t *testing.T) {
	for _, a := range []string{"10.0.0.1:7420", "node1.example.com:1", "[2001:db8::1]:65535", "localhost:7421"} {
		if err := checkHostPort("grpc_addr", a); err != nil {
			t.Errorf("checkHostPort(%q) = %v", a, err)
		}
	}
	for a, sub := range map[string]string{
		"":                      "not host:port",
		"10.0.0.1":              "not host:port",
		"a:b:c":                 "not host:port",
		"2001:db8::1:80":        "not host:port",
		"10.0.0.1:0":            "port must be a number from 1 to 65535",
		"10.0.0.1:65536":        "port must be a number from 1 to 65535",
		"10.0.0.1:-1":           "port must be a number from 1 to 65535",
		"10.0.0.1:http":         "port must be a number from 1 to 65535",
		"10.0.0.1:":             "port must be a number from 1 to 65535",
		":7420":                 "host must be",
		"0.0.0.0:7420":          "host must be",
		"[::]:7420":             "host must be",
		"[::ffff:0.0.0.0]:7420": "host must be",
	} {
		err := checkHostPort("raft_addr", a)
		wantInvalid(t, fmt.Sprintf("checkHostPort(%q)", a), err, "raft_addr")
		if err != nil && !strings.Contains(err.Error(), sub) {
			t.Errorf("checkHostPort(%q) = %v, want it to say %q", a, err, sub)
		}
	}
}

func TestCheckTTL(t *testing.T) {
	ok := map[*durationpb.Duration]time.Duration{
		durationpb.New(time.Nanosecond):  time.Nanosecond,
		durationpb.New(10 * time.Second): 10 * time.Second,
		durationpb.New(fsm.MaxLockTTL):   fsm.MaxLockTTL,
		{Seconds: 1, Nanos: 500_000_000}: 1500 * time.Millisecond,
	}
	for d, want := range ok {
		got, err := checkTTL("ttl", d)
		if err != nil || got != want {
			t.Errorf("checkTTL(%v) = %v, %v; want %v", d, got, err, want)
		}
	}
	bad := map[string]*durationpb.Duration{
		"nil":                  nil,
		"zero":                 {},
		"negative":             durationpb.New(-time.Second),
		"negative nanos":       {Nanos: -1},
		"over an hour":         durationpb.New(fsm.MaxLockTTL + time.Nanosecond),
		"a day":                durationpb.New(24 * time.Hour),
		"nanos out of range":   {Seconds: 1, Nanos: 1_000_000_000},
		"nanos negative range": {Seconds: -1, Nanos: -1_000_000_000},
		"mixed signs":          {Seconds: 1, Nanos: -1},
		"seconds out of range": {Seconds: 315576000001},
	}
	for name, d := range bad {
		got, err := checkTTL("ttl", d)
		wantInvalid(t, "checkTTL "+name, err, "ttl")
		if got != 0 {
			t.Errorf("checkTTL %s returned %v with its error, want 0", name, got)
		}
	}
	_, err := checkTTL("ttl", nil)
	wantStatus(t, "checkTTL nil", err, codes.InvalidArgument, "is required")
}

func TestCheckToken(t *testing.T) {
	wantInvalid(t, "checkToken(0)", checkToken(0), "token")
	for _, tok := range []uint64{1, 42, ^uint64(0)} {
		if err := checkToken(tok); err != nil {
			t.Errorf("checkToken(%d) = %v", tok, err)
		}
	}
}

func goodKey(i int) *pb.ConnKey {
	return &pb.ConnKey{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: uint32(1024 + i%60000), DstIp: "192.0.2.1", DstPort: 80}
}

func TestParseKeys(t *testing.T) {
	keys, err := parseKeys([]*pb.ConnKey{goodKey(1), goodKey(2), goodKey(1)})
	if err != nil {
		t.Fatalf("parseKeys(3 good keys) = %v", err)
	}
	if len(keys) != 3 || keys[0] != keys[2] || keys[0] == keys[1] {
		t.Fatalf("parseKeys = %q", keys)
	}
	for i, k := range []*pb.ConnKey{goodKey(1), goodKey(2), goodKey(1)} {
		want, err := fsm.ParseKey(k, "key")
		if err != nil || keys[i] != want {
			t.Errorf("keys[%d] = %q, want %q (%v)", i, keys[i], want, err)
		}
	}

	_, err = parseKeys(nil)
	wantInvalid(t, "parseKeys(nil)", err, "keys")
	_, err = parseKeys([]*pb.ConnKey{})
	wantInvalid(t, "parseKeys(empty)", err, "keys")

	// The count is checked before any key is parsed.
	_, err = parseKeys(make([]*pb.ConnKey, MaxBatchKeys+1))
	wantInvalid(t, "parseKeys(too many)", err, "keys")
	if err != nil && !strings.Contains(err.Error(), fmt.Sprint(MaxBatchKeys)) {
		t.Errorf("parseKeys(too many) = %v, want it to state the limit", err)
	}

	max := make([]*pb.ConnKey, MaxBatchKeys)
	for i := range max {
		max[i] = goodKey(i)
	}
	if keys, err := parseKeys(max); err != nil || len(keys) != MaxBatchKeys {
		t.Errorf("parseKeys(MaxBatchKeys keys) = %d keys, %v", len(keys), err)
	}
}

func TestParseKeys_NamesTheField(t *testing.T) {
	tests := []struct {
		bad   *pb.ConnKey
		field string
	}{
		{nil, "keys[2]"},
		{&pb.ConnKey{Protocol: 6, SrcIp: "", SrcPort: 1, DstIp: "10.0.0.2", DstPort: 2}, "keys[2].src_ip"},
		{&pb.ConnKey{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: 1, DstIp: "nope", DstPort: 2}, "keys[2].dst_ip"},
		{&pb.ConnKey{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: 1, DstIp: "::1", DstPort: 2}, "keys[2].dst_ip"},
		{&pb.ConnKey{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: 0, DstIp: "10.0.0.2", DstPort: 2}, "keys[2].src_port"},
		{&pb.ConnKey{Protocol: 17, SrcIp: "10.0.0.1", SrcPort: 1, DstIp: "10.0.0.2", DstPort: 70000}, "keys[2].dst_port"},
		{&pb.ConnKey{Protocol: 256, SrcIp: "10.0.0.1", DstIp: "10.0.0.2"}, "keys[2].protocol"},
		{&pb.ConnKey{Zone: strings.Repeat("z", fsm.MaxZoneLen+1), Protocol: 1, SrcIp: "10.0.0.1", DstIp: "10.0.0.2"}, "keys[2].zone"},
	}
	for _, tt := range tests {
		keys, err := parseKeys([]*pb.ConnKey{goodKey(0), goodKey(1), tt.bad, goodKey(3)})
		if err == nil {
			t.Errorf("parseKeys(bad %s) = %q, want an error", tt.field, keys)
			continue
		}
		var fe *fsm.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("parseKeys(bad %s) = %T %v, want a FieldError for %s", tt.field, err, err, tt.field)
		}
		// What the client sees.
		wantInvalid(t, "toStatus(parseKeys bad "+tt.field+")", toStatus(err), tt.field)
	}
}

func TestItemStatus(t *testing.T) {
	if st := itemStatus(nil); st.Code != int32(codes.OK) || st.Message != "" {
		t.Errorf("itemStatus(nil) = %v", st)
	}
	detailed := &fsm.Error{Code: fsm.ErrClaimConflict.Code, Msg: fsm.ErrClaimConflict.Msg + ": claimed by m2"}
	for _, tt := range []struct {
		err  error
		code codes.Code
	}{
		{fsm.ErrClaimConflict, codes.FailedPrecondition},
		{detailed, codes.FailedPrecondition},
		{fsm.ErrNotClaimed, codes.NotFound},
		{fsm.ErrEpochMismatch, codes.FailedPrecondition},
		{fsm.ErrLockNotHeld, codes.NotFound},
		{fsm.ErrUnknownMember, codes.InvalidArgument},
		{fsm.ErrInvalid, codes.InvalidArgument},
		{fsm.ErrSiteNotInitialised, codes.Unavailable},
		{&fsm.FieldError{Field: "keys[1].src_ip", Msg: "is required"}, codes.InvalidArgument},
		{raft.ErrNotLeader, codes.Unavailable},
		{status.Error(codes.ResourceExhausted, "slow down"), codes.ResourceExhausted},
		{errors.New("boom"), codes.Internal},
	} {
		st := itemStatus(tt.err)
		if codes.Code(st.Code) != tt.code {
			t.Errorf("itemStatus(%v).Code = %v, want %v", tt.err, codes.Code(st.Code), tt.code)
		}
		if st.Message != tt.err.Error() {
			t.Errorf("itemStatus(%v).Message = %q, want %q", tt.err, st.Message, tt.err.Error())
		}
	}
	for sentinel, code := range codeFor {
		if st := itemStatus(sentinel); codes.Code(st.Code) != code {
			t.Errorf("itemStatus(%q).Code = %v, want %v", sentinel.Msg, codes.Code(st.Code), code)
		}
	}
}
