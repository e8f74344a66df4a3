package storage_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

// newFileStore formats a store of size bytes on a file in a temporary
// directory and returns it with the file's path.
func newFileStore(t *testing.T, size int64, opts storage.OpenOptions) (*storage.Store, *storage.FileDevice, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	dev, err := storage.CreateFileDevice(path, 2*size+size/16+1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: size, Open: opts})
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dev, path
}

// TestMappedReadsMatchModel runs a random workload on file-backed stores,
// mapped and not, checking every read against a model, across flushes
// and reopens.
func TestMappedReadsMatchModel(t *testing.T) {
	for _, tc := range []struct {
		name   string
		noMmap bool
	}{{"mmap", false}, {"pread", true}} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 4 << 20
			s, dev, _ := newFileStore(t, size, storage.OpenOptions{NoMmap: tc.noMmap})
			model := make([]byte, size)
			r := rand.New(rand.NewPCG(7, 7))
			for op := 0; op < 600; op++ {
				off := r.Int64N(size)
				n := min(r.Int64N(300<<10)+1, size-off)
				switch r.IntN(10) {
				case 0, 1, 2, 3:
					p := fill(uint64(op), int(n))
					if _, err := s.WriteAt(p, off); err != nil {
						t.Fatalf("op %d: WriteAt: %v", op, err)
					}
					copy(model[off:], p)
				case 4:
					if err := s.Trim(off, n); err != nil {
						t.Fatalf("op %d: Trim: %v", op, err)
					}
					clear(model[off : off+n])
				case 5:
					if err := s.Flush(); err != nil {
						t.Fatal(err)
					}
				case 6:
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					var err error
					if s, err = storage.Open(dev, storage.OpenOptions{KEK: testKEK, NoMmap: tc.noMmap}); err != nil {
						t.Fatalf("op %d: reopen: %v", op, err)
					}
					t.Cleanup(func() { s.Close() })
				default:
					got := make([]byte, n)
					if _, err := s.ReadAt(got, off); err != nil {
						t.Fatalf("op %d: ReadAt(%d, %d): %v", op, off, n, err)
					}
					if !bytes.Equal(got, model[off:off+n]) {
						t.Fatalf("op %d: ReadAt(%d, %d) differs from the model", op, off, n)
					}
				}
			}
			if bad, err := s.Verify(); err != nil || len(bad) != 0 {
				t.Fatalf("Verify: %v %v", bad, err)
			}
			if w := s.MappedWindows(); tc.noMmap && w != 0 || !tc.noMmap && w == 0 {
				t.Fatalf("%d windows mapped, NoMmap=%v", w, tc.noMmap)
			}
		})
	}
}

// TestMappedReadSeesTampering flips ciphertext bytes through another file
// handle while the store is open: the mapped read must see the change
// (shared page cache) and fail authentication, never return plaintext.
func TestMappedReadSeesTampering(t *testing.T) {
	s, _, path := newFileStore(t, 1<<20, storage.OpenOptions{})
	p := fill(3, 3*storage.BlockSize)
	if _, err := s.WriteAt(p, 5*storage.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := s.ReadAt(got, 5*storage.BlockSize); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back: %v", err)
	}
	if s.MappedWindows() == 0 {
		t.Fatal("store did not map the device")
	}
	off, mapped, err := s.DataOffset(6)
	if err != nil || !mapped {
		t.Fatalf("DataOffset: %v %v", mapped, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off+100); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off+100); err != nil {
		t.Fatal(err)
	}
	wantIntegrity(t, s, 6, true)
	// The multi-block path (blocks opened in place) too.
	clear(got)
	_, err = s.ReadAt(got, 5*storage.BlockSize)
	var ie *storage.IntegrityError
	if !errors.As(err, &ie) || ie.Block != 6 {
		t.Fatalf("multi-block read: %v, want an IntegrityError for block 6", err)
	}
	if bad, err := s.Verify(); err != nil || len(bad) != 1 || bad[0].First != 6 || bad[0].Count != 1 {
		t.Fatalf("Verify = %v, %v; want block 6 bad", bad, err)
	}
}

// TestMappedReadOfTruncatedFile truncates the backing file under an open
// store: reads through the mapping fault (SIGBUS), which must surface as
// an error, not a crash, and leave no data in the buffer.
func TestMappedReadOfTruncatedFile(t *testing.T) {
	s, _, path := newFileStore(t, 1<<20, storage.OpenOptions{})
	p := fill(4, 64*storage.BlockSize)
	if _, err := s.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(make([]byte, storage.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	off, _, err := s.DataOffset(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, off); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 8, 64} { // lone, in-place and parallel paths
		buf := bytes.Repeat([]byte{0xAA}, n*storage.BlockSize)
		_, err := s.ReadAt(buf, 0)
		if err == nil || errors.Is(err, storage.ErrIntegrity) {
			t.Fatalf("%d-block read of a truncated file: err = %v, want an I/O error", n, err)
		}
		if bytes.Contains(buf, p[:16]) {
			t.Fatalf("%d-block read returned plaintext with an error", n)
		}
		t.Logf("%d blocks: %v", n, err)
	}
}

// TestMappedConcurrentReadWrite mixes concurrent writers and mapped
// readers on disjoint and shared blocks (run it with -race).
func TestMappedConcurrentReadWrite(t *testing.T) {
	const size = 2 << 20
	s, _, _ := newFileStore(t, size, storage.OpenOptions{})
	const blocks = size / storage.BlockSize
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			buf := make([]byte, storage.BlockSize)
			for i := 0; i < 400; i++ {
				b := r.Int64N(blocks)
				if w%2 == 0 {
					// Every block holds 4096 copies of one byte, so a torn
					// read would show up as mixed bytes.
					for j := range buf {
						buf[j] = byte(i)
					}
					if _, err := s.WriteAt(buf, b*storage.BlockSize); err != nil {
						errc <- err
						return
					}
					if i%100 == 99 {
						if err := s.Flush(); err != nil {
							errc <- err
							return
						}
					}
					continue
				}
				if _, err := s.ReadAt(buf, b*storage.BlockSize); err != nil {
					errc <- err
					return
				}
				for _, c := range buf {
					if c != buf[0] {
						errc <- errors.New("torn block read")
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// TestMappedLargeSparseFile runs a 4 TiB store on a sparse file with a
// small cache: the mapping limit (256x the cache) lets one 256 MiB window
// be mapped, so blocks scattered over the whole store are read through
// that window or with pread, and all must read back.
func TestMappedLargeSparseFile(t *testing.T) {
	const logical = 4 << 40
	path := filepath.Join(t.TempDir(), "big.img")
	dev, err := storage.CreateFileDevice(path, 2*logical+logical/32)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	opts := storage.OpenOptions{KEK: testKEK, CacheBytes: 1 << 20, Logger: discardLogger()}
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: logical, Open: opts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var offs []int64
	for i := int64(0); i < 64; i++ {
		offs = append(offs, (i*7919*(1<<30)+i*4096)%logical/4096*4096)
	}
	offs = append(offs, logical-4096)
	for i, off := range offs {
		if _, err := s.WriteAt(fill(uint64(i), 4096), off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	for round := 0; round < 2; round++ {
		for i, off := range offs {
			got := make([]byte, 4096)
			if _, err := s.ReadAt(got, off); err != nil {
				t.Fatalf("read at %d: %v", off, err)
			}
			if !bytes.Equal(got, fill(uint64(i), 4096)) {
				t.Fatalf("block at %d differs", off)
			}
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if w := s.MappedWindows(); w != 1 {
		t.Fatalf("%d windows mapped, want the limit of 1", w)
	}
}

// regionDevice is the part of a file from off on, as the appliance's
// data-disk window is: a storage.FileBacked device that is not a
// *FileDevice.
type regionDevice struct {
	f   *os.File
	off int64
}

func (d *regionDevice) ReadAt(p []byte, off int64) (int, error)  { return d.f.ReadAt(p, d.off+off) }
func (d *regionDevice) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, d.off+off) }
func (d *regionDevice) Sync() error                              { return d.f.Sync() }
func (d *regionDevice) BackingFile() (*os.File, int64)           { return d.f, d.off }
func (d *regionDevice) Size() (int64, error) {
	fi, err := d.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size() - d.off, nil
}

// TestMappedRegionOfFile: a store on a region of a file (after a header)
// maps the region at its offset when the offset is page-aligned, reads
// pread otherwise, and reads the same bytes either way; what it writes
// lands in the region only.
func TestMappedRegionOfFile(t *testing.T) {
	for _, tc := range []struct {
		off         int64
		wantWindows bool
	}{{off: 64 << 10, wantWindows: true}, {off: 512, wantWindows: false}} {
		const size = 2 << 20
		path := filepath.Join(t.TempDir(), "disk.img")
		header := bytes.Repeat([]byte{0xEE}, int(tc.off))
		if err := os.WriteFile(path, header, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(tc.off + 2*size + size/16 + 1<<20); err != nil {
			t.Fatal(err)
		}
		dev := &regionDevice{f: f, off: tc.off}
		s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: size})
		if err != nil {
			t.Fatalf("offset %d: Format: %v", tc.off, err)
		}
		p := fill(uint64(tc.off), 300<<10)
		if _, err := s.WriteAt(p, 12345); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = storage.Open(dev, storage.OpenOptions{KEK: testKEK}); err != nil {
			t.Fatalf("offset %d: Open: %v", tc.off, err)
		}
		got := make([]byte, len(p))
		if _, err := s.ReadAt(got, 12345); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("offset %d: read back: %v, equal %v", tc.off, err, bytes.Equal(got, p))
		}
		if w := s.MappedWindows(); (w > 0) != tc.wantWindows {
			t.Errorf("offset %d: %d windows mapped, want mapped=%v", tc.off, w, tc.wantWindows)
		}
		s.Close()
		hdr := make([]byte, tc.off)
		if _, err := f.ReadAt(hdr, 0); err != nil || !bytes.Equal(hdr, header) {
			t.Fatalf("offset %d: the header before the region changed", tc.off)
		}
	}
}
