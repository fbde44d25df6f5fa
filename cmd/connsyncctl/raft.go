package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

func newRaftCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "raft",
		Short: "Inspect the site's Raft configuration",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return fmt.Errorf("unknown command %q for %q\nRun '%s --help' for usage.", args[0], cmd.CommandPath(), cmd.CommandPath())
		},
	}
	cmd.AddCommand(newRaftPeersCommand())
	return cmd
}

func newRaftPeersCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "peers",
		Short: "List the Raft configuration as the answering member knows it",
		Args:  exactArgs(0, "raft peers takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				peers, err := listRaftPeers(ctx, c)
				if err != nil {
					return err
				}
				return p.raftPeers(peers)
			})
		},
	}
}

func listRaftPeers(ctx context.Context, c *client.Client) ([]*pb.RaftPeer, error) {
	return c.RaftPeers(ctx)
}
