package predict_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/images/uki"
)

// Digests below were read from the TCG event log of a real OVMF + systemd
// 252 + Linux 6.1 boot (see docs/disk-image.md).
func TestKnownDigests(t *testing.T) {
	if got := hex.EncodeToString(predict.LoadOptionsDigest("console=ttyS0 panic=-1")); got != "cd773142715a513b8406e91e9b1c18c1917791d3801c3cb15b19ca73b0c2d66d" {
		t.Errorf("LoadOptionsDigest = %s", got)
	}
}

func TestReplay(t *testing.T) {
	d := sha256.Sum256([]byte("x"))
	got := predict.Replay([]predict.Event{{PCR: 4, Digest: d[:]}, {PCR: 4, Digest: d[:]}}, 4, 12)
	h := sha256.Sum256(append(make([]byte, 32), d[:]...))
	h = sha256.Sum256(append(h[:], d[:]...))
	if !bytes.Equal(got[4], h[:]) {
		t.Errorf("PCR 4 = %x, want %x", got[4], h)
	}
	if !bytes.Equal(got[12], make([]byte, 32)) {
		t.Errorf("untouched PCR 12 = %x, want zeros", got[12])
	}
}

func testUKI(t *testing.T, cmdline string) []byte {
	t.Helper()
	stub, err := os.ReadFile(uki.DefaultStubPath)
	if err != nil {
		t.Fatal(err)
	}
	// Any PE works as the kernel for prediction purposes: use the stub.
	img, err := uki.Build(uki.Options{Stub: stub, Linux: stub, Initrd: []byte("initrd"), Cmdline: cmdline, OSRelease: "ID=x\n"})
	if err != nil {
		t.Fatal(err)
	}
	return img.Bytes
}

func TestUKIEvents(t *testing.T) {
	img := testUKI(t, "console=ttyS0 panic=-1")
	ev, err := predict.UKIEvents(img, predict.Options{})
	if err != nil {
		t.Fatal(err)
	}
	count := map[int]int{}
	for _, e := range ev {
		count[e.PCR]++
	}
	// PCR 4: calling, separator, UKI, kernel. PCR 11: 4 sections x 2.
	// PCR 9: load options, initrd.
	if count[4] != 4 || count[11] != 8 || count[9] != 2 || len(count) != 3 {
		t.Errorf("events per PCR = %v", count)
	}
	initrd := sha256.Sum256([]byte("initrd"))
	if last := ev[len(ev)-1]; last.PCR != 9 || !bytes.Equal(last.Digest, initrd[:]) {
		t.Errorf("last event %+v, want the initrd in PCR 9", last)
	}
	ev2, err := predict.UKIEvents(img, predict.Options{FailedBootOptions: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(ev2) != len(ev)+4 {
		t.Errorf("2 failed boot options added %d events, want 4", len(ev2)-len(ev))
	}
	// Without a command line there is no LoadOptions event.
	ev3, err := predict.UKIEvents(testUKI(t, ""), predict.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ev3 {
		if e.Description == "LOADED_IMAGE::LoadOptions" || e.Description == "section .cmdline" {
			t.Errorf("empty command line still measured: %+v", e)
		}
	}
}

func TestUKIEventsRejectsNonUKI(t *testing.T) {
	stub, err := os.ReadFile(uki.DefaultStubPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{nil, []byte("hello"), stub} {
		if _, err := predict.UKIEvents(b, predict.Options{}); !errors.Is(err, predict.ErrNotUKI) {
			t.Errorf("UKIEvents(%d bytes) error = %v, want ErrNotUKI", len(b), err)
		}
	}
}

func TestGPTEventData(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.img")
	if err := disk.Build(p, disk.Options{UKI: []byte("uki"), ESPSize: 40 << 20, DataSize: 1 << 20, Seed: "gpt"}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := predict.GPTEventData(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 92+8+2*128 {
		t.Fatalf("UEFI_GPT_DATA is %d bytes, want 356", len(data))
	}
	if string(data[:8]) != "EFI PART" || binary.LittleEndian.Uint64(data[92:]) != 2 {
		t.Errorf("header or count wrong: %x", data[:100])
	}
	ev, err := predict.GPTEvents(f)
	if err != nil || len(ev) != 4 || ev[1].Type != predict.EvEFIGPTEvent {
		t.Fatalf("GPTEvents = %+v, %v", ev, err)
	}
	if _, err := predict.GPTEventData(bytes.NewReader(make([]byte, 4096))); !errors.Is(err, predict.ErrGPT) {
		t.Errorf("blank disk: error %v, want ErrGPT", err)
	}
}

// FuzzGPTEventData: arbitrary disk bytes give UEFI_GPT_DATA or ErrGPT.
func FuzzGPTEventData(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := predict.GPTEventData(bytes.NewReader(b)); err != nil && !errors.Is(err, predict.ErrGPT) {
			t.Fatalf("unexpected error: %v", err)
		}
	})
}

// FuzzUKIEvents: arbitrary images give events or an error, never a panic.
func FuzzUKIEvents(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := predict.UKIEvents(b, predict.Options{})
		if err == nil && len(ev) < 3 {
			t.Fatalf("%d events for an accepted image", len(ev))
		}
	})
}
