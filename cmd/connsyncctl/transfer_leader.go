package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/connsync/connsync/client"
)

func newTransferLeaderCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "transfer-leader [MEMBER_ID]",
		Short: "Hand leadership to a member, or to the most up-to-date voter",
		Args:  rangeArgs(0, 1, "transfer-leader takes at most one MEMBER_ID, e.g. connsyncctl transfer-leader m1"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var target string
			if len(args) == 1 {
				target = args[0]
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				leader, err := transferLeader(ctx, c, target)
				if err != nil {
					return err
				}
				return p.leader(leader)
			})
		},
	}
}

func transferLeader(ctx context.Context, c *client.Client, target string) (string, error) {
	return c.TransferLeadership(ctx, target)
}
