package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

// printer writes command results either as a human table or as JSON (-o json:
// protobuf messages in their protojson form with proto field names and every
// field present, lists as JSON arrays).
type printer struct {
	w      io.Writer
	format string // outputTable or outputJSON
}

func newPrinter(w io.Writer, format string) *printer {
	return &printer{w: w, format: format}
}

var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// json prints one message.
func (p *printer) json(m proto.Message) error {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return err
	}
	return p.indented(b)
}

// jsonList prints messages as a JSON array ([] when empty).
func jsonList[M proto.Message](p *printer, ms []M) error {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, m := range ms {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, err := jsonOptions.Marshal(m)
		if err != nil {
			return err
		}
		buf.Write(b)
	}
	buf.WriteByte(']')
	return p.indented(buf.Bytes())
}

// indented re-indents JSON: protojson's own spacing is deliberately unstable.
func (p *printer) indented(b []byte) error {
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err := p.w.Write(out.Bytes())
	return err
}

// table writes rows of tab-separated cells, aligned.
func (p *printer) table(rows [][]string) error {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// fields writes "Name: value" lines, values aligned.
func (p *printer) fields(kv ...string) error {
	rows := make([][]string, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		rows = append(rows, []string{kv[i] + ":", kv[i+1]})
	}
	return p.table(rows)
}

func (p *printer) line(format string, args ...any) error {
	_, err := fmt.Fprintf(p.w, format+"\n", args...)
	return err
}

func (p *printer) status(st *pb.StatusResponse) error {
	if p.format == outputJSON {
		return p.json(st)
	}
	leader := orDash(st.LeaderId)
	if st.LeaderGrpcAddr != "" {
		leader += " (" + st.LeaderGrpcAddr + ")"
	}
	lastContact := "-"
	if st.RaftState != "Leader" {
		lastContact = (time.Duration(st.LastContactMs) * time.Millisecond).String()
	}
	return p.fields(
		"Member", st.MemberId,
		"Site", st.Site,
		"Raft state", st.RaftState,
		"Leader", leader,
		"Term", u64(st.Term),
		"Commit index", u64(st.CommitIndex),
		"Applied index", u64(st.AppliedIndex),
		"Last contact", lastContact,
		"Members", u64(uint64(st.MemberCount)),
		"Buckets", u64(uint64(st.BucketCount)),
		"Claims", u64(st.ClaimCount),
		"Locks", u64(st.LockCount),
		"Member lease", lease(st.LeaseValid),
		"Active buckets", u64(uint64(st.ActiveBuckets)),
		"Gossip", orDash(st.GossipAddr),
		"Version", orDash(st.Version),
	)
}

func lease(valid bool) string {
	if valid {
		return "valid"
	}
	return "none (acts as primary for nothing)"
}

// members prints members with their details (same order; details may be
// nil). JSON: an array of member objects, each with its detail fields added.
func (p *printer) members(ms []*pb.Member, details []*pb.MemberDetail) error {
	detail := func(i int) *pb.MemberDetail {
		if i < len(details) {
			return details[i]
		}
		return nil
	}
	if p.format == outputJSON {
		objs := make([]map[string]any, len(ms))
		for i, m := range ms {
			obj, err := jsonObject(m)
			if err != nil {
				return err
			}
			if d := detail(i); d != nil {
				extra, err := jsonObject(d)
				if err != nil {
					return err
				}
				delete(extra, "member_id")
				for k, v := range extra {
					obj[k] = v
				}
			}
			objs[i] = obj
		}
		b, err := json.Marshal(objs)
		if err != nil {
			return err
		}
		return p.indented(b)
	}
	rows := [][]string{{"ID", "SITE", "STATE", "ROLE", "PRIMARY", "BACKUP", "GOSSIP", "HEARTBEAT", "GRPC ADDR", "WEIGHT"}}
	for i, m := range ms {
		role, prim, back, gossip, hb := "-", "-", "-", "-", "-"
		if d := detail(i); d != nil {
			role = strings.ToLower(orDash(d.RaftSuffrage))
			if d.Leader {
				role = "leader"
			}
			prim, back = u64(uint64(d.PrimaryBuckets)), u64(uint64(d.BackupBuckets))
			gossip = strings.ToLower(orDash(d.GossipState))
			if d.HeartbeatAgeMs >= 0 {
				hb = (time.Duration(d.HeartbeatAgeMs) * time.Millisecond).String() + " ago"
			}
		}
		rows = append(rows, []string{m.Id, m.Site, memberState(m.State), role, prim, back, gossip, hb,
			orDash(m.GrpcAddr), weight(m.Weight)})
	}
	return p.table(rows)
}

// jsonObject returns a message's protojson form as a map.
func jsonObject(m proto.Message) (map[string]any, error) {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	return out, json.Unmarshal(b, &out)
}

// member prints one member (join's and drain's answer): the members table
// with one row.
func (p *printer) member(m *pb.Member) error {
	if p.format == outputJSON {
		return p.json(m)
	}
	return p.members([]*pb.Member{m}, nil)
}

// buckets prints the bucket map: per member counts, or every bucket (all).
func (p *printer) buckets(r *pb.ListAssignmentsResponse, all bool) error {
	if p.format == outputJSON {
		return p.json(r)
	}
	if all {
		rows := [][]string{{"BUCKET", "PRIMARY", "LOCAL BACKUP", "SYNCED", "REMOTE BACKUP", "EPOCH", "INCOMING"}}
		for _, a := range r.Assignments {
			synced := "-"
			if a.LocalBackup != "" {
				synced = yesNo(a.BackupSynced)
			}
			rows = append(rows, []string{u64(uint64(a.Bucket)), orDash(a.Primary), orDash(a.LocalBackup),
				synced, orDash(a.RemoteBackup), u64(a.Epoch), incoming(a)})
		}
		return p.table(rows)
	}
	type counts struct{ primary, backup, unsynced, movingIn int }
	by := map[string]*counts{}
	get := func(id string) *counts {
		if by[id] == nil {
			by[id] = &counts{}
		}
		return by[id]
	}
	var maxEpoch uint64
	unassigned := 0
	for _, a := range r.Assignments {
		maxEpoch = max(maxEpoch, a.Epoch)
		if a.Primary == "" {
			unassigned++
			continue
		}
		get(a.Primary).primary++
		if a.LocalBackup != "" {
			b := get(a.LocalBackup)
			b.backup++
			if !a.BackupSynced {
				b.unsynced++
			}
		}
		if a.Incoming != "" {
			get(a.Incoming).movingIn++
		}
	}
	ids := make([]string, 0, len(by))
	for id := range by {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	rows := [][]string{{"MEMBER", "PRIMARY", "BACKUP", "BACKUP UNSYNCED", "MOVING IN"}}
	for _, id := range ids {
		c := by[id]
		rows = append(rows, []string{id, itoa(c.primary), itoa(c.backup), itoa(c.unsynced), itoa(c.movingIn)})
	}
	if err := p.table(rows); err != nil {
		return err
	}
	return p.line("%d buckets, %d without a primary, newest epoch %d, revision %d", len(r.Assignments), unassigned, maxEpoch, r.Revision)
}

func (p *printer) rebalance(r *pb.RebalanceResponse, dryRun bool) error {
	if p.format == outputJSON {
		return p.json(r)
	}
	verb := "Started"
	if dryRun {
		verb = "Would start"
	}
	if err := p.line("%s %d moves (imbalance %.3f -> %.3f; %d moves already under way)", verb, len(r.Moves),
		r.ImbalanceBefore, r.ImbalanceAfter, r.MovesInProgress); err != nil {
		return err
	}
	pairs := map[[2]string]int{}
	for _, m := range r.Moves {
		pairs[[2]string{m.FromMember, m.ToMember}]++
	}
	keys := make([][2]string, 0, len(pairs))
	for k := range pairs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+" "+keys[i][1] < keys[j][0]+" "+keys[j][1] })
	rows := [][]string{{"FROM", "TO", "BUCKETS"}}
	for _, k := range keys {
		rows = append(rows, []string{k[0], k[1], itoa(pairs[k])})
	}
	if len(keys) == 0 {
		return nil
	}
	return p.table(rows)
}

// incoming describes a move under way: "m4 -> primary (synced)".
func incoming(a *pb.Assignment) string {
	if a.Incoming == "" {
		return "-"
	}
	role := "backup"
	if a.IncomingPrimary {
		role = "primary"
	}
	s := a.Incoming + " -> " + role
	if a.IncomingSynced {
		s += " (synced)"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func itoa(n int) string { return strconv.Itoa(n) }

func (p *printer) raftPeers(peers []*pb.RaftPeer) error {
	if p.format == outputJSON {
		return jsonList(p, peers)
	}
	rows := [][]string{{"ID", "ADDRESS", "SUFFRAGE", "LEADER"}}
	for _, r := range peers {
		leader := ""
		if r.Leader {
			leader = "*"
		}
		rows = append(rows, []string{r.Id, r.Address, r.Suffrage, leader})
	}
	return p.table(rows)
}

func (p *printer) removed(id string) error {
	if p.format == outputJSON {
		return p.json(&pb.RemoveMemberResponse{})
	}
	return p.line("Removed member %s", id)
}

func (p *printer) leader(id string) error {
	if p.format == outputJSON {
		return p.json(&pb.TransferLeadershipResponse{LeaderId: id})
	}
	return p.line("Leader is now %s", orDash(id))
}

func (p *printer) claim(c *pb.Claim) error {
	if p.format == outputJSON {
		return p.json(c)
	}
	return p.fields(
		"Member", c.MemberId,
		"Epoch", u64(c.Epoch),
		"Key", formatKey(c.Key),
	)
}

func (p *printer) released(k *pb.ConnKey) error {
	if p.format == outputJSON {
		return p.json(&pb.ReleaseResponse{})
	}
	return p.line("Released %s", formatKey(k))
}

func (p *printer) ownership(o *pb.Ownership) error {
	if p.format == outputJSON {
		return p.json(o)
	}
	claim := "-"
	if c := o.Claim; c != nil {
		claim = fmt.Sprintf("%s epoch %d", c.MemberId, c.Epoch)
	}
	a := o.Assignment
	return p.fields(
		"Key", formatKey(o.Key),
		"Bucket", u64(uint64(o.Bucket)),
		"Owner", orDash(o.Owner),
		"Claim", claim,
		"Primary", orDash(a.GetPrimary()),
		"Local backup", orDash(a.GetLocalBackup()),
		"Remote backup", orDash(a.GetRemoteBackup()),
		"Assignment epoch", u64(a.GetEpoch()),
		"Applied index", u64(o.AppliedIndex),
	)
}

func (p *printer) lock(l *pb.Lock) error {
	if p.format == outputJSON {
		return p.json(l)
	}
	expires := "-"
	if l.ExpiresAt != nil {
		expires = l.ExpiresAt.AsTime().UTC().Format(time.RFC3339Nano)
	}
	return p.fields(
		"Token", u64(l.Token),
		"Holder", l.MemberId,
		"Expires at", expires,
		"TTL", l.Ttl.AsDuration().String(),
		"Key", formatKey(l.Key),
	)
}

func (p *printer) unlocked(k *pb.ConnKey) error {
	if p.format == outputJSON {
		return p.json(&pb.ReleaseLockResponse{})
	}
	return p.line("Unlocked %s", formatKey(k))
}

var protocolNames = map[uint32]string{1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}

// protocolName returns a protocol's name, or its number.
func protocolName(p uint32) string {
	if n, ok := protocolNames[p]; ok {
		return n
	}
	return strconv.FormatUint(uint64(p), 10)
}

// formatKey writes a key the way the commands take it, "tcp 10.0.0.1:1234
// 192.0.2.1:80", with " zone Z" appended outside the default zone.
func formatKey(k *pb.ConnKey) string {
	if k == nil {
		return "-"
	}
	proto, ok := protocolNames[k.Protocol]
	if !ok {
		proto = strconv.FormatUint(uint64(k.Protocol), 10)
	}
	s := fmt.Sprintf("%s %s %s", proto,
		net.JoinHostPort(k.SrcIp, strconv.FormatUint(uint64(k.SrcPort), 10)),
		net.JoinHostPort(k.DstIp, strconv.FormatUint(uint64(k.DstPort), 10)))
	if k.Zone != "" {
		s += " zone " + k.Zone
	}
	return s
}

// memberState prints ALIVE, LEFT, FAILED without the enum prefix.
func memberState(s pb.MemberState) string {
	return strings.TrimPrefix(s.String(), "MEMBER_STATE_")
}

// weight prints the effective weight: 0 means the default, 1.
func weight(w uint32) string {
	if w == 0 {
		w = 1
	}
	return strconv.FormatUint(uint64(w), 10)
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
