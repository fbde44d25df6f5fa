package proccluster

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// connsyncdPackage is the import path Build compiles.
const connsyncdPackage = "github.com/connsync/connsync/cmd/connsyncd"

// Build compiles connsyncd into dir with `go build` and returns the
// binary's path. It works when the current directory is inside the
// connsync module (a checkout); elsewhere pass a binary instead.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "connsyncd")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, connsyncdPackage).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building connsyncd with `go build %s` failed (run from a connsync checkout, or give the path of a connsyncd binary): %v\n%s",
			connsyncdPackage, err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// FreeAddr returns a loopback address "127.0.0.1:port" whose port is free
// for both TCP and UDP (gossip uses both). Ports come from 20000-31999,
// below Linux's ephemeral range, so outgoing connections cannot take the
// port between this check and connsyncd binding it; a port is handed out
// at most once per process.
func FreeAddr() (string, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if portsUsed[port] {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		portsUsed[port] = true
		return addr, nil
	}
	return "", fmt.Errorf("proccluster: no free loopback port (TCP and UDP) found in 20000-31999")
}
