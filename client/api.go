package client

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

// An empty member ID in the calls below means "the member at the first
// configured address": the firewall on a member lists its own connsyncd
// first. The client asks that member its ID once and sends it explicitly, so
// the meaning holds when calls are redirected to the leader.

// Claim records that member owns the connection.
func (c *Client) Claim(ctx context.Context, key *pb.ConnKey, member string) (claim *pb.Claim, err error) {
	if member, err = c.member(ctx, member); err != nil {
		return nil, err
	}
	err = c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		r, err := pb.NewOwnershipServiceClient(cc).Claim(ctx, &pb.ClaimRequest{Header: h, Key: key, MemberId: member}, o...)
		claim = r.GetClaim()
		return err
	})
	return claim, err
}

// ClaimBatch claims many connections for member in one Raft entry.
func (c *Client) ClaimBatch(ctx context.Context, keys []*pb.ConnKey, member string) (res []*pb.ClaimResult, err error) {
	if member, err = c.member(ctx, member); err != nil {
		return nil, err
	}
	err = c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		r, err := pb.NewOwnershipServiceClient(cc).ClaimBatch(ctx, &pb.ClaimBatchRequest{Header: h, Keys: keys, MemberId: member}, o...)
		res = r.GetResults()
		return err
	})
	return res, err
}

// Release removes member's claim; epoch 0 releases whatever epoch it has.
func (c *Client) Release(ctx context.Context, key *pb.ConnKey, member string, epoch uint64) error {
	member, err := c.member(ctx, member)
	if err != nil {
		return err
	}
	return c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		_, err := pb.NewOwnershipServiceClient(cc).Release(ctx, &pb.ReleaseRequest{Header: h, Key: key, MemberId: member, Epoch: epoch}, o...)
		return err
	})
}

// ReleaseBatch releases many of member's claims in one Raft entry.
func (c *Client) ReleaseBatch(ctx context.Context, keys []*pb.ConnKey, member string) (res []*pb.ItemStatus, err error) {
	if member, err = c.member(ctx, member); err != nil {
		return nil, err
	}
	err = c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		r, err := pb.NewOwnershipServiceClient(cc).ReleaseBatch(ctx, &pb.ReleaseBatchRequest{Header: h, Keys: keys, MemberId: member}, o...)
		res = r.GetResults()
		return err
	})
	return res, err
}

// Lookup answers a connection's claim and bucket assignment.
func (c *Client) Lookup(ctx context.Context, key *pb.ConnKey, consistency pb.ReadConsistency) (own *pb.Ownership, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err := pb.NewOwnershipServiceClient(cc).Lookup(ctx, &pb.LookupRequest{Key: key, Consistency: consistency}, o...)
		own = r.GetOwnership()
		return err
	})
	return own, err
}

// LookupBatch is Lookup for many keys.
func (c *Client) LookupBatch(ctx context.Context, keys []*pb.ConnKey, consistency pb.ReadConsistency) (own []*pb.Ownership, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err := pb.NewOwnershipServiceClient(cc).LookupBatch(ctx, &pb.LookupBatchRequest{Keys: keys, Consistency: consistency}, o...)
		own = r.GetOwnerships()
		return err
	})
	return own, err
}

// AcquireLock takes a lease on key for member; the lock's token fences it.
func (c *Client) AcquireLock(ctx context.Context, key *pb.ConnKey, member string, ttl time.Duration) (lock *pb.Lock, err error) {
	if member, err = c.member(ctx, member); err != nil {
		return nil, err
	}
	err = c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		r, err := pb.NewLockServiceClient(cc).AcquireLock(ctx, &pb.AcquireLockRequest{Header: h, Key: key, MemberId: member, Ttl: durationpb.New(ttl)}, o...)
		lock = r.GetLock()
		return err
	})
	return lock, err
}

// RenewLock extends a held lock to now + ttl.
func (c *Client) RenewLock(ctx context.Context, key *pb.ConnKey, member string, token uint64, ttl time.Duration) (lock *pb.Lock, err error) {
	if member, err = c.member(ctx, member); err != nil {
		return nil, err
	}
	err = c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		r, err := pb.NewLockServiceClient(cc).RenewLock(ctx, &pb.RenewLockRequest{Header: h, Key: key, MemberId: member, Token: token, Ttl: durationpb.New(ttl)}, o...)
		lock = r.GetLock()
		return err
	})
	return lock, err
}

// ReleaseLock frees a held lock.
func (c *Client) ReleaseLock(ctx context.Context, key *pb.ConnKey, member string, token uint64) error {
	member, err := c.member(ctx, member)
	if err != nil {
		return err
	}
	return c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		_, err := pb.NewLockServiceClient(cc).ReleaseLock(ctx, &pb.ReleaseLockRequest{Header: h, Key: key, MemberId: member, Token: token}, o...)
		return err
	})
}

// AcquireLockBatch takes leases on many keys for member in one Raft entry,
// all for ttl; one result per key, in order.
func (c *Client) AcquireLockBatch(ctx context.Context, keys []*pb.ConnKey, member string, ttl time.Duration) (res []*pb.LockResult, err error) {
	if member, err = c.member(ctx, member); err != nil {
		return nil, err
	}
	err = c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		r, err := pb.NewLockServiceClient(cc).AcquireLockBatch(ctx, &pb.AcquireLockBatchRequest{Header: h, Keys: keys, MemberId: member, Ttl: durationpb.New(ttl)}, o...)
		res = r.GetResults()
		return err
	})
	return res, err
}

// ReleaseLockBatch frees many of member's locks in one Raft entry; one
// status per lock, in order.
func (c *Client) ReleaseLockBatch(ctx context.Context, locks []*pb.HeldLock, member string) (res []*pb.ItemStatus, err error) {
	if member, err = c.member(ctx, member); err != nil {
		return nil, err
	}
	err = c.write(ctx, func(ctx context.Context, cc *grpc.ClientConn, h *pb.RequestHeader, o ...grpc.CallOption) error {
		r, err := pb.NewLockServiceClient(cc).ReleaseLockBatch(ctx, &pb.ReleaseLockBatchRequest{Header: h, Locks: locks, MemberId: member}, o...)
		res = r.GetResults()
		return err
	})
	return res, err
}

// GetLock reads the lock on key; NOT_FOUND if free.
func (c *Client) GetLock(ctx context.Context, key *pb.ConnKey, consistency pb.ReadConsistency) (lock *pb.Lock, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err := pb.NewLockServiceClient(cc).GetLock(ctx, &pb.GetLockRequest{Key: key, Consistency: consistency}, o...)
		lock = r.GetLock()
		return err
	})
	return lock, err
}

// Status reports the view of the member the client currently talks to.
func (c *Client) Status(ctx context.Context) (st *pb.StatusResponse, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		st, err = pb.NewOperatorServiceClient(cc).Status(ctx, &pb.StatusRequest{}, o...)
		return err
	})
	return st, err
}

// Members lists the site's members.
func (c *Client) Members(ctx context.Context, consistency pb.ReadConsistency) (ms []*pb.Member, err error) {
	r, err := c.MemberDetails(ctx, consistency)
	return r.GetMembers(), err
}

// MemberDetails lists the site's members with their roles, bucket counts and
// liveness as the answering member sees them.
func (c *Client) MemberDetails(ctx context.Context, consistency pb.ReadConsistency) (r *pb.ListMembersResponse, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err = pb.NewOperatorServiceClient(cc).ListMembers(ctx, &pb.ListMembersRequest{Consistency: consistency}, o...)
		return err
	})
	return r, err
}

// Assignments returns the whole bucket map.
func (c *Client) Assignments(ctx context.Context, consistency pb.ReadConsistency) (r *pb.ListAssignmentsResponse, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err = pb.NewAssignmentServiceClient(cc).ListAssignments(ctx, &pb.ListAssignmentsRequest{Consistency: consistency}, o...)
		return err
	})
	return r, err
}

// WatchAssignments streams the bucket map of the member at the client's
// first address (the firewall's own connsyncd): every assignment changed
// after from (all of them if from is 0), then each change. The stream ends
// with ctx; to resume after an error, watch again from the last revision
// received.
func (c *Client) WatchAssignments(ctx context.Context, from uint64) (pb.AssignmentService_WatchAssignmentsClient, error) {
	cc, err := c.conn(c.cfg.Addrs[0])
	if err != nil {
		return nil, err
	}
	return pb.NewAssignmentServiceClient(cc).WatchAssignments(ctx, &pb.WatchAssignmentsRequest{FromRevision: from})
}

// Active reports the buckets the member at the client's first address acts
// as primary for right now (see AssignmentService.GetActive).
func (c *Client) Active(ctx context.Context) (r *pb.GetActiveResponse, err error) {
	cc, err := c.conn(c.cfg.Addrs[0])
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	return pb.NewAssignmentServiceClient(cc).GetActive(ctx, &pb.GetActiveRequest{})
}

// SyncStatus reports the replication of the member the client talks to.
func (c *Client) SyncStatus(ctx context.Context) (st *pb.SyncStatusResponse, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		st, err = pb.NewOperatorServiceClient(cc).SyncStatus(ctx, &pb.SyncStatusRequest{}, o...)
		return err
	})
	return st, err
}

// Rebalance plans (dryRun) or starts the moves that even out the buckets.
// It is not retried: the plan depends on the state when it runs.
func (c *Client) Rebalance(ctx context.Context, dryRun bool) (r *pb.RebalanceResponse, err error) {
	err = c.callOnce(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err = pb.NewOperatorServiceClient(cc).Rebalance(ctx, &pb.RebalanceRequest{DryRun: dryRun}, o...)
		return err
	})
	return r, err
}

// Drain starts moving every bucket away from member (idempotent).
func (c *Client) Drain(ctx context.Context, member string) (m *pb.Member, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err := pb.NewOperatorServiceClient(cc).Drain(ctx, &pb.DrainRequest{MemberId: member}, o...)
		m = r.GetMember()
		return err
	})
	return m, err
}

// Join adds a member to the site.
func (c *Client) Join(ctx context.Context, req *pb.JoinRequest) (m *pb.Member, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err := pb.NewOperatorServiceClient(cc).Join(ctx, req, o...)
		m = r.GetMember()
		return err
	})
	return m, err
}

// RemoveMember removes a member from the site.
func (c *Client) RemoveMember(ctx context.Context, id string) error {
	return c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		_, err := pb.NewOperatorServiceClient(cc).RemoveMember(ctx, &pb.RemoveMemberRequest{MemberId: id}, o...)
		return err
	})
}

// RaftPeers lists the Raft configuration.
func (c *Client) RaftPeers(ctx context.Context) (peers []*pb.RaftPeer, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err := pb.NewOperatorServiceClient(cc).ListRaftPeers(ctx, &pb.ListRaftPeersRequest{}, o...)
		peers = r.GetPeers()
		return err
	})
	return peers, err
}

// TransferLeadership moves leadership to member, or to the best voter if "".
// It is not retried: a repeat could move leadership twice.
func (c *Client) TransferLeadership(ctx context.Context, member string) (leader string, err error) {
	err = c.callOnce(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err := pb.NewOperatorServiceClient(cc).TransferLeadership(ctx, &pb.TransferLeadershipRequest{MemberId: member}, o...)
		leader = r.GetLeaderId()
		return err
	})
	return leader, err
}

// SiteFailover activates site, which must be the site of the members this
// client talks to and a standby site (dryRun: only report what would be
// activated). Not retried: a second failover of an active site is refused.
func (c *Client) SiteFailover(ctx context.Context, site string, dryRun bool) (r *pb.SiteFailoverResponse, err error) {
	err = c.callOnce(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err = pb.NewOperatorServiceClient(cc).SiteFailover(ctx, &pb.SiteFailoverRequest{Site: site, DryRun: dryRun}, o...)
		return err
	})
	return r, err
}

// SiteHandover makes site, the active site the client talks to, standby
// once the other site holds every remote copy (dryRun: only report). Not
// retried.
func (c *Client) SiteHandover(ctx context.Context, site string, dryRun bool) (r *pb.SiteHandoverResponse, err error) {
	err = c.callOnce(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err = pb.NewOperatorServiceClient(cc).SiteHandover(ctx, &pb.SiteHandoverRequest{Site: site, DryRun: dryRun}, o...)
		return err
	})
	return r, err
}

// Sites reports the answering member's site and the peer site it follows.
func (c *Client) Sites(ctx context.Context) (r *pb.SitesResponse, err error) {
	err = c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn, o ...grpc.CallOption) error {
		r, err = pb.NewOperatorServiceClient(cc).Sites(ctx, &pb.SitesRequest{}, o...)
		return err
	})
	return r, err
}
