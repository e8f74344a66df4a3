package storage_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

var pristine struct {
	once sync.Once
	img  []byte
	data []byte // the store's plaintext
	err  error
}

// pristineImage is a small formatted store with some data, built once.
func pristineImage() ([]byte, []byte, error) {
	pristine.once.Do(func() {
		dev := newMemDevice(700 * storage.BlockSize)
		s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: 300 * storage.BlockSize})
		if err != nil {
			pristine.err = err
			return
		}
		data := make([]byte, s.Size())
		copy(data[4096*3:], fill(1, 10*4096))
		copy(data[4096*200:], fill(2, 3*4096+100))
		for _, off := range []int64{4096 * 3, 4096 * 200} {
			if _, err := s.WriteAt(data[off:off+13*4096], off); err != nil {
				pristine.err = err
				return
			}
		}
		// Rewrap commits twice: both superblock copies then describe the
		// same data, so falling back to the older copy (as after a torn
		// superblock write) still reads the original plaintext.
		if err := s.Rewrap(testKEK); err != nil {
			pristine.err = err
			return
		}
		if err := s.Close(); err != nil {
			pristine.err = err
			return
		}
		pristine.img, pristine.data = dev.snapshot(), data
	})
	return pristine.img, pristine.data, pristine.err
}

// FuzzTamperedImage overwrites bytes anywhere in a valid store image and
// checks that opening and reading it never panics and never returns
// anything but the original plaintext or an error.
func FuzzTamperedImage(f *testing.F) {
	f.Fuzz(func(t *testing.T, at uint32, patch []byte) {
		img, data, err := pristineImage()
		if err != nil {
			t.Fatal(err)
		}
		dev := newMemDevice(int64(len(img)))
		b := append([]byte(nil), img...)
		copy(b[int(at)%len(b):], patch)
		dev.restore(b)
		s, err := storage.Open(dev, storage.OpenOptions{KEK: testKEK, ReadOnly: true, Logger: discardLogger()})
		if err != nil {
			return
		}
		defer s.Close()
		buf := make([]byte, 4096)
		for off := int64(0); off < s.Size(); off += 4096 {
			if _, err := s.ReadAt(buf, off); err != nil {
				if !errors.Is(err, storage.ErrIntegrity) {
					t.Fatalf("read at %d: unexpected error %v", off, err)
				}
				continue
			}
			if !bytes.Equal(buf, data[off:off+4096]) {
				t.Fatalf("read at %d returned bytes that are not the original", off)
			}
		}
		if _, err := s.Verify(); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	})
}
