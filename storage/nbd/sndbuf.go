package nbd

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Send buffer sizing. Linux grows a TCP socket's send buffer toward
// net.ipv4.tcp_wmem's maximum (4 MiB by default) as the congestion window
// grows. On a path whose round trip takes microseconds (the same host, the
// same rack) the window says nothing about what needs to be in flight, and
// the socket ends up queueing megabytes of read replies: every byte is
// copied into and out of cache-cold socket memory, and on this project's
// loopback the queueing delay set off spurious retransmissions (ss: 13-15 MB
// retransmitted per 5 GB of 1 MiB reads, for nbdkit as for us). A buffer of
// twice the bandwidth-delay product of the fastest link provisioned for, at
// the connection's minimum round-trip time, never limits throughput; where
// that exceeds autotuning's maximum (any WAN path) nothing is set.
const (
	// provisionedLinkRate is the fastest link, in bytes per second, a capped
	// send buffer must keep full: 100 Gbit/s.
	provisionedLinkRate = 100e9 / 8
	// minSendBuffer is the smallest send buffer set, in bytes as the kernel
	// accounts them (it doubles what setsockopt asks for, for overhead). At
	// 1 MiB, 1 MiB sequential reads over loopback used 0.6x the server CPU
	// per byte of autotuning's 4 MiB; 2 MiB was no better than 4 MiB.
	minSendBuffer = 1 << 20
)

// sendBufferFor returns the send buffer, in kernel-accounted bytes, for a
// path with minimum round-trip time minRTT, or 0 to leave autotuning (whose
// maximum is autotuneMax) alone.
func sendBufferFor(minRTT time.Duration, autotuneMax int) int {
	if minRTT <= 0 {
		return 0 // not measured: keep the kernel's choice
	}
	want := max(2*provisionedLinkRate*minRTT.Seconds(), minSendBuffer)
	if want >= float64(autotuneMax) {
		return 0
	}
	return int(want)
}

// sizeSendBuffer caps nc's send buffer at sendBufferFor its measured
// minimum round-trip time. It returns the minimum RTT and the buffer set
// (kernel-accounted bytes; 0 if it left autotuning alone). A connection
// that is not TCP is left alone.
func sizeSendBuffer(nc net.Conn) (minRTT time.Duration, set int, err error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0, 0, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var opErr error
	err = rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			if err == unix.EOPNOTSUPP || err == unix.ENOPROTOOPT {
				return // not a TCP socket
			}
			opErr = fmt.Errorf("nbd: reading TCP_INFO: %w", err)
			return
		}
		if info.Min_rtt == 0 || info.Min_rtt == ^uint32(0) {
			return // no sample yet
		}
		minRTT = time.Duration(info.Min_rtt) * time.Microsecond
		if set = sendBufferFor(minRTT, tcpWmemMax()); set == 0 {
			return
		}
		// The kernel doubles the value asked for.
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, set/2); err != nil {
			opErr = fmt.Errorf("nbd: setting SO_SNDBUF: %w", err)
			set = 0
		}
	})
	if err == nil {
		err = opErr
	}
	return minRTT, set, err
}

// tcpWmemMax is the kernel's send buffer autotuning maximum
// (net.ipv4.tcp_wmem's third field), 4 MiB if it cannot be read.
var tcpWmemMax = sync.OnceValue(func() int {
	const fallback = 4 << 20
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	if err != nil {
		return fallback
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return fallback
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n <= 0 {
		return fallback
	}
	return n
})
