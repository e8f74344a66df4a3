package wiring_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/appliance/wiring"
	"github.com/dataembassy/embassy/storage"
	"github.com/dataembassy/embassy/storage/nbd"
)

// newStore formats a store on a 64 MiB file with wiring.Storage, as the
// appliance does, and returns it with its KEK.
func newStore(t *testing.T) (*storage.Store, []byte) {
	t.Helper()
	kek := make([]byte, storage.KEKSize)
	rand.Read(kek)
	dev, err := storage.CreateFileDevice(filepath.Join(t.TempDir(), "disk.img"), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	st, err := (&wiring.Storage{}).Format(dev, kek)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.(*storage.Store), kek
}

// newBackend returns a new store through the adapter, and the store.
func newBackend(t *testing.T) (wiring.StoreBackend, *storage.Store) {
	st, _ := newStore(t)
	return wiring.StoreBackend{Store: st}, st
}

// TestStoreBackend checks that the adapter passes data through and
// reports the store's extents unchanged.
func TestStoreBackend(t *testing.T) {
	be, st := newBackend(t)
	data := bytes.Repeat([]byte{0x5a}, 3*storage.BlockSize)
	if _, err := be.WriteAt(data, 8*storage.BlockSize); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := be.ReadAt(got, 8*storage.BlockSize); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back through the adapter: %v, equal %v", err, bytes.Equal(got, data))
	}
	want, err := st.BlockStatus(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ext, err := be.BlockStatus(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != len(want) || len(ext) < 3 {
		t.Fatalf("extents %v, store says %v", ext, want)
	}
	for i, e := range want {
		if ext[i] != (nbd.Extent{Offset: e.Offset, Length: e.Length, Zero: e.Zero}) {
			t.Errorf("extent %d: %+v, store says %+v", i, ext[i], e)
		}
	}
	if ext[1] != (nbd.Extent{Offset: 8 * storage.BlockSize, Length: 3 * storage.BlockSize}) {
		t.Errorf("written range reported as %+v", ext[1])
	}
	// Errors that are not about integrity are passed on as they are.
	if err := be.Trim(be.Size(), storage.BlockSize); !errors.Is(err, storage.ErrOutOfRange) || errors.Is(err, nbd.ErrIntegrity) {
		t.Errorf("trim beyond the end: %v", err)
	}
}
