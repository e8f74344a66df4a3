package storage

import (
	"fmt"
	"io"
	"os"
)

// Device is the backing storage a Store lives on: a file or a block device.
// Writes need not be durable until Sync returns; the store orders its
// writes with Sync so that a power cut at any instant leaves a consistent
// store (see docs/storage-format.md).
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable.
	Sync() error
	// Size returns the device's size in bytes.
	Size() (int64, error)
}

// FileBacked is implemented by a Device that is a region of an open file or
// block device. Open then reads data and metadata through read-only
// mappings of that file instead of pread (docs/storage-format.md,
// Memory-mapped reads). A nil file means "do not map".
type FileBacked interface {
	// BackingFile returns the file and the byte offset in it at which the
	// device starts. Open maps only offsets that are a multiple of the
	// page size and reads with pread otherwise.
	BackingFile() (f *os.File, offset int64)
}

// FileDevice is a Device backed by an *os.File: a regular file or a block
// device node.
type FileDevice struct {
	*os.File
}

// OpenFileDevice opens path (a regular file or a block device) as a Device.
// With readOnly the file is opened O_RDONLY.
func OpenFileDevice(path string, readOnly bool) (*FileDevice, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	return &FileDevice{File: f}, nil
}

// BackingFile returns the file, which the device covers from offset 0.
func (d *FileDevice) BackingFile() (*os.File, int64) { return d.File, 0 }

// CreateFileDevice creates (or truncates) a regular file of size bytes and
// returns it as a Device. The file is sparse where the filesystem allows.
func CreateFileDevice(path string, size int64) (*FileDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return &FileDevice{File: f}, nil
}

// Size returns the file's size; for a block device, its capacity (found by
// seeking to the end, which works for both).
func (d *FileDevice) Size() (int64, error) {
	fi, err := d.File.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	n, err := d.File.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("storage: size of %s: %w", d.Name(), err)
	}
	return n, nil
}
