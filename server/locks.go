package server

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

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
