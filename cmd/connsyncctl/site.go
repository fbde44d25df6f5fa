package main

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

func newSitesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "sites",
		Short: "Show this site and the peer site: mode, leader, members, link health and latency",
		Args:  exactArgs(0, "sites takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				r, err := c.Sites(ctx)
				if err != nil {
					return err
				}
				return p.sites(r)
			})
		},
	}
}

func (p *printer) sites(r *pb.SitesResponse) error {
	if p.format == outputJSON {
		return p.json(r)
	}
	rows := [][]string{{"SITE", "MODE", "LEADER", "MEMBERS", "LINK", "RTT", "REMOTE COPIES SYNCED"}}
	for _, s := range r.Sites {
		mode := "active"
		if s.Standby {
			mode = "standby"
		}
		link, rtt, copies := "local", "-", "-"
		if !s.Local {
			link, rtt = "up", fmt.Sprintf("%.1fms", float64(s.RttUs)/1000)
			if !s.Reachable {
				link = "down: " + s.Error
			}
			if s.Standby {
				copies = strconv.Itoa(int(s.RemoteCopiesSynced))
			}
		}
		rows = append(rows, []string{orDash(s.Name), mode, orDash(s.LeaderId), strings.Join(s.Members, ","), link, rtt, copies})
	}
	return p.table(rows)
}

func newSiteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "site",
		Short: "Site failover (manual policy)",
	}
	var dryRun, yes bool
	failover := &cobra.Command{
		Use:   "failover SITE",
		Short: "Activate standby site SITE: its members take over every bucket they hold remote backups of",
		Long: `site failover activates a standby site: in one Raft entry, every bucket's
primary on that site (which holds the bucket's remote backup) becomes active,
and every epoch grows. --addr must name members of SITE itself.

Run it only when the active site is down or cut off for good: if it is still
running, both sites act for the same connections. --dry-run shows what would
be activated; without --yes the command asks you to type the site's name.`,
		Args: exactArgs(1, "site failover takes the name of the standby site to activate"),
		RunE: func(cmd *cobra.Command, args []string) error {
			site := args[0]
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				plan, err := c.SiteFailover(ctx, site, true)
				if err != nil {
					return err
				}
				if dryRun {
					return p.siteFailover(plan)
				}
				if !yes {
					fmt.Fprintf(cmd.ErrOrStderr(), "This activates site %s: %d buckets, %d with a complete remote copy.\n"+
						"If the other site is still running, both sites will act. Type the site name to go on: ",
						site, plan.Buckets, plan.BucketsSynced)
					answer, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
					if strings.TrimSpace(answer) != site {
						return fmt.Errorf("not confirmed: nothing changed (pass --yes to skip the question)")
					}
				}
				r, err := c.SiteFailover(ctx, site, false)
				if err != nil {
					return err
				}
				return p.siteFailover(r)
			})
		},
	}
	failover.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be activated and change nothing")
	failover.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	var hoDryRun bool
	handover := &cobra.Command{
		Use:   "handover SITE",
		Short: "Make active site SITE standby once the other site holds every remote copy (failback)",
		Long: `site handover makes the active site SITE standby, make-before-break: it is
refused until the other (standby) site holds a complete remote copy of every
bucket. Under the witness policy the other site then takes the site lease and
activates about one lease later; under the manual policy, activate it with
'connsyncctl site failover'. --addr must name members of SITE.`,
		Args: exactArgs(1, "site handover takes the name of the active site to make standby"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client, p *printer) error {
				r, err := c.SiteHandover(ctx, args[0], hoDryRun)
				if err != nil {
					return err
				}
				if p.format == outputJSON {
					return p.json(r)
				}
				if r.DryRun {
					return p.line("dry run: site %s holds a complete copy of %d of %d buckets", r.PeerSite, r.PeerCopiesSynced, r.Buckets)
				}
				return p.line("site %s is standby (site epoch %d); site %s takes over", r.Site, r.SiteEpoch, r.PeerSite)
			})
		},
	}
	handover.Flags().BoolVar(&hoDryRun, "dry-run", false, "only report how many copies the other site holds")
	cmd.AddCommand(failover, handover)
	return cmd
}

func (p *printer) siteFailover(r *pb.SiteFailoverResponse) error {
	if p.format == outputJSON {
		return p.json(r)
	}
	if r.DryRun {
		return p.line("dry run: site %s would activate %d buckets (%d with a complete remote copy)", r.Site, r.Buckets, r.BucketsSynced)
	}
	return p.line("site %s is active: %d buckets (%d with a complete remote copy), site epoch %d", r.Site, r.Buckets, r.BucketsSynced, r.SiteEpoch)
}
