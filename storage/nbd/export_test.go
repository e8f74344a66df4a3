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
	return sockoptInt(t, nc, unix.SOL_SOCKET, unix.SO_SNDBUF)
}

// UnsentLimit returns TCP_NOTSENT_LOWAT for the TCP connection nc (net.ipv4.tcp_notsent_lowat
// where the socket does not set it).
func UnsentLimit(t testing.TB, nc net.Conn) int {
	t.Helper()
	return sockoptInt(t, nc, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
}

func sockoptInt(t testing.TB, nc net.Conn, level, opt int) int {
	t.Helper()
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}
