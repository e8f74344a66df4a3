package storage

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// FileCounter is a Counter kept in a small file, for tests and tools. It
// is monotonic only as long as nobody rewrites the file: on the appliance
// the TPM NV counter takes its place.
type FileCounter struct {
	path string
	mu   sync.Mutex
}

// NewFileCounter returns a counter stored at path. A missing file reads
// as zero.
func NewFileCounter(path string) *FileCounter { return &FileCounter{path: path} }

// Read returns the counter's value.
func (c *FileCounter) Read() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read()
}

func (c *FileCounter) read() (uint64, error) {
	b, err := os.ReadFile(c.path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("storage: counter file %s is %d bytes, want 8", c.path, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// Increment adds one and returns the new value; the new value is durable
// (written to a temporary file, synced, renamed) before it returns.
func (c *FileCounter) Increment() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := c.read()
	if err != nil {
		return 0, err
	}
	v++
	tmp, err := os.CreateTemp(filepath.Dir(c.path), ".counter-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if _, err := tmp.Write(b[:]); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		return 0, err
	}
	return v, nil
}
