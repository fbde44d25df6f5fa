package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/connsync/connsync/client"
)

func newRebalanceCommand() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "rebalance",
		Short: "Even out the buckets over the alive members (make-before-break)",
		Long: `rebalance plans the moves that spread the buckets over the alive members in
proportion to their weight, and starts them. Each move is make-before-break:
the target first becomes the bucket's local backup and receives a full sync,
then takes over as primary. --dry-run shows the plan without starting it.`,
		Args: exactArgs(0, "rebalance takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				r, err := c.Rebalance(ctx, dryRun)
				if err != nil {
					return err
				}
				return p.rebalance(r, dryRun)
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only show the planned moves")
	return cmd
}
