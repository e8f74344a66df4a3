//go:build linux

package kernelclient

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The NBD ioctls of <linux/nbd.h>: _IO(0xab, n).
const (
	nbdSetSock    = 0xab00
	nbdSetBlksize = 0xab01
	nbdSetSize    = 0xab02
	nbdDoIt       = 0xab03
	nbdClearSock  = 0xab04
	nbdClearQue   = 0xab05
	nbdDisconnect = 0xab08
	nbdSetTimeout = 0xab09
	nbdSetFlags   = 0xab0a
)

// Device is an NBD device (/dev/nbdN) connected through the kernel client.
type Device struct {
	// Path is the device node.
	Path string

	f       *os.File
	kernel  int           // the socketpair end the kernel holds
	proxy   *net.UnixConn // our end
	doIt    chan error    // NBD_DO_IT's result
	proxied chan error    // the proxy's result
	once    sync.Once
}

// Attach configures the device at path for the negotiated export with
// logical block size blockSize (512 makes the kernel send 512-byte
// requests) and starts the kernel client: NBD_SET_BLKSIZE, NBD_SET_SIZE,
// NBD_SET_FLAGS (the export's transmission flags), NBD_SET_TIMEOUT,
// NBD_SET_SOCK with one end of a socketpair, and NBD_DO_IT on its own
// locked OS thread. Bytes between the other end and e.Conn are copied by
// two goroutines. The device is usable when Attach returns.
func Attach(path string, e *Export, blockSize int) (*Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("kernelclient: %w", err)
	}
	fd := int(f.Fd())
	ioctl := func(name string, req uint, arg uintptr) error {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), arg); errno != 0 {
			return fmt.Errorf("kernelclient: ioctl %s on %s: %w", name, path, errno)
		}
		return nil
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("kernelclient: socketpair: %w", err)
	}
	fail := func(err error) (*Device, error) {
		unix.Close(sp[0])
		unix.Close(sp[1])
		f.Close()
		return nil, err
	}
	for _, c := range []struct {
		name string
		req  uint
		arg  uintptr
	}{
		{"NBD_CLEAR_SOCK", nbdClearSock, 0},
		{"NBD_SET_BLKSIZE", nbdSetBlksize, uintptr(blockSize)},
		{"NBD_SET_SIZE", nbdSetSize, uintptr(e.Size)},
		{"NBD_SET_FLAGS", nbdSetFlags, uintptr(e.Flags)},
		{"NBD_SET_TIMEOUT", nbdSetTimeout, 60},
		{"NBD_SET_SOCK", nbdSetSock, uintptr(sp[0])},
	} {
		if err := ioctl(c.name, c.req, c.arg); err != nil {
			return fail(err)
		}
	}
	pf := os.NewFile(uintptr(sp[1]), "nbd-proxy")
	pc, err := net.FileConn(pf)
	pf.Close() // FileConn dup'ed it
	if err != nil {
		unix.Close(sp[0])
		f.Close()
		return nil, fmt.Errorf("kernelclient: socketpair conn: %w", err)
	}
	d := &Device{Path: path, f: f, kernel: sp[0], proxy: pc.(*net.UnixConn),
		doIt: make(chan error, 1), proxied: make(chan error, 1)}

	go func() {
		// NBD_DO_IT blocks in the kernel until the connection ends.
		runtime.LockOSThread()
		d.doIt <- ioctl("NBD_DO_IT", nbdDoIt, 0)
	}()
	go d.runProxy(e.Conn)
	if err := d.waitReady(int64(e.Size)); err != nil {
		// End the proxy first: no NBD_CMD_DISC will make the server close.
		e.Conn.Close()
		d.Disconnect()
		return nil, err
	}
	return d, nil
}

// waitReady waits until NBD_DO_IT has started the device: until then its
// size reads as zero.
func (d *Device) waitReady(size int64) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int64
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&got)))
		if errno == 0 && got == size {
			return nil
		}
		select {
		case err := <-d.doIt:
			d.doIt <- err // for Disconnect
			return fmt.Errorf("kernelclient: NBD_DO_IT ended before the device started: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kernelclient: %s still %d bytes, want %d (errno %v)", d.Path, got, size, errno)
		}
	}
}

// runProxy copies between the kernel's socket and the TLS connection. When
// the server closes (after NBD_CMD_DISC), our end of the socketpair is
// closed so the kernel's receive thread sees end of stream and NBD_DO_IT
// returns.
func (d *Device) runProxy(tc net.Conn) {
	up := make(chan error, 1)
	go func() {
		_, err := io.Copy(tc, d.proxy) // requests: kernel -> server
		up <- err
	}()
	_, down := io.Copy(d.proxy, tc) // replies: server -> kernel
	d.proxy.Close()
	tc.Close()
	uerr := <-up
	if errors.Is(uerr, net.ErrClosed) {
		// Our own Close above ended the upstream copy.
		uerr = nil
	}
	d.proxied <- errors.Join(down, uerr)
}

// File is the open device, for ioctls such as BLKDISCARD.
func (d *Device) File() *os.File { return d.f }

// Disconnect asks the kernel to end the connection (NBD_DISCONNECT: it
// sends NBD_CMD_DISC after the requests in flight), waits for NBD_DO_IT
// and the proxy to finish, and clears the device (NBD_CLEAR_QUE,
// NBD_CLEAR_SOCK). It returns the errors of those steps, NBD_DO_IT and
// the proxy.
func (d *Device) Disconnect() error {
	var err error
	d.once.Do(func() {
		fd := uintptr(d.f.Fd())
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, nbdDisconnect, 0); errno != 0 {
			err = fmt.Errorf("kernelclient: NBD_DISCONNECT: %w", errno)
		}
		doErr := <-d.doIt
		proxyErr := <-d.proxied
		unix.Syscall(unix.SYS_IOCTL, fd, nbdClearQue, 0)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, nbdClearSock, 0); errno != 0 && err == nil {
			err = fmt.Errorf("kernelclient: NBD_CLEAR_SOCK: %w", errno)
		}
		unix.Close(d.kernel)
		d.f.Close()
		err = errors.Join(err, doErr, proxyErr)
	})
	return err
}
