package fsm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"sort"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
)

// snapshotVersion is written in every snapshot header; Restore refuses others.
const snapshotVersion = 1

// clone copies the state deeply enough that later Applies cannot change it.
func (st *state) clone() *state {
	c := *st
	c.members = make(map[string]*Member, len(st.members))
	for id, m := range st.members {
		mm := *m
		c.members[id] = &mm
	}
	c.buckets = append([]Assignment(nil), st.buckets...)
	c.claims = st.claims.clone()
	c.memberIDs = append([]string(nil), st.memberIDs...)
	c.memberIdx = maps.Clone(st.memberIdx)
	c.locks = maps.Clone(st.locks)
	c.sessions = make(map[uint64]*session, len(st.sessions))
	for id, s := range st.sessions {
		ss := *s
		ss.responses = maps.Clone(s.responses) // ProposalResults are never mutated
		c.sessions[id] = &ss
	}
	return &c
}

type snapshot struct{ st *state }

// Persist writes the records: header, members, buckets, claims, locks,
// sessions. Map contents are written in sorted order so two snapshots of equal
// states are byte-identical.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.st.writeTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}

func (st *state) writeTo(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	put := func(r *ipb.SnapshotRecord) error {
		_, err := protodelim.MarshalTo(bw, r)
		return err
	}
	rec := func(r any) *ipb.SnapshotRecord {
		switch v := r.(type) {
		case *ipb.SnapshotHeader:
			return &ipb.SnapshotRecord{Record: &ipb.SnapshotRecord_Header{Header: v}}
		case *pb.Member:
			return &ipb.SnapshotRecord{Record: &ipb.SnapshotRecord_Member{Member: v}}
		case *ipb.BucketRecord:
			return &ipb.SnapshotRecord{Record: &ipb.SnapshotRecord_Bucket{Bucket: v}}
		case *ipb.ClaimRecord:
			return &ipb.SnapshotRecord{Record: &ipb.SnapshotRecord_Claim{Claim: v}}
		case *ipb.LockRecord:
			return &ipb.SnapshotRecord{Record: &ipb.SnapshotRecord_Lock{Lock: v}}
		case *ipb.SessionRecord:
			return &ipb.SnapshotRecord{Record: &ipb.SnapshotRecord_Session{Session: v}}
		}
		panic(fmt.Sprintf("fsm: no snapshot record for %T", r))
	}
	var err error
	emit := func(r any) {
		if err == nil {
			err = put(rec(r))
		}
	}
	emit(&ipb.SnapshotHeader{Version: snapshotVersion, Site: st.site, BucketCount: st.bucketCount,
		LastToken: st.lastToken, NowUnixNano: st.now, AppliedIndex: st.applied, LastSweepUnixNano: st.lastSweep,
		Standby: st.standby, SiteEpoch: st.siteEpoch, LeaseEpoch: st.leaseEpoch})
	for _, id := range sortedKeys(st.members) {
		m := st.members[id]
		emit(m.Proto())
	}
	for i, a := range st.buckets {
		if a != (Assignment{}) {
			emit(a.record(uint32(i)))
		}
	}
	for _, k := range st.claims.sortedKeys() {
		rec, _ := st.claims.get(k)
		c := st.claim1(rec)
		emit(&ipb.ClaimRecord{Key: []byte(k), MemberId: c.MemberID, Epoch: c.Epoch})
	}
	for _, k := range sortedKeys(st.locks) {
		l := st.locks[k]
		emit(&ipb.LockRecord{Key: []byte(k), MemberId: l.MemberID, Token: l.Token,
			ExpiresUnixNano: l.Expires, TtlNanos: l.TTL})
	}
	for _, id := range sortedKeys(st.sessions) {
		s := st.sessions[id]
		sr := &ipb.SessionRecord{ClientId: id, LastSeenUnixNano: s.lastSeen, AckedSeq: s.acked}
		for _, seq := range sortedKeys(s.responses) {
			sr.Responses = append(sr.Responses, &ipb.SessionResponse{Seq: seq, Results: resultsToProto(s.responses[seq])})
		}
		emit(sr)
	}
	if err != nil {
		return err
	}
	return bw.Flush()
}

func sortedKeys[K interface{ ~string | ~uint64 }, V any](m map[K]V) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}

func resultsToProto(rs ProposalResult) []*ipb.OpResult {
	out := make([]*ipb.OpResult, len(rs))
	for i, r := range rs {
		code, msg := codeOf(r.Err)
		out[i] = &ipb.OpResult{Code: uint32(code), Message: msg, Epoch: r.Epoch, MemberId: r.MemberID,
			ExpiresUnixNano: r.Expires, TtlNanos: r.TTL}
	}
	return out
}

func resultsFromProto(ps []*ipb.OpResult) (ProposalResult, error) {
	out := make(ProposalResult, len(ps))
	for i, p := range ps {
		domain, err := errorFromCode(Code(p.Code), p.Message)
		if err != nil {
			return nil, err
		}
		out[i] = Result{Err: domain, Epoch: p.Epoch, MemberID: p.MemberId,
			Expires: p.ExpiresUnixNano, TTL: p.TtlNanos}
	}
	return out, nil
}

// readSnapshot decodes a snapshot into a fresh state. Any malformed record is
// an error: Restore then fails and Raft keeps its current state.
func readSnapshot(r io.Reader) (*state, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	st := newState()
	first := true
	for {
		var rec ipb.SnapshotRecord
		err := protodelim.UnmarshalFrom(br, &rec)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("fsm: restore: %w", err)
		}
		if err := st.restoreRecord(&rec, first); err != nil {
			return nil, fmt.Errorf("fsm: restore: %w", err)
		}
		first = false
	}
	if first {
		return nil, errors.New("fsm: restore: empty snapshot")
	}
	return st, nil
}

func (st *state) restoreRecord(rec *ipb.SnapshotRecord, first bool) error {
	if _, isHeader := rec.Record.(*ipb.SnapshotRecord_Header); isHeader != first {
		return errors.New("header must be the first record, and only the first")
	}
	switch r := rec.Record.(type) {
	case *ipb.SnapshotRecord_Header:
		h := r.Header
		if h.Version != snapshotVersion {
			return fmt.Errorf("snapshot version %d, this build reads %d", h.Version, snapshotVersion)
		}
		if h.BucketCount != 0 {
			if err := ValidBucketCount(h.BucketCount); err != nil {
				return err
			}
		}
		st.site, st.bucketCount, st.lastToken = h.Site, h.BucketCount, h.LastToken
		st.now, st.lastSweep, st.applied = h.NowUnixNano, h.LastSweepUnixNano, h.AppliedIndex
		st.standby, st.siteEpoch, st.leaseEpoch = h.Standby, h.SiteEpoch, h.LeaseEpoch
		st.buckets = make([]Assignment, h.BucketCount)
	case *ipb.SnapshotRecord_Member:
		m := r.Member
		st.members[m.Id] = memberFromProto(m)
	case *ipb.SnapshotRecord_Bucket:
		b := r.Bucket
		if b.Bucket >= st.bucketCount {
			return fmt.Errorf("bucket %d out of range %d", b.Bucket, st.bucketCount)
		}
		st.buckets[b.Bucket] = Assignment{Primary: b.Primary, LocalBackup: b.LocalBackup, RemoteBackup: b.RemoteBackup,
			Epoch: b.Epoch, BackupSynced: b.BackupSynced, Revision: b.Revision,
			Incoming: b.Incoming, IncomingSynced: b.IncomingSynced, IncomingPrimary: b.IncomingPrimary,
			RemoteCopySynced: b.RemoteCopySynced, Previous: b.PreviousPrimary, Since: b.PrimarySince}
	case *ipb.SnapshotRecord_Claim:
		k, err := KeyFromBytes(r.Claim.Key)
		if err != nil {
			return err
		}
		st.claims.put(k, claimRec{member: st.indexOf(r.Claim.MemberId), epoch: r.Claim.Epoch})
	case *ipb.SnapshotRecord_Lock:
		l := r.Lock
		k, err := KeyFromBytes(l.Key)
		if err != nil {
			return err
		}
		st.locks[k] = Lock{MemberID: l.MemberId, Token: l.Token, Expires: l.ExpiresUnixNano, TTL: l.TtlNanos}
	case *ipb.SnapshotRecord_Session:
		s := &session{lastSeen: r.Session.LastSeenUnixNano, acked: r.Session.AckedSeq,
			responses: map[uint64]ProposalResult{}}
		for _, resp := range r.Session.Responses {
			res, err := resultsFromProto(resp.Results)
			if err != nil {
				return err
			}
			s.responses[resp.Seq] = res
		}
		st.sessions[r.Session.ClientId] = s
	default:
		return fmt.Errorf("unknown record %T", rec.Record)
	}
	return nil
}

// WriteSnapshot writes the current state in snapshot form; tests compare the
// bytes of two FSMs to check they hold identical state.
func (f *FSM) WriteSnapshot(w io.Writer) error {
	f.mu.RLock()
	st := f.st.clone()
	f.mu.RUnlock()
	return st.writeTo(w)
}
