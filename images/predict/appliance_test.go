package predict_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/u-root/u-root/pkg/cpio"
)

// smallInitramfs builds an initramfs the production way (initramfs.Build)
// from small stand-in binaries.
func smallInitramfs(t testing.TB, config []byte, c initramfs.Compression) []byte {
	t.Helper()
	dir := t.TempDir()
	initPath, appPath := filepath.Join(dir, "init"), filepath.Join(dir, "app")
	if err := os.WriteFile(initPath, []byte("init-binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(appPath, []byte("appliance-binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := initramfs.Build(initramfs.Options{Init: initPath, Appliance: appPath, Config: config, Compression: c}, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rawCPIO writes records as a plain newc archive.
func rawCPIO(t testing.TB, recs ...cpio.Record) []byte {
	t.Helper()
	b, err := testenv.Newc(recs...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantPCR15 is PCR 15 after the appliance's two events, written out here
// rather than taken from the plan so the test notices a change to it.
func wantPCR15(t *testing.T, binary, config []byte) []byte {
	t.Helper()
	want, err := measure.Replay([]measure.Event{
		measure.NewEvent("binary", "/bin/embassy-appliance", binary),
		measure.NewEvent("config", "/etc/embassy/appliance.json", config),
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

func TestAppliancePCR(t *testing.T) {
	config := []byte(`{"version":1}`)
	want := wantPCR15(t, []byte("appliance-binary"), config)
	got, err := predict.AppliancePCR([]byte("appliance-binary"), config)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("AppliancePCR = %x, %v; want %x", got, err, want)
	}
}

func TestInitramfsPCR(t *testing.T) {
	config := []byte(`{"version":1}`)
	want := wantPCR15(t, []byte("appliance-binary"), config)
	for _, c := range []initramfs.Compression{initramfs.CompressGzip, initramfs.CompressNone} {
		t.Run(string(c), func(t *testing.T) {
			got, err := predict.InitramfsPCR(smallInitramfs(t, config, c))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("InitramfsPCR = %x, want %x", got, want)
			}
		})
	}
	// One byte of configuration changes the prediction.
	other, err := predict.InitramfsPCR(smallInitramfs(t, []byte(`{"version":2}`), initramfs.CompressGzip))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other, want) {
		t.Error("a different configuration predicts the same PCR 15")
	}
}

// trailerLen is the size of a newc trailer record: 110-byte header and
// "TRAILER!!!\x00", padded to 4 bytes.
const trailerLen = 124

func TestInitramfsPCRRefuses(t *testing.T) {
	bin := cpio.StaticFile(initramfs.AppliancePath, "appliance-binary", 0o755)
	cfg := cpio.StaticFile(initramfs.ConfigPath, "{}", 0o644)
	good := rawCPIO(t, bin, cfg)
	if _, err := predict.InitramfsPCR(good); err != nil {
		t.Fatalf("well-formed archive refused: %v", err)
	}
	tests := []struct {
		name   string
		initrd []byte
	}{
		{"empty", nil},
		{"garbage", []byte("not an archive at all, not even close to one; more than 110 bytes of text for the header........................")},
		{"gzip of garbage", []byte{0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff, 1, 2, 3}},
		{"no configuration", rawCPIO(t, bin)},
		{"no appliance", rawCPIO(t, cfg)},
		// u-root's writer drops duplicates: splice two archives, the
		// first without its trailer (124 bytes).
		{"appliance twice", append(good[:len(good)-trailerLen:len(good)-trailerLen], rawCPIO(t, cpio.StaticFile(initramfs.AppliancePath, "other", 0o755))...)},
		{"appliance a symlink", rawCPIO(t, cpio.Symlink(initramfs.AppliancePath, "/bin/sh"), cfg)},
		{"truncated", good[:len(good)-200]},
		{"no trailer", good[:len(good)-trailerLen]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := predict.InitramfsPCR(tc.initrd); !errors.Is(err, predict.ErrInitramfs) {
				t.Errorf("InitramfsPCR = %x, %v; want ErrInitramfs", got, err)
			}
		})
	}
}

func FuzzInitramfsPCR(f *testing.F) {
	f.Add(rawCPIO(f, cpio.StaticFile(initramfs.AppliancePath, "a", 0o755), cpio.StaticFile(initramfs.ConfigPath, "{}", 0o644)))
	f.Add(smallInitramfs(f, []byte("{}"), initramfs.CompressGzip))
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, initrd []byte) {
		v, err := predict.InitramfsPCR(initrd)
		if err == nil && len(v) != 32 {
			t.Fatalf("PCR of %d bytes", len(v))
		}
		if err != nil && !errors.Is(err, predict.ErrInitramfs) {
			t.Fatalf("error %v is not ErrInitramfs", err)
		}
	})
}
