package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// netLab is a private network for a site of connsyncd processes, each in
// its own Linux network namespace with its own address: a hub namespace
// holds a bridge, each member's namespace is attached to it by a veth pair,
// and one more veth pair joins the test's own namespace to the bridge, so
// the test reaches every member. Addresses are in 198.18.77.0/24 (RFC 2544's
// benchmarking range: never a real network). Faults are the kernel's own:
// the interface down, packet loss with nftables (a random drop rule in the
// member's namespace), and delay with tc netem where the kernel has it
// (hasNetem; this project's CI machine does not, and says so).
//
// Everything the lab creates is named with its prefix and removed when the
// test ends; a lab left behind by an interrupted run (prefix "csc" and
// another process's number) is removed when the next one starts.
type netLab struct {
	t        testing.TB
	prefix   string
	hasNetem bool // tc netem works here
	hasNft   bool // nft is installed
}

const labNet = "198.18.77"

// newNetLab builds a lab for n members, or says why it cannot (not root,
// no ip or tc, namespaces not permitted).
func newNetLab(t testing.TB, n int) (*netLab, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("network namespaces need root (running as uid %d)", os.Geteuid())
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: %v", tool, err)
		}
	}
	l := &netLab{t: t, prefix: fmt.Sprintf("csc%d", os.Getpid()%100000)}
	l.removeStale()
	t.Cleanup(l.remove)
	cmds := [][]string{
		{"netns", "add", l.hub()},
		{"-n", l.hub(), "link", "set", "lo", "up"},
		{"-n", l.hub(), "link", "add", "br0", "type", "bridge"},
		{"-n", l.hub(), "link", "set", "br0", "up"},
		{"link", "add", l.prefix + "-r", "type", "veth", "peer", "name", "vr", "netns", l.hub()},
		{"-n", l.hub(), "link", "set", "vr", "master", "br0", "up"},
		{"addr", "add", labNet + ".1/24", "dev", l.prefix + "-r"},
		{"link", "set", l.prefix + "-r", "up"},
	}
	for i := 0; i < n; i++ {
		ns, veth := l.ns(i), fmt.Sprintf("vm%d", i)
		cmds = append(cmds,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", l.hub(), "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", l.hub(), "link", "set", veth, "master", "br0", "up"},
			[]string{"-n", ns, "addr", "add", l.addr(i) + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	l.hasNetem = exec.Command("tc", "-n", l.hub(), "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms").Run() == nil
	_, err := exec.LookPath("nft")
	l.hasNft = err == nil
	return l, nil
}

// loss drops pct percent of member i's packets, both ways, at random
// (nftables in its namespace); pct 0 removes the rule.
func (l *netLab) loss(i, pct int) error {
	nft := func(args ...string) ([]byte, error) {
		return exec.Command("ip", append([]string{"netns", "exec", l.ns(i), "nft"}, args...)...).CombinedOutput()
	}
	if pct == 0 {
		nft("delete", "table", "inet", "chaos")
		return nil
	}
	rules := fmt.Sprintf(`table inet chaos {
	chain in { type filter hook input priority 0; numgen random mod 100 < %d drop; }
	chain out { type filter hook output priority 0; numgen random mod 100 < %d drop; }
}`, pct, pct)
	cmd := exec.Command("ip", "netns", "exec", l.ns(i), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", l.ns(i), err, out)
	}
	return nil
}

func (l *netLab) hub() string       { return l.prefix + "-hub" }
func (l *netLab) ns(i int) string   { return fmt.Sprintf("%s-m%d", l.prefix, i) }
func (l *netLab) addr(i int) string { return fmt.Sprintf("%s.%d", labNet, 10+i) }

// remove deletes the lab's namespaces (which takes their veth pairs, the
// one in the test's namespace included, with them).
func (l *netLab) remove() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], l.prefix+"-") {
			exec.Command("ip", "netns", "del", f[0]).Run()
		}
	}
	exec.Command("ip", "link", "del", l.prefix+"-r").Run()
}

// removeStale deletes what labs of earlier, interrupted runs left behind.
func (l *netLab) removeStale() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "csc") && !strings.HasPrefix(f[0], l.prefix+"-") &&
			strings.Contains(f[0], "-") {
			exec.Command("ip", "netns", "del", f[0]).Run()
		}
	}
}

// netem applies a netem qdisc to member i's interface (e.g. "delay", "40ms",
// "loss", "10%"), or with no arguments removes it.
func (l *netLab) netem(i int, args ...string) error {
	c := append([]string{"-n", l.ns(i), "qdisc", "replace", "dev", "eth0", "root", "netem"}, args...)
	if len(args) == 0 {
		c = []string{"-n", l.ns(i), "qdisc", "del", "dev", "eth0", "root"}
	}
	if out, err := exec.Command("tc", c...).CombinedOutput(); err != nil && len(args) > 0 {
		return fmt.Errorf("tc %s: %v: %s", strings.Join(c, " "), err, out)
	}
	return nil
}

// link sets member i's interface up or down (down: it is cut off from all).
func (l *netLab) link(i int, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	if out, err := exec.Command("ip", "-n", l.ns(i), "link", "set", "eth0", state).CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set eth0 %s in %s: %v: %s", state, l.ns(i), err, out)
	}
	return nil
}

// startNetnsSite starts n connsyncd processes, member i in the lab's
// namespace i, and waits until the site is placed.
func startNetnsSite(t testing.TB, l *netLab, n int) *procSite {
	t.Helper()
	base := t.TempDir()
	var procs []*proc
	for i := 0; i < n; i++ {
		id, a := fmt.Sprintf("p%d", i), l.addr(i)
		procs = append(procs, &proc{id: id, grpc: a + ":7420", raft: a + ":7421", gossip: a + ":7422", netns: l.ns(i),
			dir: filepath.Join(base, id), log: filepath.Join(base, id+".log")})
	}
	return runProcSite(t, procs)
}
