package main

import (
	"context"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

func newStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the view of the site of the member connsyncctl talks to",
		Args:  exactArgs(0, "status takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				st, err := getStatus(ctx, c)
				if err != nil {
					return err
				}
				return p.status(st)
			})
		},
	}
}

func getStatus(ctx context.Context, c *client.Client) (*pb.StatusResponse, error) {
	return c.Status(ctx)
}
