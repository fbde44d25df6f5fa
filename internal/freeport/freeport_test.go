package freeport

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// A port handed out here is claimed for this process: another process
// (this test binary run again as a child) does not hand it out.
func TestAddr_PortsAreClaimedAcrossProcesses(t *testing.T) {
	if os.Getenv("FREEPORT_CHILD") != "" {
		var out []string
		for range 200 {
			a, err := Addr()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, a)
		}
		os.Stdout.WriteString("ADDRS " + strings.Join(out, " ") + "\n")
		return
	}
	mine := map[string]bool{}
	for range 2000 {
		a, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		if mine[a] {
			t.Fatalf("%s handed out twice", a)
		}
		mine[a] = true
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestAddr_PortsAreClaimedAcrossProcesses$")
	cmd.Env = append(os.Environ(), "FREEPORT_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var n int
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "ADDRS "); ok {
			for _, a := range strings.Fields(rest) {
				n++
				if mine[a] {
					t.Fatalf("the child process was handed %s, which this process holds", a)
				}
			}
		}
	}
	if n != 200 {
		t.Fatalf("child handed out %d addresses, want 200\n%s", n, out)
	}
}
