package main

import (
	"context"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type releaseOptions struct {
	keyFlags
	epoch uint64
}

func newReleaseCommand() *cobra.Command {
	o := &releaseOptions{}
	cmd := &cobra.Command{
		Use:     "release " + keyUsage,
		Short:   "Remove a member's claim on a connection",
		Example: "  connsyncctl release " + keyExample + " --epoch 7",
		Args:    keyArgs("release"),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := parseKey(o.zone, args)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				if err := release(ctx, c, key, o.member, o.epoch); err != nil {
					return err
				}
				return p.released(key)
			})
		},
	}
	o.addZone(cmd)
	o.addMember(cmd, "releasing member")
	cmd.Flags().Uint64Var(&o.epoch, "epoch", 0, "release only if the claim still has this epoch (0: whatever epoch it has)")
	return cmd
}

func release(ctx context.Context, c *client.Client, key *pb.ConnKey, member string, epoch uint64) error {
	return c.Release(ctx, key, member, epoch)
}
