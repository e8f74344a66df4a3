package nbd

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// openTestFile returns a File on a new file holding data.
func openTestFile(t *testing.T, data []byte) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// dropCache writes f's pages back and evicts them from the page cache.
func dropCache(t *testing.T, f *File) {
	t.Helper()
	if err := unix.Fdatasync(f.fd); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(f.fd, 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

func TestFileReadAtNoWait(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	f := openTestFile(t, data)

	// Just written, so cached: served without waiting.
	buf := make([]byte, 256<<10)
	n, err := f.readAtNoWait(buf, 4096)
	if err != nil || n != len(buf) || !bytes.Equal(buf, data[4096:4096+len(buf)]) {
		t.Fatalf("cached read: n=%d err=%v, data equal %v", n, err, bytes.Equal(buf, data[4096:4096+len(buf)]))
	}
	// Past the end: a short count and io.EOF, as ReadAt.
	n, err = f.readAtNoWait(buf, int64(len(data))-100)
	if n != 100 || err != io.EOF || !bytes.Equal(buf[:100], data[len(data)-100:]) {
		t.Fatalf("read over the end: n=%d err=%v", n, err)
	}

	// Evicted: the read would wait for the disk, so it must not be done.
	// (This needs a file system whose page cache FADV_DONTNEED empties,
	// not tmpfs: set TMPDIR elsewhere if it is.)
	dropCache(t, f)
	clear(buf)
	n, err = f.readAtNoWait(buf, 512<<10)
	if !errors.Is(err, errWouldBlock) || n != 0 {
		t.Fatalf("uncached read: n=%d err=%v, want errWouldBlock", n, err)
	}
	// The blocking path still reads it, and then it is cached.
	if n, err := f.ReadAt(buf, 512<<10); err != nil || n != len(buf) {
		t.Fatalf("ReadAt: n=%d err=%v", n, err)
	}
	clear(buf)
	n, err = f.readAtNoWait(buf, 512<<10)
	if err != nil || n != len(buf) || !bytes.Equal(buf, data[512<<10:512<<10+len(buf)]) {
		t.Fatalf("read after ReadAt: n=%d err=%v", n, err)
	}
}

func TestFileWriteInline(t *testing.T) {
	f := openTestFile(t, make([]byte, 1<<20))
	page := int64(os.Getpagesize())
	cases := []struct {
		off, n int64
		want   bool
	}{
		{0, page, true},
		{page * 3, 256 * page, true},
		{0, 512, false},           // a partial page may need reading first
		{512, page, false},        // misaligned
		{page, page + 512, false}, // ends inside a page
	}
	for _, tc := range cases {
		if got := f.writeInline(tc.off, tc.n); got != tc.want {
			t.Errorf("writeInline(%d, %d) = %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
}
