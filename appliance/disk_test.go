package appliance_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/storage"
)

func TestHeaderRoundTrip(t *testing.T) {
	disk := newMemDevice(1 << 16)
	if _, err := appliance.ReadHeader(disk, 8192); !errors.Is(err, appliance.ErrNoHeader) {
		t.Fatalf("blank disk: %v, want ErrNoHeader", err)
	}
	payload := bytes.Repeat([]byte("sealed"), 100)
	if err := appliance.WriteHeader(disk, appliance.Header{Epoch: 3, SealedLocal: payload}, 8192); err != nil {
		t.Fatal(err)
	}
	got, err := appliance.ReadHeader(disk, 8192)
	if err != nil || !bytes.Equal(got.SealedLocal, payload) || got.Epoch != 3 {
		t.Fatalf("ReadHeader = %+v, %v", got, err)
	}
	if err := appliance.UpdateHeaderEpoch(disk, 9, 8192); err != nil {
		t.Fatal(err)
	}
	if got, err := appliance.ReadHeader(disk, 8192); err != nil || got.Epoch != 9 || !bytes.Equal(got.SealedLocal, payload) {
		t.Fatalf("after UpdateHeaderEpoch: %+v, %v", got, err)
	}
	// Flip a payload byte: the checksum catches it.
	disk.buf[100] ^= 1
	if _, err := appliance.ReadHeader(disk, 8192); !errors.Is(err, appliance.ErrBadHeader) {
		t.Fatalf("corrupt header: %v, want ErrBadHeader", err)
	}
	if err := appliance.WriteHeader(disk, appliance.Header{SealedLocal: make([]byte, 9000)}, 8192); err == nil {
		t.Error("oversized payload accepted")
	}
}

func TestWindow(t *testing.T) {
	disk := newMemDevice(8192)
	w, err := appliance.NewWindow(disk, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := w.Size(); n != 4096 {
		t.Fatalf("size %d", n)
	}
	if _, err := w.WriteAt([]byte("abc"), 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk.buf[4096:4099], []byte("abc")) {
		t.Error("window write not at the offset")
	}
	for _, tc := range []struct {
		off int64
		n   int
	}{{-1, 1}, {4096, 1}, {4090, 10}} {
		if _, err := w.ReadAt(make([]byte, tc.n), tc.off); !errors.Is(err, appliance.ErrOutOfRange) {
			t.Errorf("ReadAt(%d, %d) = %v, want ErrOutOfRange", tc.n, tc.off, err)
		}
		if _, err := w.WriteAt(make([]byte, tc.n), tc.off); !errors.Is(err, appliance.ErrOutOfRange) {
			t.Errorf("WriteAt(%d, %d) = %v, want ErrOutOfRange", tc.n, tc.off, err)
		}
	}
	if _, err := appliance.NewWindow(disk, 8192); err == nil {
		t.Error("window past the end accepted")
	}
}

func FuzzParseHeader(f *testing.F) {
	good, _ := appliance.EncodeHeader(appliance.Header{Epoch: 5, SealedLocal: []byte("sealed share")}, 4096)
	f.Add(good)
	f.Add(make([]byte, 64))
	f.Add([]byte("EMBHDR\x00\x01\x00\x00\x00\x01\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, region []byte) {
		h, err := appliance.ParseHeader(region)
		if err != nil {
			if !errors.Is(err, appliance.ErrBadHeader) && !errors.Is(err, appliance.ErrNoHeader) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		enc, err := appliance.EncodeHeader(h, int64(len(region)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, region[:len(enc)]) {
			t.Fatal("accepted header does not re-encode to itself")
		}
	})
}

// TestWindowBackingFile: the store's window over a file-backed data disk
// exposes the file at the window's offset, so the store can map it (the
// store itself declines offsets that are not page-aligned:
// storage.TestMappedRegionOfFile); over anything else it exposes no file.
func TestWindowBackingFile(t *testing.T) {
	dev, err := storage.CreateFileDevice(filepath.Join(t.TempDir(), "disk"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	for _, tc := range []struct {
		name    string
		dev     appliance.Device
		offset  int64
		mapped  bool
		wantOff int64
	}{
		{"file, aligned header", dev, 8192, true, 8192},
		{"file, misaligned header", dev, 8192 + 512, true, 8192 + 512},
		{"not a file", newMemDevice(1 << 20), 8192, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := appliance.NewWindow(tc.dev, tc.offset)
			if err != nil {
				t.Fatal(err)
			}
			var fb storage.FileBacked = w
			f, off := fb.BackingFile()
			if (f != nil) != tc.mapped || off != tc.wantOff {
				t.Fatalf("BackingFile = %v, %d; want a file %v at %d", f, off, tc.mapped, tc.wantOff)
			}
		})
	}
}
