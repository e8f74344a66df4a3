package storage_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

var testKEK = bytes.Repeat([]byte{0x42}, storage.KEKSize)

func newStore(t *testing.T, devSize int64, opts storage.FormatOptions) (*storage.Store, *memDevice) {
	t.Helper()
	dev := newMemDevice(devSize)
	if opts.KEK == nil {
		opts.KEK = testKEK
	}
	s, err := storage.Format(dev, opts)
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dev
}

func fill(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestReadWriteRoundTrip(t *testing.T) {
	s, _ := newStore(t, 8<<20, storage.FormatOptions{})
	size := s.Size()
	if size <= 0 || size%storage.BlockSize != 0 {
		t.Fatalf("Size = %d", size)
	}
	model := make([]byte, size)
	tests := []struct {
		name string
		off  int64
		n    int
	}{
		{"aligned block", 0, 4096},
		{"aligned multi", 8192, 3 * 4096},
		{"sub-block head", 100, 200},
		{"crossing blocks", 4000, 5000},
		{"large unaligned", 12345, 1<<20 + 777},
		{"last bytes", size - 10, 10},
		{"one byte", 77777, 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := fill(uint64(i), tc.n)
			if n, err := s.WriteAt(data, tc.off); err != nil || n != tc.n {
				t.Fatalf("WriteAt = %d, %v", n, err)
			}
			copy(model[tc.off:], data)
			got := make([]byte, tc.n+9000)
			off := max(0, tc.off-4500)
			end := min(size, off+int64(len(got)))
			got = got[:end-off]
			if n, err := s.ReadAt(got, off); err != nil || n != len(got) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, model[off:end]) {
				t.Fatalf("read back differs")
			}
		})
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	all := make([]byte, size)
	if _, err := s.ReadAt(all, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, model) {
		t.Fatal("whole store differs from model")
	}
	if _, err := s.ReadAt(make([]byte, 10), size); err != io.EOF {
		t.Fatalf("read at end: %v, want io.EOF", err)
	}
	if _, err := s.WriteAt(make([]byte, 10), size-5); !errors.Is(err, storage.ErrOutOfRange) {
		t.Fatalf("write past end: %v", err)
	}
}

func TestReopenAndCounter(t *testing.T) {
	dir := t.TempDir()
	ctr := storage.NewFileCounter(filepath.Join(dir, "ctr"))
	dev := newMemDevice(4 << 20)
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Counter: ctr})
	if err != nil {
		t.Fatal(err)
	}
	data := fill(7, 3*4096+5)
	if _, err := s.WriteAt(data, 1000); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	old := dev.snapshot()
	s, err = storage.Open(dev, storage.OpenOptions{KEK: testKEK, Counter: ctr})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 1000); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after reopen: %v, equal=%v", err, bytes.Equal(got, data))
	}
	s.Close()
	if _, err := storage.Open(dev, storage.OpenOptions{KEK: bytes.Repeat([]byte{1}, 32)}); !errors.Is(err, storage.ErrKey) {
		t.Fatalf("wrong KEK: %v, want ErrKey", err)
	}
	// Replaying the older image is a rollback.
	dev.restore(old)
	if _, err := storage.Open(dev, storage.OpenOptions{KEK: testKEK, Counter: ctr}); !errors.Is(err, storage.ErrRollback) {
		t.Fatalf("rolled-back image: %v, want ErrRollback", err)
	}
}

func TestConcurrentSubBlockWrites(t *testing.T) {
	s, _ := newStore(t, 4<<20, storage.FormatOptions{})
	// Many goroutines write distinct bytes of the same few blocks; every
	// byte must survive (read-modify-write under the block lock).
	const workers, per = 8, 512
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				off := int64(i*workers + w)
				if _, err := s.WriteAt([]byte{byte(w + 1)}, off); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, workers*per)
		for i := 0; i < 50; i++ {
			if _, err := s.ReadAt(buf, 0); err != nil {
				t.Error(err)
				return
			}
			if i%10 == 0 {
				if err := s.Flush(); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	wg.Wait()
	got := make([]byte, workers*per)
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if want := byte(i%workers + 1); b != want {
			t.Fatalf("byte %d = %d, want %d", i, b, want)
		}
	}
}

func TestTrimZeroesBlockStatus(t *testing.T) {
	s, _ := newStore(t, 16<<20, storage.FormatOptions{})
	size := s.Size()
	ext, err := s.BlockStatus(0, size)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || !ext[0].Zero || ext[0].Length != size {
		t.Fatalf("fresh store status = %+v, want one hole", ext)
	}
	data := fill(3, 10*4096)
	if _, err := s.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := s.Trim(3*4096+1, 3*4096); err != nil { // end of 3, blocks 4 and 5, start of 6
		t.Fatal(err)
	}
	if err := s.Cache(0, size); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteZeroes(8*4096+100, 4096); err != nil { // tail of 8, head of 9
		t.Fatal(err)
	}
	copy(data[2*4096+1:5*4096+1], make([]byte, 3*4096))
	copy(data[7*4096+100:8*4096+100], make([]byte, 4096))
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("contents after trim/zeroes differ")
	}
	ext, err = s.BlockStatus(0, 16*4096)
	if err != nil {
		t.Fatal(err)
	}
	want := []storage.Extent{
		{Offset: 0, Length: 4096, Zero: true},
		{Offset: 4096, Length: 3 * 4096},
		{Offset: 4 * 4096, Length: 2 * 4096, Zero: true},
		{Offset: 6 * 4096, Length: 5 * 4096},
		{Offset: 11 * 4096, Length: 5 * 4096, Zero: true},
	}
	if len(ext) != len(want) {
		t.Fatalf("status = %+v, want %+v", ext, want)
	}
	for i := range want {
		if ext[i] != want[i] {
			t.Fatalf("status = %+v, want %+v", ext, want)
		}
	}
	if err := s.Trim(0, size); err != nil {
		t.Fatal(err)
	}
	if ext, _ = s.BlockStatus(0, size); len(ext) != 1 || !ext[0].Zero {
		t.Fatalf("after full trim: %+v", ext)
	}
}

func TestRecoveryKeyAndRewrap(t *testing.T) {
	sk, err := storage.GenerateRecoveryKey()
	if err != nil {
		t.Fatal(err)
	}
	pemPub := storage.MarshalRecoveryPublicKey(sk.PublicKey())
	pemPriv, err := storage.MarshalRecoveryPrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := storage.ParseRecoveryPublicKey(pemPub)
	if err != nil {
		t.Fatal(err)
	}
	dev := newMemDevice(4 << 20)
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Recovery: pub})
	if err != nil {
		t.Fatal(err)
	}
	data := fill(9, 5000)
	if _, err := s.WriteAt(data, 123); err != nil {
		t.Fatal(err)
	}
	newKEK := bytes.Repeat([]byte{7}, 32)
	if err := s.Rewrap(newKEK); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := storage.Open(dev, storage.OpenOptions{KEK: testKEK}); !errors.Is(err, storage.ErrKey) {
		t.Fatalf("old KEK after rewrap: %v, want ErrKey", err)
	}
	priv, err := storage.ParseRecoveryPrivateKey(pemPriv)
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]storage.OpenOptions{
		"new KEK":  {KEK: newKEK, ReadOnly: true},
		"recovery": {Recovery: priv, ReadOnly: true},
	} {
		s, err := storage.Open(dev, o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := make([]byte, len(data))
		if _, err := s.ReadAt(got, 123); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read %v equal=%v", name, err, bytes.Equal(got, data))
		}
		if _, err := s.WriteAt(got, 0); !errors.Is(err, storage.ErrReadOnly) {
			t.Fatalf("%s: write to read-only: %v", name, err)
		}
		s.Close()
	}
}

// TestConcurrentMixed runs writers, trimmers, readers, status queries and
// flushes at once over a tiny metadata cache (constant eviction and early
// commits); each worker owns a region and checks it against its model,
// during the run and after a reopen.
func TestConcurrentMixed(t *testing.T) {
	const workers, region = 6, 300 * storage.BlockSize // regions span leaves
	// A nonce reservation barely above one chunk: concurrent writers run
	// out of reserved nonces and retry after a commit.
	defer storage.SetNonceReserve(260)()
	dev := newMemDevice(16 << 20)
	opts := storage.OpenOptions{KEK: testKEK, CacheBytes: 1, Logger: discardLogger()}
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: workers * region, Open: opts})
	if err != nil {
		t.Fatal(err)
	}
	models := make([][]byte, workers)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var aux sync.WaitGroup
	aux.Add(1)
	go func() { // flusher and status poller
		defer aux.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.Flush(); err != nil {
				t.Error(err)
				return
			}
			if _, err := s.BlockStatus(0, s.Size()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 77))
			base := int64(w) * region
			model := make([]byte, region)
			models[w] = model
			buf := make([]byte, 3*storage.BlockSize)
			for i := 0; i < 300; i++ {
				off := r.Int64N(region)
				n := min(1+r.Int64N(3*storage.BlockSize), region-off)
				switch r.IntN(4) {
				case 0, 1:
					d := fill(uint64(w*1000+i), int(n))
					if _, err := s.WriteAt(d, base+off); err != nil {
						t.Error(err)
						return
					}
					copy(model[off:], d)
				case 2:
					if err := s.Trim(base+off, n); err != nil {
						t.Error(err)
						return
					}
					clear(model[off : off+n])
				default:
					if _, err := s.ReadAt(buf[:n], base+off); err != nil {
						t.Error(err)
						return
					}
					if !bytes.Equal(buf[:n], model[off:off+n]) {
						t.Errorf("worker %d: read at %d differs from model", w, off)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	aux.Wait()
	if t.Failed() {
		return
	}
	if st := s.Stats(); st.Commits < 2 || st.IntegrityFailures != 0 {
		t.Fatalf("stats = %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = storage.Open(dev, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make([]byte, region)
	for w := range models {
		if _, err := s.ReadAt(got, int64(w)*region); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, models[w]) {
			t.Fatalf("region %d differs after reopen", w)
		}
	}
	if bad, err := s.Verify(); err != nil || len(bad) != 0 {
		t.Fatalf("Verify = %v, %v", bad, err)
	}
}
