package storage_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

// benchSize is the logical size of the benchmark store.
const benchSize = 128 << 20

type benchTarget interface {
	io.ReaderAt
	io.WriterAt
}

// newBenchStore formats a benchSize store on file name in dir, closed when
// the benchmark ends.
func newBenchStore(b *testing.B, dir, name string, opts storage.OpenOptions) *storage.Store {
	b.Helper()
	dev, err := storage.CreateFileDevice(filepath.Join(dir, name), 2*benchSize+8<<20)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dev.Close() })
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: benchSize, Open: opts})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkStore compares the store with plain os.File I/O on a twin
// file and with the pure AES-GCM ceiling (gcmCeiling), side by side in one
// run: `make bench-store` turns the triples into ratios. With
// STORAGE_BENCH_PREAD=1 a fourth target, store-pread, is a store opened
// with NoMmap (reads with pread instead of through the file mapping).
func BenchmarkStore(b *testing.B) {
	dir := b.TempDir()
	s := newBenchStore(b, dir, "backing", storage.OpenOptions{})
	stores := []*storage.Store{s}
	var sp *storage.Store
	if os.Getenv("STORAGE_BENCH_PREAD") == "1" {
		sp = newBenchStore(b, dir, "backing-pread", storage.OpenOptions{NoMmap: true})
		stores = append(stores, sp)
	}
	// Fill both so reads touch real data, not holes.
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for _, s := range stores {
		for off := int64(0); off < benchSize; off += int64(len(buf)) {
			if _, err := s.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	// Plain I/O goes to a twin file on the same filesystem: writing into the
	// store's own file would destroy what the store benchmarks read.
	plainDev, err := storage.CreateFileDevice(filepath.Join(dir, "plain"), 2*benchSize+8<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer plainDev.Close()
	for off := int64(0); off < benchSize; off += int64(len(buf)) {
		if _, err := plainDev.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	plain := plainDev.File
	ceiling, err := newGCMCeiling()
	if err != nil {
		b.Fatal(err)
	}
	for _, wl := range []struct {
		name  string
		size  int
		rand  bool
		write bool
	}{
		{"seqwrite1M", 1 << 20, false, true},
		{"seqread1M", 1 << 20, false, false},
		{"randwrite4K", 4096, true, true},
		{"randread4K", 4096, true, false},
	} {
		for _, conc := range []int{1, 4, 16} {
			// Rounds alternate plain, the GCM ceiling and store so that all
			// see the same machine load (go test -count would group the
			// repeats).
			for round := 0; round < benchRounds(b); round++ {
				tgts := []struct {
					name string
					t    benchTarget
				}{{"plain", plain}, {"gcm", ceiling}, {"store", s}}
				if sp != nil {
					tgts = append(tgts, struct {
						name string
						t    benchTarget
					}{"store-pread", sp})
				}
				for _, tgt := range tgts {
					b.Run(fmt.Sprintf("%s/conc=%d/%s", wl.name, conc, tgt.name), func(b *testing.B) {
						runBench(b, tgt.t, wl.size, wl.rand, wl.write, conc)
					})
				}
			}
		}
	}
}

func runBench(b *testing.B, t benchTarget, size int, random, write bool, conc int) {
	b.SetBytes(int64(size))
	var next atomic.Int64
	var wg sync.WaitGroup
	var ops atomic.Int64
	ops.Store(int64(b.N))
	slots := int64(benchSize / size)
	b.ResetTimer()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			buf := make([]byte, size)
			for i := range buf {
				buf[i] = byte(i + w)
			}
			for ops.Add(-1) >= 0 {
				var off int64
				if random {
					off = r.Int64N(slots) * int64(size)
				} else {
					off = (next.Add(1) % slots) * int64(size)
				}
				var err error
				if write {
					_, err = t.WriteAt(buf, off)
				} else {
					_, err = t.ReadAt(buf, off)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
}

// flusher is a target that can make its writes durable.
type flusher interface {
	benchTarget
	Flush() error
}

type plainFile struct{ *storage.FileDevice }

func (p plainFile) Flush() error { return p.Sync() }

// BenchmarkStoreFlush measures 4 KiB random writes with a flush (store:
// a commit; plain: fsync) after every 64 writes, single stream: the cost
// of durability rather than of the page cache.
func BenchmarkStoreFlush(b *testing.B) {
	dir := b.TempDir()
	s := newBenchStore(b, dir, "backing", storage.OpenOptions{})
	plainDev, err := storage.CreateFileDevice(filepath.Join(dir, "plain"), benchSize)
	if err != nil {
		b.Fatal(err)
	}
	defer plainDev.Close()
	for round := 0; round < benchRounds(b); round++ {
		for _, tgt := range []struct {
			name string
			t    flusher
		}{{"plain", plainFile{plainDev}}, {"store", s}} {
			benchFlush(b, tgt.name, tgt.t)
		}
	}
	for round := 0; round < benchRounds(b); round++ {
		for _, tgt := range []struct {
			name string
			t    flusher
		}{{"plain", plainFile{plainDev}}, {"store", s}} {
			benchFlushLoop(b, tgt.name, tgt.t)
		}
	}
}

// benchFlushLoop is 4 KiB random writes from 4 goroutines while a fifth
// flushes back to back (store: commits; plain: fsync): how much writes
// are held up by flushes.
func benchFlushLoop(b *testing.B, name string, t flusher) {
	b.Run("randwrite4K-conc4-flushloop/"+name, func(b *testing.B) {
		b.SetBytes(4096)
		var ops atomic.Int64
		ops.Store(int64(b.N))
		stop := make(chan struct{})
		flushErr := make(chan error, 1)
		go func() {
			for {
				select {
				case <-stop:
					flushErr <- nil
					return
				default:
				}
				if err := t.Flush(); err != nil {
					flushErr <- err
					return
				}
			}
		}()
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(w), 5))
				buf := make([]byte, 4096)
				for ops.Add(-1) >= 0 {
					if _, err := t.WriteAt(buf, r.Int64N(benchSize/4096)*4096); err != nil {
						b.Error(err)
						return
					}
				}
			}(w)
		}
		wg.Wait()
		close(stop)
		if err := <-flushErr; err != nil {
			b.Fatal(err)
		}
	})
}

func benchFlush(b *testing.B, name string, t flusher) {
	b.Run("randwrite4K-flush64/"+name, func(b *testing.B) {
		b.SetBytes(4096)
		r := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 4096)
		for i := 0; i < b.N; i++ {
			if _, err := t.WriteAt(buf, r.Int64N(benchSize/4096)*4096); err != nil {
				b.Fatal(err)
			}
			if i%64 == 63 {
				if err := t.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// benchRounds is how many alternating plain/store rounds each benchmark
// runs: STORAGE_BENCH_ROUNDS, default 1.
func benchRounds(b *testing.B) int {
	v := os.Getenv("STORAGE_BENCH_ROUNDS")
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("bad STORAGE_BENCH_ROUNDS %q", v)
	}
	return n
}

// BenchmarkStoreMetaMiss is 4 KiB random reads from stores whose metadata
// cache (256 KiB, ~56 nodes) holds a fifth of the 256 leaves, so most
// reads first load and authenticate a leaf: the case of a store much
// larger than what its cache covers. Targets: plain (the twin file),
// store (mapped reads) and store-pread (NoMmap), side by side.
func BenchmarkStoreMetaMiss(b *testing.B) {
	dir := b.TempDir()
	const cache = 256 << 10
	s := newBenchStore(b, dir, "backing", storage.OpenOptions{CacheBytes: cache})
	sp := newBenchStore(b, dir, "backing-pread", storage.OpenOptions{CacheBytes: cache, NoMmap: true})
	plainDev, err := storage.CreateFileDevice(filepath.Join(dir, "plain"), 2*benchSize+8<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer plainDev.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for _, t := range []benchTarget{s, sp, plainDev} {
		for off := int64(0); off < benchSize; off += int64(len(buf)) {
			if _, err := t.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, st := range []*storage.Store{s, sp} {
		if err := st.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	for _, conc := range []int{1, 4} {
		for round := 0; round < benchRounds(b); round++ {
			for _, tgt := range []struct {
				name string
				t    benchTarget
			}{{"plain", plainDev.File}, {"store", s}, {"store-pread", sp}} {
				b.Run(fmt.Sprintf("randread4K-cache256K/conc=%d/%s", conc, tgt.name), func(b *testing.B) {
					runBench(b, tgt.t, 4096, true, false, conc)
				})
			}
		}
	}
}
