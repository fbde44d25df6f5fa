package server

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

type lockService struct {
	pb.UnimplementedLockServiceServer
	s *Server
}

func checkTTL(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, invalid(field, "is required")
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalid(field, "%v", err)
	}
	ttl := d.AsDuration()
	if ttl <= 0 || ttl > fsm.MaxLockTTL {
		return 0, invalid(field, "%v must be > 0 and <= %v", ttl, fsm.MaxLockTTL)
	}
	return ttl, nil
}

func checkToken(token uint64) error {
	if token == 0 {
		return invalid("token", "is required (the token returned by AcquireLock)")
	}
	return nil
}

// heldLock validates the fields that name a held lock: key, member, token.
func heldLock(key *pb.ConnKey, member string, token uint64) (fsm.Key, error) {
	k, err := fsm.ParseKey(key, "key")
	if err != nil {
		return "", err
	}
	if err := checkMemberID("member_id", member); err != nil {
		return "", err
	}
	return k, checkToken(token)
}

func lockProto(k fsm.Key, r fsm.Result) *pb.Lock {
	return &pb.Lock{Key: k.Proto(), MemberId: r.MemberID, Token: r.Epoch,
		ExpiresAt: timestamppb.New(time.Unix(0, r.Expires)), Ttl: durationpb.New(time.Duration(r.TTL))}
}

func (l *lockService) AcquireLock(ctx context.Context, req *pb.AcquireLockRequest) (*pb.AcquireLockResponse, error) {
	k, err := fsm.ParseKey(req.Key, "key")
	if err != nil {
		return nil, err
	}
	ttl, err := checkTTL("ttl", req.Ttl)
	if err != nil {
		return nil, err
	}
	if err := l.s.checkMember(ctx, "member_id", req.MemberId, req.Header); err != nil {
		return nil, err
	}
	r, err := l.s.write1(ctx, req.Header, acquireLockOp(k, req.MemberId, ttl))
	if err != nil {
		return nil, err
	}
	return &pb.AcquireLockResponse{Lock: lockProto(k, r)}, nil
}

func (l *lockService) RenewLock(ctx context.Context, req *pb.RenewLockRequest) (*pb.RenewLockResponse, error) {
	k, err := heldLock(req.Key, req.MemberId, req.Token)
	if err != nil {
		return nil, err
	}
	ttl, err := checkTTL("ttl", req.Ttl)
	if err != nil {
		return nil, err
	}
	r, err := l.s.write1(ctx, req.Header, renewLockOp(k, req.MemberId, req.Token, ttl))
	if err != nil {
		return nil, err
	}
	return &pb.RenewLockResponse{Lock: lockProto(k, r)}, nil
}

func (l *lockService) ReleaseLock(ctx context.Context, req *pb.ReleaseLockRequest) (*pb.ReleaseLockResponse, error) {
	k, err := heldLock(req.Key, req.MemberId, req.Token)
	if err != nil {
		return nil, err
	}
	if _, err := l.s.write1(ctx, req.Header, releaseLockOp(k, req.MemberId, req.Token)); err != nil {
		return nil, err
	}
	return &pb.ReleaseLockResponse{}, nil
}

func (l *lockService) GetLock(ctx context.Context, req *pb.GetLockRequest) (*pb.GetLockResponse, error) {
	k, err := fsm.ParseKey(req.Key, "key")
	if err != nil {
		return nil, err
	}
	if err := l.s.read(ctx, req.Consistency); err != nil {
		return nil, err
	}
	lk, ok := l.s.fsm.GetLock(k)
	if !ok {
		return nil, fsm.ErrLockNotHeld
	}
	return &pb.GetLockResponse{Lock: lockProto(k, fsm.Result{Epoch: lk.Token, MemberID: lk.MemberID,
		Expires: lk.Expires, TTL: lk.TTL})}, nil
}

// uniqueKeys is parseKeyList that also refuses a key given twice: a batch
// that acquired a key twice would fail its own second item.
func uniqueKeys(list, noun string, keys []*pb.ConnKey, item func(i int) string) ([]fsm.Key, error) {
	out, err := parseKeyList(list, noun, keys, item)
	if err != nil {
		return nil, err
	}
	seen := make(map[fsm.Key]int, len(out))
	for i, k := range out {
		if j, dup := seen[k]; dup {
			return nil, invalid(item(i), "is the same connection as %s", item(j))
		}
		seen[k] = i
	}
	return out, nil
}

func (l *lockService) AcquireLockBatch(ctx context.Context, req *pb.AcquireLockBatchRequest) (*pb.AcquireLockBatchResponse, error) {
	keys, err := uniqueKeys("keys", "key", req.Keys, func(i int) string { return fmt.Sprintf("keys[%d]", i) })
	if err != nil {
		return nil, err
	}
	ttl, err := checkTTL("ttl", req.Ttl)
	if err != nil {
		return nil, err
	}
	if err := l.s.checkMember(ctx, "member_id", req.MemberId, req.Header); err != nil {
		return nil, err
	}
	ops := make([]*ipb.Op, len(keys))
	for i, k := range keys {
		ops[i] = acquireLockOp(k, req.MemberId, ttl)
	}
	res, err := l.s.write(ctx, req.Header, ops...)
	if err != nil {
		return nil, err
	}
	if err := unknownMember(res); err != nil {
		return nil, err
	}
	out := &pb.AcquireLockBatchResponse{Results: make([]*pb.LockResult, len(res))}
	for i, r := range res {
		out.Results[i] = &pb.LockResult{Status: itemStatus(r.Err)}
		if r.MemberID != "" {
			out.Results[i].Lock = lockProto(keys[i], r)
		}
	}
	return out, nil
}

func (l *lockService) ReleaseLockBatch(ctx context.Context, req *pb.ReleaseLockBatchRequest) (*pb.ReleaseLockBatchResponse, error) {
	pks := make([]*pb.ConnKey, len(req.Locks))
	for i, h := range req.Locks {
		pks[i] = h.GetKey()
	}
	keys, err := uniqueKeys("locks", "lock", pks, func(i int) string { return fmt.Sprintf("locks[%d].key", i) })
	if err != nil {
		return nil, err
	}
	if err := checkMemberID("member_id", req.MemberId); err != nil {
		return nil, err
	}
	ops := make([]*ipb.Op, len(keys))
	for i, k := range keys {
		if req.Locks[i].Token == 0 {
			return nil, invalid(fmt.Sprintf("locks[%d].token", i), "is required (the token returned by AcquireLock)")
		}
		ops[i] = releaseLockOp(k, req.MemberId, req.Locks[i].Token)
	}
	res, err := l.s.write(ctx, req.Header, ops...)
	if err != nil {
		return nil, err
	}
	out := &pb.ReleaseLockBatchResponse{Results: make([]*pb.ItemStatus, len(res))}
	for i, r := range res {
		out.Results[i] = itemStatus(r.Err)
	}
	return out, nil
}
