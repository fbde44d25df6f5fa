package main

import (
	"context"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type unlockOptions struct {
	keyFlags
	token uint64
}

func newUnlockCommand() *cobra.Command {
	o := &unlockOptions{}
	cmd := &cobra.Command{
		Use:     "unlock " + keyUsage + " --token N",
		Short:   "Free a held lock on a connection",
		Example: "  connsyncctl unlock " + keyExample + " --token 42",
		Args:    keyArgs("unlock"),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := parseKey(o.zone, args)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				if err := releaseLock(ctx, c, key, o.member, o.token); err != nil {
					return err
				}
				return p.unlocked(key)
			})
		},
	}
	o.addZone(cmd)
	o.addMember(cmd, "member holding the lock")
	cmd.Flags().Uint64Var(&o.token, "token", 0, "fencing token of the held lock, as printed by lock (required)")
	_ = cmd.MarkFlagRequired("token")
	return cmd
}

func releaseLock(ctx context.Context, c *client.Client, key *pb.ConnKey, member string, token uint64) error {
	return c.ReleaseLock(ctx, key, member, token)
}
