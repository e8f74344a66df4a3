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
	"sync/atomic"
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

	f     *os.File
	flags uint16 // the export's transmission flags
	links []*link
	doIt  chan error // NBD_DO_IT's result; nil when attached through netlink
	index uint32     // N of /dev/nbdN, when attached through netlink
	once  sync.Once
}

// link is one connection: a socketpair whose kernel end nbd.ko holds and
// whose other end is proxied to a TLS connection.
type link struct {
	kernel  int           // the socketpair end handed to the kernel
	proxy   *net.UnixConn // our end
	tls     net.Conn
	proxied chan error // the proxy's result
	track   *tracker   // what was relayed
}

// trackedWriter passes what it writes to a tracker: before writing it
// when the bytes go to the server (whose reply may come back before
// Write returns), after writing when they go to the kernel.
type trackedWriter struct {
	w      io.Writer
	seen   func([]byte)
	before bool
}

func (t trackedWriter) Write(p []byte) (int, error) {
	if t.before {
		t.seen(p)
		return t.w.Write(p)
	}
	n, err := t.w.Write(p)
	t.seen(p[:n])
	return n, err
}

// ErrNoConnection reports an Attach without any negotiated connection.
var ErrNoConnection = errors.New("kernelclient: no connection to attach")

// AttachOptions says how Attach hands the connections to the kernel.
type AttachOptions struct {
	// BlockSize is the logical block size given to the kernel; 512 makes
	// it send 512-byte requests.
	BlockSize int
	// Netlink configures the device with one NBD_CMD_CONNECT message of
	// the "nbd" generic netlink family, as nbd-client does by default on
	// current kernels, instead of the ioctls and a thread in NBD_DO_IT.
	Netlink bool
}

// Attach configures the device at path for the negotiated export and
// starts the kernel client, like nbd-client. With the ioctls:
// NBD_SET_BLKSIZE, NBD_SET_SIZE, NBD_SET_FLAGS (the export's transmission
// flags), NBD_SET_TIMEOUT, one NBD_SET_SOCK per connection (more than one
// needs NBD_FLAG_CAN_MULTI_CONN; all connections must be to the same
// export) with one end of a socketpair each, and NBD_DO_IT on its own
// locked OS thread; with opts.Netlink the same settings and sockets go in
// one NBD_CMD_CONNECT. Bytes between each socketpair's other end and its
// TLS connection are copied by two goroutines. The device is usable when
// Attach returns. On error the connections are closed.
func Attach(path string, conns []*Export, opts AttachOptions) (*Device, error) {
	if len(conns) == 0 {
		return nil, ErrNoConnection
	}
	closeAll := func() {
		for _, c := range conns {
			c.Conn.Close()
		}
	}
	d := &Device{Path: path, flags: conns[0].Flags}
	var err error
	if opts.Netlink {
		// The device is opened after NBD_CMD_CONNECT: the kernel refuses
		// to connect a device someone holds open (EBUSY).
		if d.index, err = deviceIndex(path); err != nil {
			closeAll()
			return nil, err
		}
	} else {
		if d.f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
			closeAll()
			return nil, fmt.Errorf("kernelclient: %w", err)
		}
		d.doIt = make(chan error, 1)
	}
	fail := func(err error) (*Device, error) {
		for _, l := range d.links {
			unix.Close(l.kernel)
			l.proxy.Close()
		}
		closeAll()
		if d.f != nil {
			d.f.Close()
		}
		return nil, err
	}
	// The kernel lets only the task (thread) that added the first socket
	// add more: keep the whole set-up on one OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	e := conns[0]
	ioctls := []struct {
		name string
		req  uint
		arg  uintptr
	}{
		{"NBD_CLEAR_SOCK", nbdClearSock, 0},
		{"NBD_SET_BLKSIZE", nbdSetBlksize, uintptr(opts.BlockSize)},
		{"NBD_SET_SIZE", nbdSetSize, uintptr(e.Size)},
		{"NBD_SET_FLAGS", nbdSetFlags, uintptr(e.Flags)},
		{"NBD_SET_TIMEOUT", nbdSetTimeout, 60},
	}
	if opts.Netlink {
		ioctls = nil // all of it goes in NBD_CMD_CONNECT below
	}
	for _, c := range ioctls {
		if err := d.ioctl(c.name, c.req, c.arg); err != nil {
			return fail(err)
		}
	}
	for _, c := range conns {
		if c.Size != e.Size || c.Flags != e.Flags {
			return fail(fmt.Errorf("kernelclient: connections disagree: size %d flags %#x vs size %d flags %#x", c.Size, c.Flags, e.Size, e.Flags))
		}
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("kernelclient: socketpair: %w", err))
		}
		pf := os.NewFile(uintptr(sp[1]), "nbd-proxy")
		pc, err := net.FileConn(pf)
		pf.Close() // FileConn dup'ed it
		if err != nil {
			unix.Close(sp[0])
			return fail(fmt.Errorf("kernelclient: socketpair conn: %w", err))
		}
		d.links = append(d.links, &link{kernel: sp[0], proxy: pc.(*net.UnixConn), tls: c.Conn, proxied: make(chan error, 1), track: newTracker()})
		if opts.Netlink {
			continue
		}
		if err := d.ioctl("NBD_SET_SOCK", nbdSetSock, uintptr(sp[0])); err != nil {
			return fail(err)
		}
	}
	if opts.Netlink {
		var fds []int
		for _, l := range d.links {
			fds = append(fds, l.kernel)
		}
		if err := netlinkConnect(d.index, e.Size, opts.BlockSize, e.Flags, fds); err != nil {
			return fail(err)
		}
		if d.f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
			netlinkDisconnect(d.index)
			return fail(fmt.Errorf("kernelclient: %w", err))
		}
	} else {
		go func() {
			// NBD_DO_IT blocks in the kernel until every connection ends.
			runtime.LockOSThread()
			d.doIt <- d.ioctl("NBD_DO_IT", nbdDoIt, 0)
		}()
	}
	for _, l := range d.links {
		go l.run()
	}
	if err := d.waitReady(int64(e.Size)); err != nil {
		// End the proxies first: no NBD_CMD_DISC will make the server close.
		closeAll()
		d.Disconnect()
		return nil, err
	}
	return d, nil
}

func (d *Device) ioctl(name string, req uint, arg uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), uintptr(req), arg); errno != 0 {
		return fmt.Errorf("kernelclient: ioctl %s on %s: %w", name, d.Path, errno)
	}
	return nil
}

// waitReady waits until the device has started (NBD_DO_IT or
// NBD_CMD_CONNECT): until then its size reads as zero.
func (d *Device) waitReady(size int64) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int64
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&got)))
		if errno == 0 && got == size {
			return nil
		}
		select {
		case err := <-d.doIt: // never, when d.doIt is nil (netlink)
			d.doIt <- err // for Disconnect
			return fmt.Errorf("kernelclient: NBD_DO_IT ended before the device started: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kernelclient: %s still %d bytes, want %d (errno %v)", d.Path, got, size, errno)
		}
	}
}

// run copies between the kernel's socket and the TLS connection. When the
// server closes (after NBD_CMD_DISC), our end of the socketpair is closed
// so the kernel's receive thread sees end of stream. When the kernel
// shuts its end down (it gives a connection up when a request on it times
// out), the TLS connection is closed, as nothing more can be relayed.
func (l *link) run() {
	up := make(chan error, 1)
	var kernelEnded atomic.Bool
	go func() {
		_, err := io.Copy(trackedWriter{l.tls, l.track.toServer, true}, l.proxy) // requests: kernel -> server
		if err == nil {
			kernelEnded.Store(true)
			l.tls.Close()
		}
		up <- err
	}()
	_, down := io.Copy(trackedWriter{l.proxy, l.track.toKernel, false}, l.tls) // replies: server -> kernel
	l.proxy.Close()
	l.tls.Close()
	uerr := <-up
	if errors.Is(uerr, net.ErrClosed) {
		// Our own Close above ended the upstream copy.
		uerr = nil
	}
	if kernelEnded.Load() && errors.Is(down, net.ErrClosed) {
		down = nil
	}
	l.proxied <- errors.Join(down, uerr)
}

// File is the device opened read-write, for I/O and ioctls such as
// BLKDISCARD.
func (d *Device) File() *os.File { return d.f }

// Flags are the export's transmission flags given to the kernel.
func (d *Device) Flags() uint16 { return d.flags }

// Relayed returns, per connection, what the proxy has relayed.
func (d *Device) Relayed() []Traffic {
	r := make([]Traffic, len(d.links))
	for i, l := range d.links {
		r[i] = l.track.traffic()
	}
	return r
}

// Connections is the number of connections the kernel was given.
func (d *Device) Connections() int { return len(d.links) }

// Disconnect asks the kernel to end the connections (NBD_DISCONNECT, or
// NBD_CMD_DISCONNECT through netlink: it sends NBD_CMD_DISC on each after
// the requests in flight), waits for NBD_DO_IT (ioctls) and the proxies to
// finish, and clears the device (NBD_CLEAR_QUE, NBD_CLEAR_SOCK; through
// netlink the kernel drops the configuration itself). It returns the
// errors of those steps, NBD_DO_IT and the proxies.
func (d *Device) Disconnect() error {
	var err error
	d.once.Do(func() {
		viaIoctls := d.doIt != nil
		if viaIoctls {
			err = d.ioctl("NBD_DISCONNECT", nbdDisconnect, 0)
			err = errors.Join(err, <-d.doIt)
		} else {
			err = netlinkDisconnect(d.index)
		}
		for _, l := range d.links {
			err = errors.Join(err, <-l.proxied)
		}
		if viaIoctls {
			d.ioctl("NBD_CLEAR_QUE", nbdClearQue, 0) // obsolete on new kernels; harmless
			err = errors.Join(err, d.ioctl("NBD_CLEAR_SOCK", nbdClearSock, 0))
		}
		for _, l := range d.links {
			unix.Close(l.kernel)
		}
		d.f.Close()
	})
	return err
}
