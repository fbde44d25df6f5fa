package faultnet

import (
	"fmt"

	"github.com/connsync/connsync/internal/freeport"
)

// FreeAddr returns a loopback address whose port is free for both TCP and
// UDP (freeport.Addr).
func FreeAddr() (string, error) {
	addr, err := freeport.Addr()
	if err != nil {
		return "", fmt.Errorf("faultnet: %w", err)
	}
	return addr, nil
}
