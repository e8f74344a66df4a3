package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

func TestStoreCLI(t *testing.T) {
	dir := t.TempDir()
	kek, priv, pub := filepath.Join(dir, "kek"), filepath.Join(dir, "rec.key"), filepath.Join(dir, "rec.pub")
	img, ctr := filepath.Join(dir, "store.img"), filepath.Join(dir, "counter")

	if code, _, errs := runCLI(t, "store", "keygen", "--kek", kek, "--recovery-key", priv, "--recovery-pub", pub); code != 0 {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	if code, _, _ := runCLI(t, "store", "keygen", "--kek", kek); code != 1 {
		t.Fatalf("keygen over an existing key file: exit %d, want 1", code)
	}
	code, out, errs := runCLI(t, "store", "format", "--kek", kek, "--recovery-pub", pub, "--counter", ctr, "--create", "4M", "--size", "1M", "--json", img)
	if code != 0 {
		t.Fatalf("format: %d %s", code, errs)
	}
	var info storage.Info
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("format --json output %q: %v", out, err)
	}
	if info.Size != 1<<20 || !info.KEKSlot || !info.RecoverySlot || !info.Authenticated {
		t.Fatalf("format info = %+v", info)
	}

	// Put data in through the library, as the appliance would.
	kekBytes, err := readKEKFile(kek)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := storage.OpenFileDevice(img, false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := storage.Open(dev, storage.OpenOptions{KEK: kekBytes, Counter: storage.NewFileCounter(ctr)})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("embassy!"), 3*4096/8)
	if _, err := s.WriteAt(data, 8192); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	dev.Close()

	code, out, _ = runCLI(t, "store", "show", img)
	if code != 0 || !strings.Contains(out, "NOT authenticated") || !strings.Contains(out, info.UUID) {
		t.Fatalf("show without key: %d %q", code, out)
	}
	code, out, _ = runCLI(t, "store", "show", "--kek", kek, img)
	if code != 0 || !strings.Contains(out, "(authenticated)") || !strings.Contains(out, "recovery=true") {
		t.Fatalf("show --kek: %d %q", code, out)
	}
	code, out, _ = runCLI(t, "store", "verify", "--kek", kek, "--counter", ctr, img)
	if code != 0 || !strings.Contains(out, "all authentic") {
		t.Fatalf("verify clean store: %d %q", code, out)
	}

	// Export with the recovery key alone.
	exp := filepath.Join(dir, "plain.img")
	if code, _, errs := runCLI(t, "store", "export", "--recovery-key", priv, "--out", exp, img); code != 0 {
		t.Fatalf("export: %d %s", code, errs)
	}
	got, err := os.ReadFile(exp)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	copy(want[8192:], data)
	if !bytes.Equal(got, want) {
		t.Fatal("exported image differs from what was written")
	}

	// Corrupt every data block's ciphertext region of the file outside the
	// metadata: flip a byte in each 4 KiB block after the metadata area.
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for off := info.LayoutBytes - 2*info.Size; off < info.LayoutBytes; off += 4096 {
		raw[off+10] ^= 1
	}
	if err := os.WriteFile(img, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCLI(t, "store", "verify", "--kek", kek, "--json", img)
	if code != 1 {
		t.Fatalf("verify corrupt store: exit %d, want 1; %s", code, out)
	}
	var rep struct {
		OK      bool
		Corrupt []struct {
			FirstBlock uint64 `json:"first_block"`
			Blocks     uint64
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK || len(rep.Corrupt) != 1 || rep.Corrupt[0].FirstBlock != 2 || rep.Corrupt[0].Blocks != 3 {
		t.Fatalf("verify report = %+v, want blocks 2-4 corrupt", rep)
	}
	exp2 := filepath.Join(dir, "plain2.img")
	if code, _, _ := runCLI(t, "store", "export", "--recovery-key", priv, "--out", exp2, img); code != 1 {
		t.Fatalf("export of corrupt store: exit %d, want 1", code)
	}
	if _, err := os.Stat(exp2); !os.IsNotExist(err) {
		t.Fatal("a partial plaintext image was left behind")
	}
}

func TestStoreCLIUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
	}{
		{[]string{"store"}, 2},
		{[]string{"store", "--help"}, 0},
		{[]string{"store", "format", "--help"}, 0},
		{[]string{"store", "nope"}, 2},
		{[]string{"store", "format", "x"}, 2},      // no --kek
		{[]string{"store", "verify", "a", "b"}, 2}, // two devices
		{[]string{"store", "show", "--bogus", "x"}, 2},
		{[]string{"store", "verify", "x"}, 2}, // no key
	}
	for _, tc := range tests {
		if code, _, errs := runCLI(t, tc.args...); code != tc.code {
			t.Errorf("%v: exit %d, want %d (%s)", tc.args, code, tc.code, errs)
		}
	}
}
