package main

import (
	"context"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type lookupOptions struct {
	keyFlags
	linearizable bool
}

func newLookupCommand() *cobra.Command {
	o := &lookupOptions{}
	cmd := &cobra.Command{
		Use:     "lookup " + keyUsage,
		Short:   "Show a connection's owner, claim and bucket assignment",
		Example: "  connsyncctl lookup " + keyExample + " --linearizable",
		Args:    keyArgs("lookup"),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := parseKey(o.zone, args)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				own, err := lookup(ctx, c, key, o.linearizable)
				if err != nil {
					return err
				}
				return p.ownership(own)
			})
		},
	}
	o.addZone(cmd)
	cmd.Flags().BoolVar(&o.linearizable, "linearizable", false, "read through the leader after it confirmed its leadership (default: the answering member's own state)")
	return cmd
}

func lookup(ctx context.Context, c *client.Client, key *pb.ConnKey, linearizable bool) (*pb.Ownership, error) {
	return c.Lookup(ctx, key, consistency(linearizable))
}
