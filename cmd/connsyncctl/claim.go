package main

import (
	"context"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type claimOptions struct {
	keyFlags
}

func newClaimCommand() *cobra.Command {
	o := &claimOptions{}
	cmd := &cobra.Command{
		Use:   "claim " + keyUsage,
		Short: "Record that a member owns a connection",
		Long: `claim records that a member owns a connection; the claim overrides the
bucket's primary. Claiming a connection the member already owns returns the
existing epoch; a connection claimed by another member fails.`,
		Example: "  connsyncctl claim " + keyExample + "\n  connsyncctl claim udp [2001:db8::1]:5353 [2001:db8::2]:53 --member m1",
		Args:    keyArgs("claim"),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := parseKey(o.zone, args)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				cl, err := claim(ctx, c, key, o.member)
				if err != nil {
					return err
				}
				return p.claim(cl)
			})
		},
	}
	o.addZone(cmd)
	o.addMember(cmd, "claiming member")
	return cmd
}

func claim(ctx context.Context, c *client.Client, key *pb.ConnKey, member string) (*pb.Claim, error) {
	return c.Claim(ctx, key, member)
}
