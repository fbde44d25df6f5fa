package main

import (
	"context"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type joinOptions struct {
	site     string
	raftAddr string
	grpcAddr string
	weight   uint32
	nonvoter bool
}

func newJoinCommand() *cobra.Command {
	o := &joinOptions{}
	cmd := &cobra.Command{
		Use:     "join MEMBER_ID --site S --raft-addr H:P --grpc-addr H:P",
		Short:   "Add a member to the site by hand (connsyncd -join does it automatically)",
		Example: `  connsyncctl join m3 --site site1 --raft-addr 10.0.0.3:7421 --grpc-addr 10.0.0.3:7420`,
		Args:    exactArgs(1, "join needs MEMBER_ID, e.g. connsyncctl join m3 --site site1 --raft-addr 10.0.0.3:7421 --grpc-addr 10.0.0.3:7420"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := o.request(args[0])
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				m, err := join(ctx, c, req)
				if err != nil {
					return err
				}
				return p.member(m)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.site, "site", "", "site of the member; must be the site joined")
	f.StringVar(&o.raftAddr, "raft-addr", "", "advertised Raft address of the member, host:port")
	f.StringVar(&o.grpcAddr, "grpc-addr", "", "advertised gRPC address of the member, host:port")
	f.Uint32Var(&o.weight, "weight", 0, "relative share of buckets (0 means the default, 1)")
	f.BoolVar(&o.nonvoter, "nonvoter", false, "join as a Raft non-voter")
	for _, name := range []string{"site", "raft-addr", "grpc-addr"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func (o *joinOptions) request(id string) *pb.JoinRequest {
	return &pb.JoinRequest{MemberId: id, Site: o.site, RaftAddr: o.raftAddr, GrpcAddr: o.grpcAddr,
		Weight: o.weight, Nonvoter: o.nonvoter}
}

func join(ctx context.Context, c *client.Client, req *pb.JoinRequest) (*pb.Member, error) {
	return c.Join(ctx, req)
}
