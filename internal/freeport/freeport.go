// Package freeport hands out loopback addresses for test and benchmark
// clusters started on this machine.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
)

var (
	mu   sync.Mutex
	used = map[int]bool{} // handed out, or claimed by another process
)

// Addr returns a loopback address ("127.0.0.1:port") whose port is free for
// both TCP and UDP, as memberlist needs. Ports come from 20000-31999, below
// the kernel's ephemeral range (32768-60999 on Linux), so :0 listeners and
// outgoing connections cannot take the port between this check and its
// use. A port handed out once is never handed out again by this process,
// and is claimed for its lifetime with a lock file (claim): test processes
// side by side (go test runs packages in parallel) do not hand out each
// other's ports, which a crashed member restarting on its own port needs.
func Addr() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if used[port] || !claim(port) {
			continue
		}
		used[port] = true // claimed: this process's from now on, free or not
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
		return addr, nil
	}
	return "", errors.New("no loopback port free for TCP and UDP in 20000-31999")
}
