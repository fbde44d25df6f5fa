package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/integration/cluster"
	"github.com/connsync/connsync/server"
)

// TestCluster_BadInputIsInvalidArgument sends malformed requests to a
// follower and to the leader: every one answers INVALID_ARGUMENT with a
// message naming the field, nothing panics, and nothing is written.
func TestCluster_BadInputIsInvalidArgument(t *testing.T) {
	c := cluster.New(t, 3, cluster.Options{})
	leader := c.WaitForLeader(10 * time.Second)
	good := key(1)
	mod := func(f func(k *pb.ConnKey)) *pb.ConnKey {
		k := &pb.ConnKey{Protocol: good.Protocol, SrcIp: good.SrcIp, SrcPort: good.SrcPort, DstIp: good.DstIp, DstPort: good.DstPort}
		f(k)
		return k
	}
	badKeys := map[string]*pb.ConnKey{
		"key":          nil,
		"key.src_ip":   mod(func(k *pb.ConnKey) { k.SrcIp = "10.0.0.300" }),
		"key.dst_ip":   mod(func(k *pb.ConnKey) { k.DstIp = "2001:db8::1" }), // family mismatch
		"key.src_port": mod(func(k *pb.ConnKey) { k.SrcPort = 0 }),
		"key.dst_port": mod(func(k *pb.ConnKey) { k.DstPort = 70000 }),
		"key.zone":     mod(func(k *pb.ConnKey) { k.Zone = strings.Repeat("z", 65) }),
		"key.protocol": mod(func(k *pb.ConnKey) { k.Protocol = 256 }),
	}
	manyKeys := make([]*pb.ConnKey, server.MaxBatchKeys+1)
	for i := range manyKeys {
		manyKeys[i] = good
	}
	for _, target := range []*cluster.Member{leader, c.Followers()[0]} {
		conn := dial(t, target.Addr())
		own, locks, op := pb.NewOwnershipServiceClient(conn), pb.NewLockServiceClient(conn), pb.NewOperatorServiceClient(conn)
		type call struct {
			field string
			do    func(ctx context.Context) error
		}
		var calls []call
		for field, k := range badKeys {
			calls = append(calls,
				call{field, func(ctx context.Context) error {
					_, err := own.Claim(ctx, &pb.ClaimRequest{Key: k, MemberId: "m1"})
					return err
				}},
				call{field, func(ctx context.Context) error {
					_, err := own.Lookup(ctx, &pb.LookupRequest{Key: k})
					return err
				}},
				call{field, func(ctx context.Context) error {
					_, err := locks.AcquireLock(ctx, &pb.AcquireLockRequest{Key: k, MemberId: "m1", Ttl: durationpb.New(time.Second)})
					return err
				}})
		}
		calls = append(calls,
			call{"member_id", func(ctx context.Context) error {
				_, err := own.Claim(ctx, &pb.ClaimRequest{Key: good, MemberId: "no spaces!"})
				return err
			}},
			call{"member_id", func(ctx context.Context) error {
				_, err := own.Claim(ctx, &pb.ClaimRequest{Key: good, MemberId: "ghost"})
				return err
			}},
			call{"member_id", func(ctx context.Context) error {
				_, err := own.ClaimBatch(ctx, &pb.ClaimBatchRequest{Keys: []*pb.ConnKey{good}, MemberId: "ghost"})
				return err
			}},
			call{"keys", func(ctx context.Context) error {
				_, err := own.ClaimBatch(ctx, &pb.ClaimBatchRequest{MemberId: "m1"})
				return err
			}},
			call{"keys", func(ctx context.Context) error {
				_, err := own.ClaimBatch(ctx, &pb.ClaimBatchRequest{Keys: manyKeys, MemberId: "m1"})
				return err
			}},
			call{"keys[2].src_ip", func(ctx context.Context) error {
				_, err := own.ClaimBatch(ctx, &pb.ClaimBatchRequest{Keys: []*pb.ConnKey{good, key(2), badKeys["key.src_ip"]}, MemberId: "m1"})
				return err
			}},
			call{"ttl", func(ctx context.Context) error {
				_, err := locks.AcquireLock(ctx, &pb.AcquireLockRequest{Key: good, MemberId: "m1"})
				return err
			}},
			call{"ttl", func(ctx context.Context) error {
				_, err := locks.AcquireLock(ctx, &pb.AcquireLockRequest{Key: good, MemberId: "m1", Ttl: durationpb.New(0)})
				return err
			}},
			call{"ttl", func(ctx context.Context) error {
				_, err := locks.AcquireLock(ctx, &pb.AcquireLockRequest{Key: good, MemberId: "m1", Ttl: durationpb.New(-time.Second)})
				return err
			}},
			call{"ttl", func(ctx context.Context) error {
				_, err := locks.AcquireLock(ctx, &pb.AcquireLockRequest{Key: good, MemberId: "m1", Ttl: durationpb.New(2 * time.Hour)})
				return err
			}},
			call{"keys[1]", func(ctx context.Context) error { // the same connection twice
				_, err := locks.AcquireLockBatch(ctx, &pb.AcquireLockBatchRequest{Keys: []*pb.ConnKey{good, good}, MemberId: "m1", Ttl: durationpb.New(time.Second)})
				return err
			}},
			call{"keys[1].dst_port", func(ctx context.Context) error {
				_, err := locks.AcquireLockBatch(ctx, &pb.AcquireLockBatchRequest{Keys: []*pb.ConnKey{good, badKeys["key.dst_port"]}, MemberId: "m1", Ttl: durationpb.New(time.Second)})
				return err
			}},
			call{"keys", func(ctx context.Context) error {
				_, err := locks.AcquireLockBatch(ctx, &pb.AcquireLockBatchRequest{Keys: manyKeys, MemberId: "m1", Ttl: durationpb.New(time.Second)})
				return err
			}},
			call{"ttl", func(ctx context.Context) error {
				_, err := locks.AcquireLockBatch(ctx, &pb.AcquireLockBatchRequest{Keys: []*pb.ConnKey{good}, MemberId: "m1"})
				return err
			}},
			call{"member_id", func(ctx context.Context) error {
				_, err := locks.AcquireLockBatch(ctx, &pb.AcquireLockBatchRequest{Keys: []*pb.ConnKey{good}, MemberId: "ghost", Ttl: durationpb.New(time.Second)})
				return err
			}},
			call{"locks", func(ctx context.Context) error {
				_, err := locks.ReleaseLockBatch(ctx, &pb.ReleaseLockBatchRequest{MemberId: "m1"})
				return err
			}},
			call{"locks[1].token", func(ctx context.Context) error {
				_, err := locks.ReleaseLockBatch(ctx, &pb.ReleaseLockBatchRequest{Locks: []*pb.HeldLock{{Key: good, Token: 5}, {Key: key(2)}}, MemberId: "m1"})
				return err
			}},
			call{"locks[0].key", func(ctx context.Context) error {
				_, err := locks.ReleaseLockBatch(ctx, &pb.ReleaseLockBatchRequest{Locks: []*pb.HeldLock{{Token: 5}}, MemberId: "m1"})
				return err
			}},
			call{"member_id", func(ctx context.Context) error {
				_, err := locks.ReleaseLockBatch(ctx, &pb.ReleaseLockBatchRequest{Locks: []*pb.HeldLock{{Key: good, Token: 5}}, MemberId: "no spaces!"})
				return err
			}},
			call{"header.seq", func(ctx context.Context) error {
				_, err := own.Claim(ctx, &pb.ClaimRequest{Header: &pb.RequestHeader{ClientId: 7}, Key: good, MemberId: "m1"})
				return err
			}},
			call{"header.acked_seq", func(ctx context.Context) error {
				_, err := own.Claim(ctx, &pb.ClaimRequest{Header: &pb.RequestHeader{ClientId: 7, Seq: 2, AckedSeq: 3}, Key: good, MemberId: "m1"})
				return err
			}},
			call{"header.client_id", func(ctx context.Context) error {
				_, err := own.Claim(ctx, &pb.ClaimRequest{Header: &pb.RequestHeader{Seq: 2}, Key: good, MemberId: "m1"})
				return err
			}},
			call{"token", func(ctx context.Context) error {
				_, err := locks.RenewLock(ctx, &pb.RenewLockRequest{Key: good, MemberId: "m1", Ttl: durationpb.New(time.Second)})
				return err
			}},
			call{"site", func(ctx context.Context) error {
				_, err := op.Join(ctx, &pb.JoinRequest{MemberId: "m9", Site: "elsewhere", RaftAddr: "127.0.0.1:1", GrpcAddr: "127.0.0.1:2"})
				return err
			}},
			call{"raft_addr", func(ctx context.Context) error {
				_, err := op.Join(ctx, &pb.JoinRequest{MemberId: "m9", Site: "site1", RaftAddr: "nowhere", GrpcAddr: "127.0.0.1:2"})
				return err
			}},
			call{"grpc_addr", func(ctx context.Context) error {
				_, err := op.Join(ctx, &pb.JoinRequest{MemberId: "m9", Site: "site1", RaftAddr: "127.0.0.1:1", GrpcAddr: "0.0.0.0:2"})
				return err
			}},
			call{"member_id", func(ctx context.Context) error {
				_, err := op.RemoveMember(ctx, &pb.RemoveMemberRequest{MemberId: "ghost"})
				return err
			}},
			call{"member_id", func(ctx context.Context) error {
				_, err := op.TransferLeadership(ctx, &pb.TransferLeadershipRequest{MemberId: "ghost"})
				return err
			}})
		for _, cl := range calls {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := cl.do(ctx)
			cancel()
			st, _ := status.FromError(err)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), cl.field) {
				t.Errorf("via %s: got %v (%q), want InvalidArgument naming %q", target.ID, st.Code(), st.Message(), cl.field)
			}
		}
	}
	c.WaitConverged(10 * time.Second)
	for _, m := range c.Running() {
		st := m.Server.FSM().Stats()
		if st.Claims != 0 || st.Locks != 0 || st.Members != 3 {
			t.Errorf("%s after bad input: %d claims, %d locks, %d members; want 0, 0, 3", m.ID, st.Claims, st.Locks, st.Members)
		}
	}
}
