//go:build !linux

package storage

import (
	"errors"
	"fmt"
)

// Allocate reserves the file's whole size on its filesystem; it is only
// implemented on Linux and returns an error wrapping
// errors.ErrUnsupported elsewhere.
func (d *FileDevice) Allocate() error {
	return fmt.Errorf("storage: allocate %s: %w", d.Name(), errors.ErrUnsupported)
}
