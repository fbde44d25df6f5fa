package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/connsync/connsync/client"
)

func newRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "remove MEMBER_ID",
		Short: "Remove a member from the site's Raft group and mark it left",
		Args:  exactArgs(1, "remove needs MEMBER_ID, e.g. connsyncctl remove m3"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				if err := removeMember(ctx, c, id); err != nil {
					return err
				}
				return p.removed(id)
			})
		},
	}
}

func removeMember(ctx context.Context, c *client.Client, id string) error {
	return c.RemoveMember(ctx, id)
}
