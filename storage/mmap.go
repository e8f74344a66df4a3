package storage

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
)

// The store reads data-block ciphertext of a file-backed device through
// read-only shared memory mappings of the backing file instead of pread:
// a 4 KiB pread costs a system call (~2 us on these machines), a copy out
// of a mapped page a few hundred ns. Rules that keep it safe:
//
//   - Ciphertext is always COPIED out of the mapping into private memory
//     before GCM opens it. Decrypting from the shared pages would fetch the
//     bytes twice (once for the tag, once for the plaintext), and a
//     concurrent writer to the file could change them in between.
//   - A fault while copying (SIGBUS: an I/O error, or the file truncated
//     under the store) becomes an ordinary error through
//     debug.SetPanicOnFault and recover, never a crash.
//   - The device is mapped in fixed windows, on demand, and only up to a
//     limit derived from the metadata cache size; past it the store reads
//     with pread. Windows stay mapped until Close, so the hot path takes
//     no lock and nothing is ever unmapped under a reader. The mapping
//     costs address space and page tables (8 bytes per 4 KiB page
//     touched, so at most limit/512 bytes); the pages themselves are the
//     file's page cache, which the kernel reclaims like any other.
//   - Writes and metadata still go through the Device (pwrite): the page
//     cache is shared, so a mapped read sees them at once, and Sync orders
//     them exactly as before.

// mapWindowShift sets the mapping window size (256 MiB).
const mapWindowShift = 28

// mapWindow is the size of one mapping window.
const mapWindow = 1 << mapWindowShift

// errMapFault is wrapped by the error a read returns when the mapped
// device faulted (SIGBUS).
var errMapFault = errors.New("storage: fault reading mapped device")

// devMap maps a file device in windows.
type devMap struct {
	conn  syscall.RawConn // the file, for mmap (Fd would make it blocking)
	base  int64           // the device's offset in the file
	size  int64
	limit int // windows that may be mapped

	mu      sync.Mutex // serializes mapping new windows
	count   int        // windows mapped (under mu)
	failed  bool       // a mapping failed: stop trying (under mu)
	windows []atomic.Pointer[[]byte]
}

// newDevMap returns a mapping of dev's first size bytes allowed to map up
// to limitBytes of it, or nil where the platform or the device does not
// support mapping.
func newDevMap(dev Device, size, limitBytes int64) *devMap {
	fb, ok := dev.(FileBacked)
	if !ok || !mmapSupported || size <= 0 {
		return nil
	}
	f, base := fb.BackingFile()
	if f == nil || base < 0 || base%int64(os.Getpagesize()) != 0 {
		return nil
	}
	conn, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	n := (size + mapWindow - 1) / mapWindow
	limit := int(min(n, max(1, limitBytes/mapWindow)))
	return &devMap{conn: conn, base: base, size: size, limit: limit, windows: make([]atomic.Pointer[[]byte], n)}
}

// window returns window i, mapping it if the limit allows; nil means
// "use pread".
func (m *devMap) window(i int64) []byte {
	if w := m.windows[i].Load(); w != nil {
		return *w
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.windows[i].Load(); w != nil {
		return *w
	}
	if m.failed || m.count >= m.limit {
		return nil
	}
	length := min(int64(mapWindow), m.size-i*mapWindow)
	var b []byte
	var err error
	cerr := m.conn.Control(func(fd uintptr) { b, err = mmapRead(fd, m.base+i*mapWindow, int(length)) })
	if err != nil || cerr != nil {
		m.failed = true // e.g. a device that cannot be mapped
		return nil
	}
	m.windows[i].Store(&b)
	m.count++
	return b
}

// readAt fills p from the device at off (p must not cross a window
// boundary; block-aligned runs of a 4 KiB-aligned window never do). It
// reports false, with nothing read, when off's window is not mapped: the
// caller then uses pread.
func (m *devMap) readAt(p []byte, off int64) (bool, error) {
	i := off >> mapWindowShift
	w := m.window(i)
	if w == nil {
		return false, nil
	}
	start := off - i*mapWindow
	if start+int64(len(p)) > int64(len(w)) {
		return false, nil
	}
	return true, copyFaultable(p, w[start:start+int64(len(p))])
}

// copyFaultable copies src (mapped memory) to dst, turning a memory fault
// into an error.
func copyFaultable(dst, src []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(interface{ Addr() uintptr }); ok {
				err = fmt.Errorf("%w (address %#x): the file may have been truncated or the disk failed", errMapFault, f.Addr())
				return
			}
			panic(r)
		}
	}()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	copy(dst, src)
	return nil
}

// close unmaps every window. Called when no reader can be running.
func (m *devMap) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.windows {
		if w := m.windows[i].Swap(nil); w != nil {
			munmap(*w)
		}
	}
	m.count = 0
}
