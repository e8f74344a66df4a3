package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is a plain, unencrypted file or block device as a Backend: for
// benchmarks and for comparison with the authenticated store. Reads and
// writes of any offset and length go straight to pread/pwrite. The server
// serves reads of cached data and whole-page writes on the connection's
// reader goroutine (see transmit.go), the rest on its workers.
type File struct {
	f    *os.File
	fd   int
	size int64

	noNowait atomic.Bool // preadv2 lacks RWF_NOWAIT here: never serve inline
}

// OpenFile opens path as a backend. With readOnly the file is opened
// read-only (the export must then be ReadOnly too).
func OpenFile(path string, readOnly bool) (*File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("nbd: open backend: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nbd: size of %s: %w", path, err)
	}
	return &File{f: f, fd: int(f.Fd()), size: size}, nil
}

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }

// Size returns the file's size when it was opened.
func (b *File) Size() int64 { return b.size }

// ReadAt reads with pread.
func (b *File) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// WriteAt writes with pwrite.
func (b *File) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }

// readAtNoWait reads like ReadAt if every page of the range is in the page
// cache (preadv2 with RWF_NOWAIT); otherwise it returns errWouldBlock.
func (b *File) readAtNoWait(p []byte, off int64) (int, error) {
	if b.noNowait.Load() {
		return 0, errWouldBlock
	}
	done := 0
	for done < len(p) {
		// A raw system call, as on the socket (rawsock.go): with
		// RWF_NOWAIT it cannot block.
		iov := unix.Iovec{Base: &p[done], Len: uint64(len(p) - done)}
		r, _, errno := unix.RawSyscall6(unix.SYS_PREADV2, uintptr(b.fd), uintptr(unsafe.Pointer(&iov)), 1,
			uintptr(off+int64(done)), 0, unix.RWF_NOWAIT)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, errWouldBlock
		case unix.EOPNOTSUPP, unix.ENOSYS, unix.EINVAL:
			b.noNowait.Store(true)
			return 0, errWouldBlock
		default:
			return done, &os.PathError{Op: "preadv2", Path: b.f.Name(), Err: errno}
		}
		if r == 0 {
			return done, io.EOF
		}
		done += int(r)
	}
	return done, nil
}

// writeInline reports whether a write is expected not to wait for the
// device: one that covers whole pages only goes to the page cache (a
// partial page may have to be read first).
func (b *File) writeInline(off, n int64) bool {
	page := int64(os.Getpagesize())
	return off%page == 0 && n%page == 0
}

// Flush calls fdatasync: it covers writes from every connection.
func (b *File) Flush() error { return unix.Fdatasync(b.fd) }

// Trim punches a hole; the range then reads as zeros.
func (b *File) Trim(off, length int64) error {
	return b.punch(off, length)
}

// WriteZeroes punches a hole. If the file system cannot, it returns an
// error wrapping errors.ErrUnsupported (the server then writes zeros).
func (b *File) WriteZeroes(off, length int64) error {
	return b.punch(off, length)
}

// WriteZeroesNoHole zeroes the range keeping it allocated
// (FALLOC_FL_ZERO_RANGE), for NBD_CMD_FLAG_NO_HOLE.
func (b *File) WriteZeroesNoHole(off, length int64) error {
	err := unix.Fallocate(b.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("nbd: zero range: %w", errors.ErrUnsupported)
	}
	return err
}

func (b *File) punch(off, length int64) error {
	err := unix.Fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("nbd: punch hole: %w", errors.ErrUnsupported)
	}
	return err
}

// Cache asks the kernel to read the range ahead.
func (b *File) Cache(off, length int64) error {
	return unix.Fadvise(b.fd, off, length, unix.FADV_WILLNEED)
}

// BlockStatus reports holes and data with SEEK_DATA/SEEK_HOLE. A file
// system without them reports everything as data.
func (b *File) BlockStatus(off, length int64) ([]Extent, error) {
	end := min(off+length, b.size)
	var out []Extent
	pos := off
	for pos < end {
		data, err := unix.Seek(b.fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = b.size // only a hole up to the end
		} else if err != nil {
			return []Extent{{Offset: pos, Length: end - pos}}, nil
		}
		if data > pos {
			h := min(data, end) - pos
			out = append(out, Extent{Offset: pos, Length: h, Zero: true})
			pos += h
			continue
		}
		hole, err := unix.Seek(b.fd, pos, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(max(hole, pos+1), end)
		out = append(out, Extent{Offset: pos, Length: hole - pos})
		pos = hole
	}
	return out, nil
}
