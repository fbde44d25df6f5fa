package faultnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
)

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// FreeAddr returns a loopback address ("127.0.0.1:port") whose port is free
// for both TCP and UDP, as memberlist needs. Ports come from 20000-31999,
// below the kernel's ephemeral range (32768-60999 on Linux), so :0 listeners
// and outgoing connections of tests running in parallel cannot take the
// port between this check and its use; a port handed out once is never
// handed out again by this process.
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
	return "", errors.New("faultnet: no free port for TCP and UDP in 20000-31999")
}
