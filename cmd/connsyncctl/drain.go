package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

type drainOptions struct {
	wait time.Duration
}

func newDrainCommand() *cobra.Command {
	o := &drainOptions{}
	cmd := &cobra.Command{
		Use:   "drain MEMBER_ID",
		Short: "Move every bucket (and leadership) away from a member before removing it",
		Long: `drain marks a member as draining: it receives no new buckets, and each bucket
it holds moves to another member make-before-break (if it leads the site, it
hands leadership over once empty). With --wait, drain returns when the member
holds no bucket any more; then 'connsyncctl remove MEMBER_ID' takes it out.`,
		Args: exactArgs(1, "drain takes one MEMBER_ID, e.g. connsyncctl drain m3"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				m, err := c.Drain(ctx, args[0])
				if err != nil {
					return err
				}
				if o.wait > 0 {
					// Not bound by --timeout (that is per call): by --wait.
					if err := waitDrained(cmd.Context(), c, args[0], o.wait); err != nil {
						return err
					}
				}
				return p.member(m)
			})
		},
	}
	cmd.Flags().DurationVar(&o.wait, "wait", 0, "wait up to this long for the member to hold no bucket (0: do not wait)")
	return cmd
}

// waitDrained polls until member holds no bucket role. Each poll has the
// client's own deadline.
func waitDrained(ctx context.Context, c *client.Client, member string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		r, err := c.MemberDetails(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
		if err != nil && time.Now().After(deadline) {
			return err
		}
		for _, d := range r.GetDetails() {
			if d.MemberId == member && d.PrimaryBuckets == 0 && d.BackupBuckets == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still holds buckets after %v; drain goes on (watch with connsyncctl members)", member, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
