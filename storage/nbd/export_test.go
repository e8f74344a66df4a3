package nbd

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// Internals the black-box tests (package nbd_test) use too.

// SysctlInt is sysctlInt.
var SysctlInt = sysctlInt

// SendBuffer returns the kernel's SO_SNDBUF (accounted bytes) for the TCP
// connection nc.
func SendBuffer(t testing.TB, nc net.Conn) int {
	t.Helper()
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}
