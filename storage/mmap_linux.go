//go:build linux

package storage

import "syscall"

const mmapSupported = true

// mmapRead maps length bytes of fd at off read-only and shared.
func mmapRead(fd uintptr, off int64, length int) ([]byte, error) {
	return syscall.Mmap(int(fd), off, length, syscall.PROT_READ, syscall.MAP_SHARED)
}

func munmap(b []byte) { _ = syscall.Munmap(b) }
