package proccluster

import "syscall"

// sysProcAttr puts a member in its own process group (a Ctrl-C at the
// terminal reaches only the tool, which stops the members in order) and
// has the kernel SIGKILL it if the tool dies without stopping it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
