package appliance_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/storage"
)

func testShares(labels ...string) appliance.SealedShares {
	s := appliance.SealedShares{Set: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, ByRelease: map[string][]byte{}}
	for _, l := range labels {
		s.ByRelease[l] = []byte("sealed to " + l)
	}
	return s
}

func sameShares(a, b appliance.SealedShares) bool {
	return a.Set == b.Set && maps.EqualFunc(a.ByRelease, b.ByRelease, bytes.Equal)
}

func TestHeaderRoundTrip(t *testing.T) {
	disk := newMemDevice(1 << 16)
	if _, err := appliance.ReadHeader(disk, 8192); !errors.Is(err, appliance.ErrNoHeader) {
		t.Fatalf("blank disk: %v, want ErrNoHeader", err)
	}
	shares := testShares("embassy-appliance 2026.11", "embassy-appliance 2026.12", "embassy-appliance 2027.01 ünïcode")
	shares.ByRelease["embassy-appliance 2026.12"] = bytes.Repeat([]byte("sealed"), 100)
	if err := appliance.WriteHeader(disk, appliance.Header{Epoch: 3, Sealed: shares}, 8192); err != nil {
		t.Fatal(err)
	}
	got, err := appliance.ReadHeader(disk, 8192)
	if err != nil || !sameShares(got.Sealed, shares) || got.Epoch != 3 {
		t.Fatalf("ReadHeader = %+v, %v", got, err)
	}
	if len(got.Sealed.ByRelease) != 3 {
		t.Fatalf("%d releases, want 3", len(got.Sealed.ByRelease))
	}
	if err := appliance.UpdateHeaderEpoch(disk, 9, 8192); err != nil {
		t.Fatal(err)
	}
	if got, err := appliance.ReadHeader(disk, 8192); err != nil || got.Epoch != 9 || !sameShares(got.Sealed, shares) {
		t.Fatalf("after UpdateHeaderEpoch: %+v, %v", got, err)
	}
	// Flip a payload byte: the checksum catches it.
	disk.buf[100] ^= 1
	if _, err := appliance.ReadHeader(disk, 8192); !errors.Is(err, appliance.ErrBadHeader) {
		t.Fatalf("corrupt header: %v, want ErrBadHeader", err)
	}
	big := testShares("r")
	big.ByRelease["r"] = make([]byte, 9000)
	if err := appliance.WriteHeader(disk, appliance.Header{Sealed: big}, 8192); err == nil {
		t.Error("oversized payload accepted")
	}
}

// TestEncodeHeaderRefuses: what ParseHeader would refuse is not written.
func TestEncodeHeaderRefuses(t *testing.T) {
	for name, s := range map[string]appliance.SealedShares{
		"no releases":   testShares(),
		"nil map":       {},
		"empty label":   {ByRelease: map[string][]byte{"": []byte("x")}},
		"long label":    {ByRelease: map[string][]byte{strings.Repeat("l", 256): []byte("x")}},
		"invalid UTF-8": {ByRelease: map[string][]byte{"\xff": []byte("x")}},
		"empty blob":    {ByRelease: map[string][]byte{"r": nil}},
	} {
		if _, err := appliance.EncodeHeader(appliance.Header{Sealed: s}, 4096); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	if _, err := appliance.EncodeHeader(appliance.Header{Sealed: testShares(strings.Repeat("l", 255))}, 4096); err != nil {
		t.Errorf("255-byte label refused: %v", err)
	}
}

// rawHeader lays out a header of the given version around payload with a
// correct checksum, so that malformed payloads reach the payload parser.
func rawHeader(version uint32, epoch uint64, payload []byte) []byte {
	b := make([]byte, 56, 56+len(payload))
	copy(b, "EMBHDR\x00\x01")
	binary.BigEndian.PutUint32(b[8:], version)
	binary.BigEndian.PutUint32(b[12:], uint32(len(payload)))
	binary.BigEndian.PutUint64(b[16:], epoch)
	b = append(b, payload...)
	h := sha256.New()
	h.Write(b[16:24])
	h.Write(payload)
	copy(b[24:], h.Sum(nil))
	return b
}

// entries builds a payload: the set id, the count and the given entries.
func entries(count uint16, kv ...string) []byte {
	p := make([]byte, 16, 64)
	p = binary.BigEndian.AppendUint16(p, count)
	for i := 0; i+1 < len(kv); i += 2 {
		p = binary.BigEndian.AppendUint16(p, uint16(len(kv[i])))
		p = append(p, kv[i]...)
		p = binary.BigEndian.AppendUint32(p, uint32(len(kv[i+1])))
		p = append(p, kv[i+1]...)
	}
	return p
}

func TestParseHeaderMalformed(t *testing.T) {
	valid := entries(2, "a", "blob-a", "b", "blob-b")
	if h, err := appliance.ParseHeader(rawHeader(2, 4, valid)); err != nil || h.Epoch != 4 || len(h.Sealed.ByRelease) != 2 {
		t.Fatalf("the valid raw header: %+v, %v", h, err)
	}
	for _, tc := range []struct {
		name   string
		region []byte
		want   string
	}{
		{"zero entries", rawHeader(2, 1, entries(0)), "no sealed local share"},
		{"duplicate labels", rawHeader(2, 1, entries(2, "a", "x", "a", "y")), "listed twice"},
		{"unsorted labels", rawHeader(2, 1, entries(2, "b", "x", "a", "y")), "not sorted"},
		{"trailing bytes", rawHeader(2, 1, append(entries(1, "a", "x"), 0)), "after the last entry"},
		{"count past the entries", rawHeader(2, 1, entries(3, "a", "x", "b", "y")), "past the payload"},
		{"label length past the payload", rawHeader(2, 1, append(entries(1), 0, 9, 'a')), "label of 9 bytes past the payload"},
		{"blob length past the payload", rawHeader(2, 1, append(entries(1, "a", "x")[:len(entries(1, "a", "x"))-5], 0, 0, 0, 9, 'x')), "blob of 9 bytes past the payload"},
		{"empty label", rawHeader(2, 1, entries(1, "", "x")), "release label"},
		{"invalid UTF-8 label", rawHeader(2, 1, entries(1, "\xff", "x")), "release label"},
		{"empty blob", rawHeader(2, 1, entries(1, "a", "")), "empty sealed share"},
		{"short payload", rawHeader(2, 1, make([]byte, 17)), "shorter than set id and count"},
		{"payload length past the region", rawHeader(2, 1, valid)[:60], "exceeds the region"},
		{"unknown version", rawHeader(3, 1, valid), "version 3"},
		{"bad magic", append([]byte("EMBHDR\x00\x02"), rawHeader(2, 1, valid)[8:]...), "bad magic"},
		{"short region", []byte("EMBHDR"), "6 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := appliance.ParseHeader(tc.region)
			if !errors.Is(err, appliance.ErrBadHeader) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrBadHeader mentioning %q", err, tc.want)
			}
			if errors.Is(err, appliance.ErrHeaderVersion) {
				t.Error("a malformed header reported as version 1")
			}
		})
	}
}

// TestHeaderVersion1Refused: a header written before threshold key grants
// (version 1: the sealed share as the whole payload) is ErrHeaderVersion,
// not a corrupt header, and says what to do.
func TestHeaderVersion1Refused(t *testing.T) {
	_, err := appliance.ParseHeader(rawHeader(1, 7, []byte("sealed share blob")))
	if !errors.Is(err, appliance.ErrHeaderVersion) {
		t.Fatalf("err = %v, want ErrHeaderVersion", err)
	}
	if errors.Is(err, appliance.ErrBadHeader) || errors.Is(err, appliance.ErrNoHeader) {
		t.Errorf("version 1 also reported as corrupt or blank: %v", err)
	}
	for _, want := range []string{"version 1", "before threshold key grants", "re-provisioned"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}

func TestAddSealed(t *testing.T) {
	disk := newMemDevice(1 << 16)
	if err := appliance.AddSealed(disk, map[string][]byte{"r": []byte("x")}, 8192); !errors.Is(err, appliance.ErrNoHeader) {
		t.Fatalf("AddSealed on a blank disk: %v, want ErrNoHeader", err)
	}
	shares := testShares("r1", "r2")
	if err := appliance.WriteHeader(disk, appliance.Header{Epoch: 5, Sealed: shares}, 8192); err != nil {
		t.Fatal(err)
	}
	before := bytes.Clone(disk.buf)
	for _, blobs := range []map[string][]byte{nil, {}, {"r1": []byte("sealed to r1")}} {
		if err := appliance.AddSealed(disk, blobs, 8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(disk.buf, before) {
			t.Fatalf("AddSealed(%v) changed the disk", blobs)
		}
	}
	if err := appliance.AddSealed(disk, map[string][]byte{"r3": []byte("new"), "r2": []byte("resealed")}, 8192); err != nil {
		t.Fatal(err)
	}
	got, err := appliance.ReadHeader(disk, 8192)
	if err != nil {
		t.Fatal(err)
	}
	want := testShares("r1")
	want.ByRelease["r2"] = []byte("resealed")
	want.ByRelease["r3"] = []byte("new")
	if got.Epoch != 5 || !sameShares(got.Sealed, want) {
		t.Fatalf("after AddSealed: %+v, want epoch 5 and %+v", got, want)
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

// FuzzParseHeader: ParseHeader never panics, fails only with its typed
// errors, and whatever it accepts re-encodes to the same bytes and parses
// to the same header.
func FuzzParseHeader(f *testing.F) {
	good, err := appliance.EncodeHeader(appliance.Header{Epoch: 5, Sealed: testShares("r1", "r2", "r3")}, 4096)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(make([]byte, 64))
	f.Add([]byte("EMBHDR\x00\x01\x00\x00\x00\x02\xff\xff\xff\xff"))
	f.Add(rawHeader(1, 7, []byte("sealed share blob")))
	f.Add(rawHeader(2, 1, entries(2, "a", "x", "a", "y")))
	f.Fuzz(func(t *testing.T, region []byte) {
		h, err := appliance.ParseHeader(region)
		if err != nil {
			if !errors.Is(err, appliance.ErrBadHeader) && !errors.Is(err, appliance.ErrNoHeader) && !errors.Is(err, appliance.ErrHeaderVersion) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		enc, err := appliance.EncodeHeader(h, int64(len(region)))
		if err != nil {
			t.Fatalf("an accepted header does not encode: %v", err)
		}
		if !bytes.Equal(enc, region[:len(enc)]) {
			t.Fatal("accepted header does not re-encode to itself")
		}
		h2, err := appliance.ParseHeader(enc)
		if err != nil || h2.Epoch != h.Epoch || !sameShares(h2.Sealed, h.Sealed) {
			t.Fatalf("re-encoded header parses to %+v, %v; want %+v", h2, err, h)
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
