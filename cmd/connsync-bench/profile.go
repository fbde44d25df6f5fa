package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/connsync/connsync/internal/proccluster"
)

// profileMembers fetches a CPU profile of every member but skip for d,
// starting now (connsyncd's /debug/pprof/profile, served with -metrics-addr
// and -pprof), into dir/NAME-MEMBER.pprof; wait returns once all are written
// and says where. Read them with `go tool pprof -top CONNSYNCD FILE`.
func profileMembers(ctx context.Context, c *proccluster.Cluster, dir, name string, d time.Duration, rep *reporter, skip string) (wait func()) {
	var wg sync.WaitGroup
	for _, m := range c.Members() {
		if m.ID == skip {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(dir, fmt.Sprintf("%s-%s.pprof", name, m.ID))
			if err := fetchProfile(ctx, m.Metrics, d, path); err != nil {
				rep.event("profile_error", field{"member", m.ID}, field{"error", err.Error()})
				return
			}
			rep.event("profile", field{"member", m.ID}, field{"file", path}, field{"s", d.Seconds()})
		}()
	}
	return wg.Wait
}

func fetchProfile(ctx context.Context, addr string, d time.Duration, path string) error {
	if addr == "" {
		return fmt.Errorf("no metrics address (the member was started without -pprof)")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(d.Seconds())))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// beforeKillKey carries the hook a scenario calls just before it SIGKILLs a
// member (withBeforeKill).
type beforeKillKey struct{}

// withBeforeKill returns ctx carrying f, which beforeKill calls with the
// victim's ID.
func withBeforeKill(ctx context.Context, f func(victim string)) context.Context {
	return context.WithValue(ctx, beforeKillKey{}, f)
}

// beforeKill calls ctx's hook (withBeforeKill), if any, for victim.
func beforeKill(ctx context.Context, victim string) {
	if f, ok := ctx.Value(beforeKillKey{}).(func(string)); ok {
		f(victim)
	}
}
