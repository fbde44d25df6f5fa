package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

func newSyncCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Connection-state replication",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show each member's replication: table, streams, full syncs under way, delay classes",
		Long: `sync status asks every member in --addr (or CONNSYNC_ADDR) for its own view of
connection-state replication: the connections it holds, its stream to each
backup member (connections queued, records sent, batches acknowledged), the
full syncs it is sending (progress and estimated time left), the buckets it
waits to receive, and the delay classes it applies to new connections.`,
		Args: exactArgs(0, "sync status takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			g, err := globals(cmd)
			if err != nil {
				return err
			}
			addrs, _ := parseAddrs(g.addr)
			var out []*pb.SyncStatusResponse
			for _, a := range addrs {
				err := withAddr(cmd, a, func(ctx context.Context, c *client.Client, _ *printer) error {
					st, err := c.SyncStatus(ctx)
					if err != nil {
						return fmt.Errorf("%s: %w", a, err)
					}
					out = append(out, st)
					return nil
				})
				if err != nil {
					return err
				}
			}
			return newPrinter(cmd.OutOrStdout(), g.output).syncStatus(out)
		},
	})
	return cmd
}

func (p *printer) syncStatus(all []*pb.SyncStatusResponse) error {
	if p.format == outputJSON {
		return jsonList(p, all)
	}
	rows := [][]string{{"MEMBER", "CONNECTIONS", "TOMBSTONES", "STATE BYTES", "DELAYED", "REFUSED", "WAITING FOR SYNC"}}
	for _, s := range all {
		rows = append(rows, []string{s.MemberId, u64(s.Connections), u64(s.Tombstones), u64(s.StateBytes),
			u64(s.Delayed), u64(s.Refused), itoa(len(s.Waiting))})
	}
	if err := p.table(rows); err != nil {
		return err
	}
	rows = [][]string{{"FROM", "TO", "CONNECTED", "QUEUED", "SENT", "ACKED BATCHES", "REFUSED"}}
	for _, s := range all {
		for _, st := range s.Streams {
			rows = append(rows, []string{s.MemberId, st.Target, yesNo(st.Connected), u64(st.Queued), u64(st.SentRecords),
				u64(st.AckedBatches), u64(st.Refused)})
		}
	}
	if len(rows) > 1 {
		if err := p.line(""); err != nil {
			return err
		}
		if err := p.table(rows); err != nil {
			return err
		}
	}
	rows = [][]string{{"BUCKET", "FROM", "TO", "EPOCH", "SENT", "TOTAL", "BYTES", "ETA"}}
	for _, s := range all {
		for _, f := range s.Sending {
			eta := "-"
			if f.EtaMs > 0 {
				eta = (time.Duration(f.EtaMs) * time.Millisecond).String()
			}
			rows = append(rows, []string{u64(uint64(f.Bucket)), s.MemberId, f.Target, u64(f.Epoch), u64(f.ConnectionsSent),
				u64(f.ConnectionsTotal), u64(f.BytesSent), eta})
		}
	}
	if len(rows) > 1 {
		if err := p.line(""); err != nil {
			return err
		}
		if err := p.table(rows); err != nil {
			return err
		}
	}
	if len(all) > 0 {
		if err := p.line(""); err != nil {
			return err
		}
		rows = [][]string{{"DELAY CLASS", "PROTOCOL", "PORTS", "DELAY"}}
		for _, c := range all[0].DelayClasses {
			ports := "any"
			if len(c.Ports) > 0 {
				ports = ""
				for i, pt := range c.Ports {
					if i > 0 {
						ports += ","
					}
					ports += u64(uint64(pt))
				}
			}
			proto := "any"
			if c.Protocol != 0 {
				proto = protocolName(c.Protocol)
			}
			delay := (time.Duration(c.DelayMs) * time.Millisecond).String()
			switch c.DelayMs {
			case -1:
				delay = "never"
			case 0:
				delay = "immediate"
			}
			rows = append(rows, []string{c.Name, proto, ports, delay})
		}
		return p.table(rows)
	}
	return nil
}
