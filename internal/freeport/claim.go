package freeport

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDir holds one lock file per port claimed by a live process.
var lockDir = filepath.Join(os.TempDir(), "connsync-freeport")

// claim takes port for this process: an exclusive flock on its lock file,
// held (the file left open) until the process exits, when the kernel
// releases it. It reports false if another process holds it. Where lock
// files cannot be made, it claims nothing and says true: the bind check
// still applies.
func claim(port int) bool {
	if err := os.MkdirAll(lockDir, 0o777); err != nil {
		return true
	}
	f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("%d.lock", port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		used[port] = true // another process's; do not ask again
		return false
	}
	held = append(held, f) // kept open: the lock lives as long as this process
	return true
}

// held keeps the claimed ports' lock files open.
var held []*os.File
