package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type lockOptions struct {
	keyFlags
	ttl time.Duration
}

func newLockCommand() *cobra.Command {
	o := &lockOptions{}
	cmd := &cobra.Command{
		Use:   "lock " + keyUsage,
		Short: "Take a lease on a connection; prints its fencing token",
		Long: `lock grants a member a lease on a connection if it is free or expired. The
lease carries a fencing token, greater than every token granted before it in
the site; pass it to unlock. A member that already holds the lock gets an error
(leases are renewed through the API, not this command).`,
		Example: "  connsyncctl lock " + keyExample + " --ttl 30s",
		Args:    keyArgs("lock"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			key, err := parseKey(o.zone, args)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				l, err := acquireLock(ctx, c, key, o.member, o.ttl)
				if err != nil {
					return err
				}
				return p.lock(l)
			})
		},
	}
	o.addZone(cmd)
	o.addMember(cmd, "acquiring member")
	cmd.Flags().DurationVar(&o.ttl, "ttl", 10*time.Second, "lease length, > 0 and at most 1h")
	return cmd
}

func (o *lockOptions) validate() error {
	if o.ttl <= 0 {
		return fmt.Errorf("invalid --ttl %v: the lease length must be > 0, e.g. --ttl 10s", o.ttl)
	}
	return nil
}

func acquireLock(ctx context.Context, c *client.Client, key *pb.ConnKey, member string, ttl time.Duration) (*pb.Lock, error) {
	return c.AcquireLock(ctx, key, member, ttl)
}
