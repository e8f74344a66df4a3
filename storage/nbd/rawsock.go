package nbd

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawSocket reads and writes a TCP (or Unix) socket with raw system calls
// (syscall.RawSyscall), waiting for readiness through the runtime's poller
// as net.Conn does.
//
// Why: the Go runtime's monitor thread (sysmon) sleeps while every P is
// idle, and the next system call made through syscall.Syscall wakes it
// (a futex wake), after which it polls every 20 us for a while before it
// sleeps again. A server that goes idle between every few requests, as
// this one does under fio's 4 KiB random reads, paid for that cycle on
// nearly every request: disabling the monitor's deep sleep cut the
// server's CPU per request by a third (docs/performance.md). A raw system
// call does not tell the scheduler, so it must not block: the socket is
// non-blocking (as every socket from package net is) and EAGAIN waits in
// the poller, outside the system call.
type rawSocket struct {
	net.Conn
	rc  syscall.RawConn
	iov []syscall.Iovec // writeBuffers' scratch; callers serialize writes
}

// newRawSocket returns nc as a rawSocket if it is a socket from package
// net, and nc itself otherwise (a test's net.Pipe, a wrapper) or under the
// race detector.
func newRawSocket(nc net.Conn) net.Conn {
	if raceEnabled {
		return nc
	}
	var sc syscall.Conn
	switch c := nc.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	return &rawSocket{Conn: nc, rc: rc}
}

// SyscallConn returns the socket's raw connection, for socket options.
func (s *rawSocket) SyscallConn() (syscall.RawConn, error) { return s.rc, nil }

// Read reads like net.Conn's Read.
func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err // closed, or past the read deadline
	case errno != 0:
		return 0, s.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p like net.Conn's Write.
func (s *rawSocket) Write(p []byte) (int, error) {
	n := 0
	var errno syscall.Errno
	err := s.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = s.opError("write", errno)
	}
	return n, err
}

// maxIovecs is the most buffers one writev takes (the kernel's UIO_MAXIOV).
const maxIovecs = 1024

// writeBuffers writes the buffers in order with writev, like
// net.Buffers.WriteTo on a net.Conn. Not safe for concurrent use.
func (s *rawSocket) writeBuffers(bufs [][]byte) error {
	s.iov = s.iov[:0]
	for _, b := range bufs {
		if len(b) > 0 {
			s.iov = append(s.iov, syscall.Iovec{Base: &b[0], Len: uint64(len(b))})
		}
	}
	iov := s.iov
	var errno syscall.Errno
	err := s.rc.Write(func(fd uintptr) bool {
		for len(iov) > 0 {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(min(len(iov), maxIovecs)))
			switch e {
			case 0:
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
			// Drop what was written: whole buffers, then part of one.
			for n := uint64(r); n > 0; {
				if n < iov[0].Len {
					iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[0].Base), n))
					iov[0].Len -= n
					break
				}
				n -= iov[0].Len
				iov = iov[1:]
			}
		}
		return true
	})
	clear(s.iov) // drop the references to the buffers
	if err == nil && errno != 0 {
		err = s.opError("writev", errno)
	}
	return err
}

func (s *rawSocket) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: s.LocalAddr().Network(), Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}
