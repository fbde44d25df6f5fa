package main

import (
	"context"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type membersOptions struct {
	linearizable bool
}

func newMembersCommand() *cobra.Command {
	o := &membersOptions{}
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the site's members: state, Raft role, buckets held, liveness",
		Args:  exactArgs(0, "members takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				r, err := listMembers(ctx, c, o)
				if err != nil {
					return err
				}
				return p.members(r.Members, r.Details)
			})
		},
	}
	cmd.Flags().BoolVar(&o.linearizable, "linearizable", false, "read through the leader after it confirmed its leadership (default: the answering member's own state)")
	return cmd
}

func listMembers(ctx context.Context, c *client.Client, o *membersOptions) (*pb.ListMembersResponse, error) {
	return c.MemberDetails(ctx, consistency(o.linearizable))
}

// consistency maps a --linearizable flag to a read consistency.
func consistency(linearizable bool) pb.ReadConsistency {
	if linearizable {
		return pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE
	}
	return pb.ReadConsistency_READ_CONSISTENCY_LOCAL
}
