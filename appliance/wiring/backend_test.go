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

// newBackend formats a store of size bytes in a temp file and returns it
// through the adapter, and the store itself.
func newBackend(t *testing.T, size int64) (wiring.StoreBackend, *storage.Store) {
	t.Helper()
	dev, err := storage.CreateFileDevice(filepath.Join(t.TempDir(), "disk.img"), 2*size+size/16+16<<20)
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, storage.KEKSize)
	rand.Read(kek)
	st, err := storage.Format(dev, storage.FormatOptions{KEK: kek, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st.Close()
		dev.Close()
	})
	return wiring.StoreBackend{Store: st}, st
}

// TestStoreBackend checks that the adapter passes data through and
// reports the store's extents unchanged.
func TestStoreBackend(t *testing.T) {
	be, st := newBackend(t, 4<<20)
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
	if err := be.Trim(4<<20, storage.BlockSize); !errors.Is(err, storage.ErrOutOfRange) || errors.Is(err, nbd.ErrIntegrity) {
		t.Errorf("trim beyond the end: %v", err)
	}
}

// TestStoreBackendAllocations checks that the adapter adds no allocation
// to reads, writes and block status.
func TestStoreBackendAllocations(t *testing.T) {
	be, st := newBackend(t, 4<<20)
	buf := make([]byte, 64<<10)
	rand.Read(buf)
	if _, err := st.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name            string
		adapter, direct func()
	}{
		{"ReadAt", func() { be.ReadAt(buf, 0) }, func() { st.ReadAt(buf, 0) }},
		{"WriteAt", func() { be.WriteAt(buf, 0) }, func() { st.WriteAt(buf, 0) }},
		{"BlockStatus", func() { be.BlockStatus(0, 1<<20) }, func() { st.BlockStatus(0, 1<<20) }},
	} {
		c.direct() // warm pools and caches
		direct := testing.AllocsPerRun(50, c.direct)
		adapter := testing.AllocsPerRun(50, c.adapter)
		if adapter > direct {
			t.Errorf("%s: %.1f allocations through the adapter, %.1f directly", c.name, adapter, direct)
		}
	}
}
