package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/connsync/connsync/client"
)

type bucketsOptions struct {
	all          bool
	linearizable bool
}

func newBucketsCommand() *cobra.Command {
	o := &bucketsOptions{}
	cmd := &cobra.Command{
		Use:   "buckets",
		Short: "Show the bucket map: buckets per member, or every bucket with --all",
		Args:  exactArgs(0, "buckets takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				r, err := c.Assignments(ctx, consistency(o.linearizable))
				if err != nil {
					return err
				}
				return p.buckets(r, o.all)
			})
		},
	}
	cmd.Flags().BoolVar(&o.all, "all", false, "list every bucket: primary, backups, epoch, sync state and moves under way")
	cmd.Flags().BoolVar(&o.linearizable, "linearizable", false, "read through the leader after it confirmed its leadership")
	return cmd
}
