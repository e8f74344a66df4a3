package storage_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

// allocatedBytes is how much of path's file the filesystem has allocated.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileDeviceAllocate(t *testing.T) {
	const size = 8 << 20
	path := filepath.Join(t.TempDir(), "disk.img")
	dev, err := storage.CreateFileDevice(path, size)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	data := bytes.Repeat([]byte{0xa5}, 4096)
	if _, err := dev.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := allocatedBytes(t, path); got >= size {
		t.Fatalf("new file has %d of %d bytes allocated, want it sparse", got, size)
	}

	if err := dev.Allocate(); err != nil {
		t.Fatal(err)
	}
	if got := allocatedBytes(t, path); got < size {
		t.Errorf("after Allocate %d of %d bytes allocated", got, size)
	}
	if n, err := dev.Size(); err != nil || n != size {
		t.Errorf("size after Allocate = %d, %v; want %d", n, err, size)
	}
	got := make([]byte, 2*len(data))
	if _, err := dev.ReadAt(got, 1<<20-int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(data)], make([]byte, len(data))) || !bytes.Equal(got[len(data):], data) {
		t.Error("Allocate changed the file's contents")
	}
}

func TestFileDeviceAllocateReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	dev, err := storage.CreateFileDevice(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	dev.Close()
	ro, err := storage.OpenFileDevice(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Allocate(); !errors.Is(err, syscall.EBADF) {
		t.Fatalf("Allocate on a read-only device: %v, want EBADF", err)
	}
}
