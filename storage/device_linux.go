package storage

import (
	"fmt"
	"syscall"
)

// Allocate reserves the file's whole size on its filesystem (fallocate),
// so that no later write to the store can fail for lack of space, and
// the first write to each block does not pay for allocating it. Data
// already written is kept, also when Allocate fails (a filesystem that
// cannot preallocate returns an error wrapping syscall.EOPNOTSUPP, a full
// one syscall.ENOSPC).
func (d *FileDevice) Allocate() error {
	size, err := d.Size()
	if err != nil {
		return err
	}
	rc, err := d.File.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for ferr = syscall.EINTR; ferr == syscall.EINTR; {
			ferr = syscall.Fallocate(int(fd), 0, 0, size)
		}
	}); err != nil {
		return err
	}
	if ferr != nil {
		return fmt.Errorf("storage: allocate %d bytes for %s: %w", size, d.Name(), ferr)
	}
	return nil
}
