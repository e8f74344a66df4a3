package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/images/uki"
	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/internal/testenv"
)

// TestImageBuildSignVerify: image build writes an unsigned manifest that
// release sign/verify accept, and image predict reproduces its PCRs from the
// written files alone.
func TestImageBuildSignVerify(t *testing.T) {
	dir := t.TempDir()
	kernel := stubKernel(t, dir)
	initrd := filepath.Join(dir, "initrd")
	if err := os.WriteFile(initrd, []byte("initrd bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	code, stdout, stderr := runCLI(t, "image", "build", "-kernel", kernel, "-initrd", initrd, "-release", "2026.11.1",
		"-out", out, "-esp-mib", "40", "-data-mib", "4", "-epoch", "1700000000")
	if code != 0 {
		t.Fatalf("image build: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, f := range []string{"uki.efi", "disk.img", "manifest.json", "events.txt"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
	m := readBuiltManifest(t, out)
	for _, p := range []string{"4", "9", "11", "12", "13"} {
		if _, ok := m.PCRs[p]; !ok {
			t.Errorf("manifest lacks PCR %s", p)
		}
	}
	if _, ok := m.PCRs["5"]; ok {
		t.Error("PCR 5 listed without -include-gpt")
	}
	// Building again into the same directory is refused.
	if code, _, _ := runCLI(t, "image", "build", "-kernel", kernel, "-initrd", initrd, "-release", "x", "-out", out); code == 0 {
		t.Error("image build overwrote an existing release")
	}

	// predict from the files alone gives the same PCRs.
	code, pout, perr := runCLI(t, "image", "predict", "-uki", filepath.Join(out, "uki.efi"), "-disk", filepath.Join(out, "disk.img"))
	if code != 0 {
		t.Fatalf("image predict: exit %d\n%s", code, perr)
	}
	for p, v := range m.PCRs {
		if !strings.Contains(pout, "PCR "+p+" ") || !strings.Contains(pout, v) {
			t.Errorf("predict output lacks PCR %s = %s:\n%s", p, v, pout)
		}
	}
	if !strings.Contains(pout, "PCR 5 ") {
		t.Errorf("predict with -disk does not show PCR 5:\n%s", pout)
	}

	// Two officers sign; 2-of-2 verifies, 2-of-3 with one signature does not.
	for _, k := range []string{"alice", "bob", "carol"} {
		if code, _, e := runCLI(t, "release", "keygen", "-out", filepath.Join(dir, k)); code != 0 {
			t.Fatalf("keygen: %s", e)
		}
	}
	env := filepath.Join(dir, "rel.json")
	if code, _, e := runCLI(t, "release", "sign", "-key", filepath.Join(dir, "alice.priv"), "-manifest", filepath.Join(out, "manifest.json"), "-out", env); code != 0 {
		t.Fatalf("sign: %s", e)
	}
	trust := filepath.Join(dir, "alice.pub") + "," + filepath.Join(dir, "bob.pub") + "," + filepath.Join(dir, "carol.pub")
	if code, _, _ := runCLI(t, "release", "verify", "-trust", trust, "-k", "2", env); code == 0 {
		t.Error("one signature passed a 2-of-3 threshold")
	}
	if code, _, e := runCLI(t, "release", "sign", "-key", filepath.Join(dir, "bob.priv"), "-envelope", env, "-out", env); code != 0 {
		t.Fatalf("second sign: %s", e)
	}
	if code, o, e := runCLI(t, "release", "verify", "-trust", trust, "-k", "2", env); code != 0 {
		t.Errorf("2-of-3 verify failed: %s%s", o, e)
	}
}

func TestImageUsage(t *testing.T) {
	for _, args := range [][]string{
		{"image"},
		{"image", "frobnicate"},
		{"image", "build"},
		{"image", "predict"},
		{"image", "predict", "-uki", "x", "-manifest", "m.json"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// TestImageBuildSecureBoot signs with Debian's OVMF snakeoil key and
// predicts PCR 7 against its variables; predict reproduces it.
func TestImageBuildSecureBoot(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "db.key")
	if out, err := exec.Command(testenv.Tool(t, "openssl"), "pkey", "-in", "/usr/share/ovmf/PkKek-1-snakeoil.key", "-passin", "pass:snakeoil", "-out", key).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	testenv.Tool(t, "sbsign")
	const cert, vars = "/usr/share/ovmf/PkKek-1-snakeoil.pem", "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"
	initrd := filepath.Join(dir, "initrd")
	if err := os.WriteFile(initrd, []byte("initrd"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	code, o, e := runCLI(t, "image", "build", "-kernel", uki.DefaultStubPath, "-initrd", initrd, "-release", "sb", "-out", out,
		"-esp-mib", "40", "-data-mib", "1", "-sign-key", key, "-sign-cert", cert, "-sb-vars", vars, "-include-pcr7")
	if code != 0 {
		t.Fatalf("image build: %d\n%s%s", code, o, e)
	}
	m := readBuiltManifest(t, out)
	if m.PCRs["7"] == "" {
		t.Fatalf("no PCR 7 in the manifest's PCRs %v", m.PCRs)
	}
	if out, err := exec.Command(testenv.Tool(t, "sbverify"), "--cert", cert, filepath.Join(out, "uki.efi")).CombinedOutput(); err != nil {
		t.Errorf("sbverify: %v\n%s", err, out)
	}
	code, po, pe := runCLI(t, "image", "predict", "-uki", filepath.Join(out, "uki.efi"), "-sign-cert", cert, "-sb-vars", vars)
	if code != 0 {
		t.Fatalf("predict: %s", pe)
	}
	if !strings.Contains(po, "PCR 7  "+m.PCRs["7"]) {
		t.Errorf("predict output lacks PCR 7 %s:\n%s", m.PCRs["7"], po)
	}
	// Half the Secure Boot flags is a usage error.
	if code, _, _ := runCLI(t, "image", "build", "-initrd", initrd, "-release", "x", "-out", filepath.Join(dir, "o2"), "-sign-key", key); code != 2 {
		t.Errorf("partial Secure Boot flags: exit %d, want 2", code)
	}
}

// TestImageBuildAppliancePCR: with -appliance-pcr, image build pins PCR 15
// (the appliance's log of its binary and configuration) read from an
// appliance initramfs, image predict re-derives it from the UKI, and an
// initrd without the appliance is refused.
func TestImageBuildAppliancePCR(t *testing.T) {
	dir := t.TempDir()
	kernel := stubKernel(t, dir)
	initBin, appBin := filepath.Join(dir, "init"), filepath.Join(dir, "app")
	for path, b := range map[string]string{initBin: "init-binary", appBin: "appliance-binary"} {
		if err := os.WriteFile(path, []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	config := []byte(`{"version":1,"disk":{"device":"/dev/disk/by-partlabel/embassy-store"}}`)
	initrd := filepath.Join(dir, "initrd.gz")
	if _, err := initramfs.BuildFile(initramfs.Options{Init: initBin, Appliance: appBin, Config: config}, initrd); err != nil {
		t.Fatal(err)
	}
	want, err := measure.Replay([]measure.Event{
		measure.NewEvent("binary", "/bin/embassy-appliance", []byte("appliance-binary")),
		measure.NewEvent("config", "/etc/embassy/appliance.json", config),
	})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	code, stdout, stderr := runCLI(t, "image", "build", "-kernel", kernel, "-initrd", initrd, "-release", "app.1",
		"-out", out, "-esp-mib", "40", "-data-mib", "256", "-epoch", "1700000000", "-appliance-pcr")
	if code != 0 {
		t.Fatalf("image build: exit %d\n%s%s", code, stdout, stderr)
	}
	m := readBuiltManifest(t, out)
	if got := m.PCRs["15"]; got != hex.EncodeToString(want) {
		t.Errorf("manifest PCR 15 = %q, want %x", got, want)
	}
	if len(m.PCRs) != 6 {
		t.Errorf("manifest lists %d PCRs, want 4, 9, 11, 12, 13, 15", len(m.PCRs))
	}
	if !strings.Contains(stdout, fmt.Sprintf("PCR 15 %x (appliance log)", want)) {
		t.Errorf("build output does not show PCR 15:\n%s", stdout)
	}
	code, pout, perr := runCLI(t, "image", "predict", "-uki", filepath.Join(out, "uki.efi"), "-appliance-pcr")
	if code != 0 || !strings.Contains(pout, hex.EncodeToString(want)) {
		t.Errorf("image predict -appliance-pcr: exit %d, PCR 15 %x not in\n%s%s", code, want, pout, perr)
	}

	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("initrd bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "image", "build", "-kernel", kernel, "-initrd", plain, "-release", "x",
		"-out", filepath.Join(dir, "o2"), "-esp-mib", "40", "-appliance-pcr")
	if code == 0 || !strings.Contains(stderr, "appliance-pcr") {
		t.Errorf("-appliance-pcr with a non-appliance initrd: exit %d\n%s", code, stderr)
	}
}

// stubKernel writes a kernel into dir for image build and returns its
// path: any PE serves as the kernel here, so it is the EFI stub itself.
func stubKernel(t *testing.T, dir string) string {
	t.Helper()
	stub, err := os.ReadFile(uki.DefaultStubPath)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, stub, 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel
}

// readBuiltManifest reads and parses the manifest.json image build wrote
// into out.
func readBuiltManifest(t *testing.T, out string) *release.Manifest {
	t.Helper()
	mj, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := release.ParseManifest(bytes.TrimSpace(mj))
	if err != nil {
		t.Fatalf("manifest: %v\n%s", err, mj)
	}
	return m
}
