package storage_test

import (
	"bytes"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

// TestHugeStore formats a 16 TiB store on a sparse in-memory device and
// checks that it starts empty without writing metadata, serves scattered
// blocks across the whole range, keeps the metadata cache within its bound,
// and that block status, trim and verify skip never-written subtrees.
func TestHugeStore(t *testing.T) {
	const logical = 16 << 40
	dev := newMemDevice(2*logical + 1<<40)
	opts := storage.OpenOptions{KEK: testKEK, CacheBytes: 1 << 20, Logger: discardLogger()}
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: logical, Open: opts})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	if in := s.Info(); in.TreeDepth != 6 || in.Size != logical {
		t.Fatalf("info = %+v, want depth 6 and 16 TiB", in)
	}
	ext, err := s.BlockStatus(0, logical)
	if err != nil || len(ext) != 1 || !ext[0].Zero {
		t.Fatalf("fresh status = %+v, %v", ext, err)
	}
	// Scattered writes: far more leaves than the 1 MiB cache holds.
	offs := []int64{0, 4096 * 129, 1 << 30, 1<<40 + 12345, logical/2 + 7, logical - 4096}
	for i := int64(0); i < 400; i++ {
		offs = append(offs, (i*7919*(1<<28))%logical/4096*4096)
	}
	for i, off := range offs {
		if _, err := s.WriteAt(fill(uint64(i), 4096), off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	if got := s.Stats().CachedNodes; got > 2*(1<<20)/storage.BlockSize {
		t.Fatalf("cache holds %d nodes, above its bound", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = storage.Open(dev, opts); err != nil {
		t.Fatal(err)
	}
	want := map[int64][]byte{}
	for i, off := range offs {
		want[off] = fill(uint64(i), 4096) // later writes to one offset win
	}
	buf := make([]byte, 4096)
	for off, w := range want {
		if _, err := s.ReadAt(buf, off); err != nil || !bytes.Equal(buf, w) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	ext, err = s.BlockStatus(1<<40, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range ext {
		if !e.Zero {
			data += e.Length
		}
	}
	if data == 0 || data > 4096*int64(len(offs)) {
		t.Fatalf("status of [1T, 2T) reports %d data bytes", data)
	}
	if bad, err := s.Verify(); err != nil || len(bad) != 0 {
		t.Fatalf("Verify = %v, %v", bad, err)
	}
	if err := s.Trim(0, logical); err != nil {
		t.Fatal(err)
	}
	if ext, err = s.BlockStatus(0, logical); err != nil || len(ext) != 1 || !ext[0].Zero {
		t.Fatalf("after trim: %d extents, %v", len(ext), err)
	}
}
