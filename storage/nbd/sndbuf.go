package nbd

import (
	"errors"
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
	var opErr error
	err = controlSocket(nc, func(fd int) {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOPROTOOPT) {
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
		// The kernel doubles the value asked for. SO_SNDBUF silently clamps
		// it to net.core.wmem_max (208 KiB by default), below the floor, so
		// the privileged SO_SNDBUFFORCE is tried first (the appliance runs
		// as root), and SO_SNDBUF used only where wmem_max allows the size.
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, set/2)
		if errors.Is(err, unix.EPERM) {
			if set/2 > wmemMax() {
				set = 0 // a smaller buffer than wanted would do harm
				return
			}
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, set/2)
		}
		if err != nil {
			opErr = fmt.Errorf("nbd: setting the send buffer: %w", err)
			set = 0
		}
	})
	if err == nil {
		err = opErr
	}
	return minRTT, set, err
}

// tlsUnsentLimit is the TCP_NOTSENT_LOWAT set on TLS connections: how much
// unsent data the socket queues before a write waits. A TLS client, which
// must decrypt every byte, is usually slower than the server; its receive
// window then opens as it reads, and whatever the server's socket holds
// unsent is transmitted from the client's acknowledgement, in its softirq,
// on its CPU (perf on fio: 26 % of its samples, 17 % with nbdkit). With
// little queued unsent, the server's own write transmits instead. fio's
// 1 MiB reads over TLS, side by side: 12-17 % faster with 64 KiB (32 KiB
// helped little, 128 KiB less than 64), 4 KiB random reads unchanged.
// Without TLS, where the server rather than the client is the limit, it
// made reads slower (docs/performance.md), so it is set on TLS only.
const tlsUnsentLimit = 64 << 10

// limitUnsent sets nc's TCP_NOTSENT_LOWAT to tlsUnsentLimit and returns
// it, or 0 for a connection that is not TCP.
func limitUnsent(nc net.Conn) (int, error) {
	set := 0 // stays 0 when nc is no socket
	var opErr error
	if err := controlSocket(nc, func(fd int) {
		opErr = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, tlsUnsentLimit)
		set = tlsUnsentLimit
	}); err != nil {
		return 0, err
	}
	switch {
	case errors.Is(opErr, unix.EOPNOTSUPP) || errors.Is(opErr, unix.ENOPROTOOPT):
		return 0, nil // not a TCP socket
	case opErr != nil:
		return 0, fmt.Errorf("nbd: setting TCP_NOTSENT_LOWAT: %w", opErr)
	}
	return set, nil
}

// controlSocket runs f on nc's socket descriptor; a connection that is
// not a socket (no syscall.Conn) is left alone, f not run.
func controlSocket(nc net.Conn, f func(fd int)) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { f(int(fd)) })
}

// tcpWmemMax is the kernel's send buffer autotuning maximum
// (net.ipv4.tcp_wmem's third field), 4 MiB if it cannot be read.
var tcpWmemMax = sync.OnceValue(func() int { return sysctlInt("net/ipv4/tcp_wmem", 4<<20) })

// wmemMax is the largest SO_SNDBUF an unprivileged process may ask for
// (net.core.wmem_max), 208 KiB if it cannot be read.
var wmemMax = sync.OnceValue(func() int { return sysctlInt("net/core/wmem_max", 212992) })

// sysctlInt returns the last number in /proc/sys/name, or fallback.
func sysctlInt(name string, fallback int) int {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return fallback
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return fallback
	}
	n, err := strconv.Atoi(f[len(f)-1])
	if err != nil || n <= 0 {
		return fallback
	}
	return n
}
