package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

func sampleStatus() *pb.StatusResponse {
	return &pb.StatusResponse{
		MemberId: "m1", Site: "site1", RaftState: "Follower", LeaderId: "m0", LeaderGrpcAddr: "10.0.0.1:7420",
		Term: 3, CommitIndex: 120, AppliedIndex: 119, LastContactMs: 42,
		MemberCount: 3, BucketCount: 4096, ClaimCount: 7, LockCount: 0, Version: "0.1.0",
		LeaseValid: true, ActiveBuckets: 1365, GossipAddr: "10.0.0.2:7422",
	}
}

func sampleMembers() []*pb.Member {
	return []*pb.Member{
		{Id: "m0", Site: "site1", RaftAddr: "10.0.0.1:7421", GrpcAddr: "10.0.0.1:7420", Weight: 0, State: pb.MemberState_MEMBER_STATE_ALIVE, JoinedIndex: 3},
		{Id: "m1", Site: "site1", RaftAddr: "10.0.0.2:7421", GrpcAddr: "10.0.0.2:7420", Weight: 2, State: pb.MemberState_MEMBER_STATE_LEFT, JoinedIndex: 9},
		{Id: "m2", Site: "site1", RaftAddr: "[2001:db8::3]:7421", GrpcAddr: "[2001:db8::3]:7420", Weight: 1, State: pb.MemberState_MEMBER_STATE_FAILED, JoinedIndex: 12},
	}
}

func TestPrinterStatusTable(t *testing.T) {
	var buf bytes.Buffer
	if err := newPrinter(&buf, outputTable).status(sampleStatus()); err != nil {
		t.Fatal(err)
	}
	want := `Member:          m1
Site:            site1
Raft state:      Follower
Leader:          m0 (10.0.0.1:7420)
Term:            3
Commit index:    120
Applied index:   119
Last contact:    42ms
Members:         3
Buckets:         4096
Claims:          7
Locks:           0
Member lease:    valid
Active buckets:  1365
Gossip:          10.0.0.2:7422
Version:         0.1.0
`
	if got := buf.String(); got != want {
		t.Errorf("status table:\n%s\nwant:\n%s", got, want)
	}
}

func TestPrinterStatusTableLeaderUnknown(t *testing.T) {
	var buf bytes.Buffer
	st := &pb.StatusResponse{MemberId: "m0", RaftState: "Candidate"}
	if err := newPrinter(&buf, outputTable).status(st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "Leader:          -\n") {
		t.Errorf("unknown leader should print as -:\n%s", buf.String())
	}
}

func TestPrinterStatusJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := newPrinter(&buf, outputJSON).status(sampleStatus()); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, buf.String())
	}
	// Proto field names; 64-bit integers are strings in protojson.
	for k, v := range map[string]any{
		"member_id": "m1", "raft_state": "Follower", "leader_grpc_addr": "10.0.0.1:7420",
		"term": "3", "commit_index": "120", "last_contact_ms": "42", "member_count": float64(3),
		"lock_count": "0", // unpopulated, still present
	} {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if n := (&pb.StatusResponse{}).ProtoReflect().Descriptor().Fields().Len(); len(got) != n {
		t.Errorf("got %d fields, want all %d: %v", len(got), n, got)
	}
}

func sampleDetails() []*pb.MemberDetail {
	return []*pb.MemberDetail{
		{MemberId: "m0", PrimaryBuckets: 2048, BackupBuckets: 2048, RaftSuffrage: "Voter", Leader: true, GossipState: "Alive", HeartbeatAgeMs: -1},
		{MemberId: "m1", GossipState: "Left", HeartbeatAgeMs: -1},
		{MemberId: "m2", RaftSuffrage: "Voter", HeartbeatAgeMs: 1500},
	}
}

func TestPrinterMembersTable(t *testing.T) {
	var buf bytes.Buffer
	if err := newPrinter(&buf, outputTable).members(sampleMembers(), sampleDetails()); err != nil {
		t.Fatal(err)
	}
	want := `ID  SITE   STATE   ROLE    PRIMARY  BACKUP  GOSSIP  HEARTBEAT  GRPC ADDR           WEIGHT
m0  site1  ALIVE   leader  2048     2048    alive   -          10.0.0.1:7420       1
m1  site1  LEFT    -       0        0       left    -          10.0.0.2:7420       2
m2  site1  FAILED  voter   0        0       -       1.5s ago   [2001:db8::3]:7420  1
`
	if got := buf.String(); got != want {
		t.Errorf("members table:\n%s\nwant:\n%s", got, want)
	}
}

func TestPrinterMembersJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := newPrinter(&buf, outputJSON).members(sampleMembers(), sampleDetails()); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, buf.String())
	}
	if len(got) != 3 {
		t.Fatalf("got %d members, want 3", len(got))
	}
	if got[0]["id"] != "m0" || got[0]["state"] != "MEMBER_STATE_ALIVE" || got[0]["weight"] != float64(0) ||
		got[0]["raft_addr"] != "10.0.0.1:7421" || got[0]["joined_index"] != "3" {
		t.Errorf("first member: %v", got[0])
	}
	if got[2]["state"] != "MEMBER_STATE_FAILED" || got[2]["heartbeat_age_ms"] != "1500" || got[2]["raft_suffrage"] != "Voter" {
		t.Errorf("third member: %v", got[2])
	}
	if got[0]["primary_buckets"] != float64(2048) || got[0]["leader"] != true || got[0]["member_id"] != nil {
		t.Errorf("first member's details: %v", got[0])
	}
}

func TestPrinterEmptyListJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := newPrinter(&buf, outputJSON).members(nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(buf.String()); got != "[]" {
		t.Errorf("empty list = %q, want []", got)
	}
}

func TestPrinterRaftPeersTable(t *testing.T) {
	var buf bytes.Buffer
	peers := []*pb.RaftPeer{{Id: "m0", Address: "10.0.0.1:7421", Suffrage: "Voter", Leader: true},
		{Id: "m1", Address: "10.0.0.2:7421", Suffrage: "Nonvoter"}}
	if err := newPrinter(&buf, outputTable).raftPeers(peers); err != nil {
		t.Fatal(err)
	}
	want := `ID  ADDRESS        SUFFRAGE  LEADER
m0  10.0.0.1:7421  Voter     *
m1  10.0.0.2:7421  Nonvoter  
`
	if got := buf.String(); got != want {
		t.Errorf("raft peers table:\n%q\nwant:\n%q", got, want)
	}
}

func TestPrinterOwnershipTable(t *testing.T) {
	key := &pb.ConnKey{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: 1234, DstIp: "192.0.2.1", DstPort: 80}
	own := &pb.Ownership{Key: key, Bucket: 17, Owner: "m1", AppliedIndex: 50,
		Assignment: &pb.Assignment{Bucket: 17, Primary: "m0", LocalBackup: "m2", Epoch: 4}}
	var buf bytes.Buffer
	if err := newPrinter(&buf, outputTable).ownership(own); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`^Key:\s+tcp 10\.0\.0\.1:1234 192\.0\.2\.1:80$`, `^Bucket:\s+17$`, `^Owner:\s+m1$`,
		`^Claim:\s+-$`, `^Primary:\s+m0$`, `^Local backup:\s+m2$`, `^Remote backup:\s+-$`, `^Assignment epoch:\s+4$`, `^Applied index:\s+50$`} {
		if !regexp.MustCompile("(?m)" + want).MatchString(buf.String()) {
			t.Errorf("no line matching %q in\n%s", want, buf.String())
		}
	}
	own.Claim = &pb.Claim{Key: key, MemberId: "m1", Epoch: 9}
	buf.Reset()
	if err := newPrinter(&buf, outputTable).ownership(own); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^Claim:\s+m1 epoch 9$`).MatchString(buf.String()) {
		t.Errorf("claim not printed:\n%s", buf.String())
	}
}

func TestPrinterLock(t *testing.T) {
	l := &pb.Lock{Key: &pb.ConnKey{Protocol: 17, SrcIp: "2001:db8::1", SrcPort: 53, DstIp: "2001:db8::2", DstPort: 5353, Zone: "blue"},
		MemberId: "m0", Token: 1 << 40, ExpiresAt: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
		Ttl: durationpb.New(30 * time.Second)}
	var buf bytes.Buffer
	if err := newPrinter(&buf, outputTable).lock(l); err != nil {
		t.Fatal(err)
	}
	want := `Token:       1099511627776
Holder:      m0
Expires at:  2026-01-02T03:04:05Z
TTL:         30s
Key:         udp [2001:db8::1]:53 [2001:db8::2]:5353 zone blue
`
	if got := buf.String(); got != want {
		t.Errorf("lock table:\n%s\nwant:\n%s", got, want)
	}
	buf.Reset()
	if err := newPrinter(&buf, outputJSON).lock(l); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Token     string `json:"token"`
		ExpiresAt string `json:"expires_at"`
		TTL       string `json:"ttl"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, buf.String())
	}
	if got.Token != "1099511627776" || got.ExpiresAt != "2026-01-02T03:04:05Z" || got.TTL != "30s" {
		t.Errorf("lock JSON: %+v", got)
	}
}

func TestFormatKey(t *testing.T) {
	for _, tc := range []struct {
		key  *pb.ConnKey
		want string
	}{
		{&pb.ConnKey{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: 1, DstIp: "10.0.0.2", DstPort: 2}, "tcp 10.0.0.1:1 10.0.0.2:2"},
		{&pb.ConnKey{Protocol: 58, SrcIp: "::1", DstIp: "::2"}, "icmpv6 [::1]:0 [::2]:0"},
		{&pb.ConnKey{Protocol: 99, SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Zone: "z"}, "99 10.0.0.1:0 10.0.0.2:0 zone z"},
		{nil, "-"},
	} {
		if got := formatKey(tc.key); got != tc.want {
			t.Errorf("formatKey(%v) = %q, want %q", tc.key, got, tc.want)
		}
	}
}
