package main

import (
	"path/filepath"
	"syscall"
	"testing"
)

// TestStoreFormatAllocates checks that `store format --create` reserves the
// whole file, so that the store cannot run out of space later, and that
// --sparse leaves it sparse.
func TestStoreFormatAllocates(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	if code, _, errs := runCLI(t, "store", "keygen", "--kek", kek); code != 0 {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	const size = 8 << 20
	for _, tc := range []struct {
		name   string
		sparse bool
	}{{"allocated.img", false}, {"sparse.img", true}} {
		img := filepath.Join(dir, tc.name)
		args := []string{"store", "format", "--kek", kek, "--create", "8M", img}
		if tc.sparse {
			args = append(args[:len(args)-1], "--sparse", img)
		}
		if code, _, errs := runCLI(t, args...); code != 0 {
			t.Fatalf("%s: exit %d: %s", tc.name, code, errs)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(img, &st); err != nil {
			t.Fatal(err)
		}
		if allocated := st.Blocks * 512; (allocated >= size) == tc.sparse {
			t.Errorf("%s: %d of %d bytes allocated", tc.name, allocated, size)
		}
	}
	if code, _, _ := runCLI(t, "store", "format", "--kek", kek, "--sparse", filepath.Join(dir, "allocated.img")); code != 2 {
		t.Errorf("--sparse without --create: exit %d, want 2", code)
	}
}
