//go:build !linux

package proccluster

import "syscall"

// sysProcAttr: outside Linux the members share the tool's process group and
// have no parent-death signal; Stop still ends them.
func sysProcAttr() *syscall.SysProcAttr { return nil }
