//go:build !linux

package storage

import "errors"

const mmapSupported = false

func mmapRead(uintptr, int64, int) ([]byte, error) {
	return nil, errors.New("storage: memory mapping not supported here")
}

func munmap([]byte) {}
