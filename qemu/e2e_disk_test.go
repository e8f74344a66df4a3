package qemu_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
)

// diskRelease is the release name of the boot disk scenario.
const diskRelease = "2026.11.e2e"

// buildDisk builds a release disk image of the chain's appliance initrd
// with cmdline: UKI on the ESP, the store partition (256 MiB: the store
// keeps two slots per block) as the appliance's data disk.
func buildDisk(t *testing.T, c *chain, cmdline, path string, mod func(*images.Options)) *images.Release {
	t.Helper()
	kernel, err := os.ReadFile(c.img.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	o := images.Options{
		Kernel: kernel, Initrd: c.initrd, Cmdline: cmdline,
		OSRelease: "ID=embassy\nNAME=Embassy\nVERSION_ID=" + diskRelease + "\n",
		Disk:      disk.Options{DataSize: 256 << 20, Seed: "e2e-disk", Epoch: 1700000000},
		DiskPath:  path,
	}
	if mod != nil {
		mod(&o)
	}
	r, err := images.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s (UKI %.1f MB, authenticode %.16s…) in %v", filepath.Base(path), float64(len(r.UKI))/1e6,
		r.UKIAuthenticode, time.Since(start).Round(time.Millisecond))
	return r
}

// bootDiskImage boots a release disk image through OVMF (no -kernel) on
// the chain's enrolled TPM.
func bootDiskImage(t *testing.T, c *chain, path string) *qemu.Machine {
	t.Helper()
	return startT(t, qemu.Config{
		BootDisk: path, TPMState: c.tpm.StateDir,
		Forwards: []qemu.Forward{{GuestPort: nbdPort}},
	})
}

// cliBuildMatches runs `embassyctl image build -appliance-pcr` on the
// chain's kernel and initrd with buildDisk's settings and checks that its
// manifest is byte for byte m: the same UKI, disk image (the manifest
// holds both digests) and PCRs, so what the tests boot is what the
// operators' CLI builds.
func cliBuildMatches(t *testing.T, c *chain, m *release.Manifest) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "embassyctl")
	build := exec.Command("go", "build", "-o", bin, "github.com/dataembassy/embassy/cmd/embassyctl")
	build.Dir = moduleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build embassyctl: %v\n%s", err, out)
	}
	osrel := filepath.Join(dir, "os-release")
	if err := os.WriteFile(osrel, []byte("ID=embassy\nNAME=Embassy\nVERSION_ID="+diskRelease+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "rel")
	start := time.Now()
	cmd := exec.Command(bin, "image", "build", "-kernel", c.img.Kernel, "-initrd", c.img.Initrd,
		"-cmdline", qemu.DefaultAppend, "-osrel", osrel, "-release", diskRelease, "-out", out,
		"-data-mib", "256", "-seed", "e2e-disk", "-epoch", "1700000000", "-appliance-pcr")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("embassyctl image build: %v\n%s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(got), want) {
		t.Fatalf("embassyctl image build manifest differs from the test's:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("embassyctl image build -appliance-pcr made the same UKI, disk image and manifest in %v", time.Since(start).Round(time.Millisecond))
}

// publishSigned has three release officers trusted with threshold 2,
// checks that one signature does not publish m, and publishes it signed
// by two. It returns the release digest (hex).
func publishSigned(t *testing.T, c *chain, m *release.Manifest) string {
	t.Helper()
	ctx := context.Background()
	var pubs []ed25519.PublicKey
	var officers []ed25519.PrivateKey
	for range 3 {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pubs, officers = append(pubs, pub), append(officers, priv)
	}
	if err := c.v.AddReleaseOfficers(ctx, 2, pubs...); err != nil {
		t.Fatal(err)
	}
	env, err := release.NewEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	env.Sign(officers[0])
	if _, err := c.v.PublishEnvelope(ctx, env); !errors.Is(err, release.ErrThreshold) {
		t.Fatalf("release signed by 1 of 3 officers: error %v, want ErrThreshold", err)
	}
	env.Sign(officers[2])
	digest, err := c.v.PublishEnvelope(ctx, env)
	if err != nil {
		t.Fatalf("release signed by 2 of 3 officers refused: %v", err)
	}
	return digest
}

// admittedUnder fails t unless an audit record admits an unlock of the
// chain's appliance under the release with digest.
func admittedUnder(t *testing.T, c *chain, digest string) {
	t.Helper()
	recs, err := c.v.Audit(context.Background(), applianceID)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("release %s %s (%s)", images.ManifestName, diskRelease, digest[:16])
	for _, r := range recs {
		t.Logf("audit #%d %s %s check=%s pcr=%d %s", r.Seq, r.Action, r.Outcome, r.Check, r.PCR, r.Detail)
		if r.Action == "attest-unlock" && r.Outcome == "ok" && strings.Contains(r.Detail, want) {
			return
		}
	}
	t.Errorf("no audit record admits the unlock under %q", want)
}

// TestE2EDiskImage is the release chain end to end with the real pieces:
// the appliance initramfs (its data disk named by partition label) in a
// UKI on a reproducible GPT disk image; the release PCRs predicted from the
// files alone (PCR 15 from the appliance binary and configuration in the
// initrd) in a
// manifest signed by 2 of 3 release officers and published to the
// verifier; the disk booted through OVMF on a TPM enrolled with the
// verifier. The verifier admits the boot on the manifest, the appliance
// formats the store on the image's store partition and serves it over NBD
// with mutual TLS, and again after a reboot from the same disk. The same
// image with one byte of its command line changed is refused (the audit
// names the PCR) and never serves.
func TestE2EDiskImage(t *testing.T) {
	c := newChainDisk(t, 0, qemu.StorePartition)
	ctx := context.Background()
	dir := t.TempDir()

	genuine := buildDisk(t, c, qemu.DefaultAppend, filepath.Join(dir, "genuine.img"), nil)
	// PCR 15 from the initrd alone, as `embassyctl image build
	// -appliance-pcr` does; it must agree with the build's own inputs.
	p15, err := predict.InitramfsPCR(c.initrd)
	if err != nil {
		t.Fatal(err)
	}
	if fromBuild, err := predict.AppliancePCR(c.binary, c.config); err != nil || !bytes.Equal(p15, fromBuild) {
		t.Fatalf("PCR 15 from the initrd %x, from the binary and config %x (%v)", p15, fromBuild, err)
	}
	m, err := genuine.Manifest(images.ManifestOptions{
		Release: diskRelease, Created: time.Unix(1700000000, 0),
		RuntimePCRs: map[int][]byte{tpm.PCRAppliance: p15},
	})
	if err != nil {
		t.Fatal(err)
	}
	cliBuildMatches(t, c, m)
	digest := publishSigned(t, c, m)
	wantPCRs := map[int]string{tpm.PCRAppliance: hex.EncodeToString(p15)}
	for _, i := range images.ReleasePCRs {
		wantPCRs[i] = genuine.PCRs[i]
	}
	t.Logf("published release %s (%.16s…), PCRs %v", diskRelease, digest, slices.Sorted(mapKeys(wantPCRs)))

	t.Run("admitted", func(t *testing.T) {
		mach := bootDiskImage(t, c, filepath.Join(dir, "genuine.img"))
		c.waitServing(t, mach, 0)
		// The appliance prints its PCRs after measuring itself; the
		// verifier compared the quoted ones, this shows them side by side.
		got := mach.MeasuredPCRs()
		for _, i := range slices.Sorted(mapKeys(wantPCRs)) {
			if hex.EncodeToString(got[i]) != wantPCRs[i] {
				t.Errorf("PCR %d measured %x, predicted %s", i, got[i], wantPCRs[i])
			}
		}
		if l, err := mach.WaitForLine(regexp.MustCompile(`msg="data disk"`), time.Second); err != nil {
			t.Error(err)
		} else if !strings.Contains(l.Text, "device=/dev/vda2") || !strings.Contains(l.Text, qemu.StorePartition) {
			t.Errorf("data disk is not the image's store partition: %s", l.Text)
		} else {
			t.Logf("%s", l.Text)
		}
		if _, err := mach.WaitForLine(regexp.MustCompile(`msg="store formatted"`), time.Second); err != nil {
			t.Error("first boot did not format the store:", err)
		}
		data := make([]byte, 8<<20)
		rand.Read(data)
		src := filepath.Join(t.TempDir(), "src")
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		d, err := nbdcopy(t, "--flush", src, c.uri(mach))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote 8 MiB over NBD/TLS in %v", d.Round(time.Millisecond))
		if !bytes.Equal(readBack(t, c.uri(mach), len(data)), data) {
			t.Fatal("data read back differs")
		}
		admittedUnder(t, c, digest)

		// Reboot from the same disk: the store on the partition opens
		// with the sealed local share and serves the same data.
		mach.Close()
		mach = bootDiskImage(t, c, filepath.Join(dir, "genuine.img"))
		c.waitServing(t, mach, 0)
		if _, err := mach.WaitForLine(regexp.MustCompile(`msg="store opened"`), time.Second); err != nil {
			t.Error("second boot did not open the existing store:", err)
		}
		if !bytes.Equal(readBack(t, c.uri(mach), len(data)), data) {
			t.Fatal("data after reboot differs")
		}
	})

	t.Run("one byte different refused", func(t *testing.T) {
		cmdline := strings.Replace(qemu.DefaultAppend, "panic=-1", "panic=-2", 1)
		if len(cmdline) != len(qemu.DefaultAppend) || cmdline == qemu.DefaultAppend {
			t.Fatal("could not change one byte of the command line")
		}
		path := filepath.Join(dir, "tampered.img")
		tampered := buildDisk(t, c, cmdline, path, nil)
		// The UKIs differ in the command line byte and the PE checksum.
		var diff []int
		for i := range min(len(genuine.UKI), len(tampered.UKI)) {
			if genuine.UKI[i] != tampered.UKI[i] {
				diff = append(diff, i)
			}
		}
		if len(genuine.UKI) != len(tampered.UKI) || len(diff) == 0 || len(diff) > 5 {
			t.Fatalf("UKIs differ at %d offsets (%d vs %d bytes), want the command line byte and the checksum", len(diff), len(genuine.UKI), len(tampered.UKI))
		}
		t.Logf("UKI bytes differ at offsets %#x", diff)
		mach := bootDiskImage(t, c, path)
		l, err := mach.WaitForLine(regexp.MustCompile(`reason=refused`), 300*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("refused: %s", l.Text)
		// It measured what its own files predict, and that is not the
		// published release.
		got := mach.MeasuredPCRs()
		var differ []int
		for _, i := range slices.Sorted(mapKeys(wantPCRs)) {
			if i != tpm.PCRAppliance && hex.EncodeToString(got[i]) != tampered.PCRs[i] {
				t.Errorf("PCR %d measured %x, the tampered image predicts %s", i, got[i], tampered.PCRs[i])
			}
			if hex.EncodeToString(got[i]) != wantPCRs[i] {
				differ = append(differ, i)
			}
		}
		if !slices.Equal(differ, []int{4, 9, 11}) {
			t.Errorf("PCRs %v differ from the release, want [4 9 11]", differ)
		}
		c.noServing(t, mach)
		recs, err := c.v.Audit(ctx, applianceID)
		if err != nil {
			t.Fatal(err)
		}
		last := recs[len(recs)-1]
		t.Logf("audit #%d %s %s check=%s pcr=%d %s", last.Seq, last.Action, last.Outcome, last.Check, last.PCR, last.Detail)
		if last.Outcome != "refused" || last.Check != "release" || !slices.Contains(differ, last.PCR) ||
			!strings.Contains(last.Detail, fmt.Sprintf("(%d PCR(s) differ)", len(differ))) {
			t.Errorf("audit record does not refuse on the differing release PCRs %v: %+v", differ, last)
		}
	})
}

func mapKeys[V any](m map[int]V) func(func(int) bool) {
	return func(yield func(int) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Debian's OVMF Secure Boot build with its "snakeoil" test keys enrolled
// (PK = KEK = db = snakeoilCert); the key ships encrypted with the
// passphrase "snakeoil".
const (
	snakeoilKey  = "/usr/share/ovmf/PkKek-1-snakeoil.key"
	snakeoilCert = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
	snakeoilCode = "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd"
	snakeoilVars = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"
)

// TestE2EDiskImageSecureBoot is TestE2EDiskImage's admitted path with
// Secure Boot enforced: the UKI is signed with a key enrolled in the
// firmware's db, the release also pins PCR 7 (Secure Boot state and the
// db authority that verified the UKI) predicted from the firmware's
// variables and the signing certificate, and the verifier admits the
// appliance on that manifest.
func TestE2EDiskImageSecureBoot(t *testing.T) {
	openssl := testenv.Tool(t, "openssl")
	testenv.Tool(t, "sbsign")
	key := filepath.Join(t.TempDir(), "db.key")
	if out, err := exec.Command(openssl, "pkey", "-in", snakeoilKey, "-passin", "pass:snakeoil", "-out", key).CombinedOutput(); err != nil {
		t.Fatalf("decrypt snakeoil key: %v\n%s", err, out)
	}
	certPEM, err := os.ReadFile(snakeoilCert)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("snakeoil certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	vars, err := os.ReadFile(snakeoilVars)
	if err != nil {
		t.Fatal(err)
	}

	c := newChainDisk(t, 0, qemu.StorePartition)
	path := filepath.Join(t.TempDir(), "signed.img")
	r := buildDisk(t, c, qemu.DefaultAppend, path, func(o *images.Options) {
		o.Sign = images.SignWithSbsign(key, snakeoilCert)
		o.Predict.SecureBoot = &predict.SecureBoot{VarStore: vars, Signer: cert}
	})
	p15, err := predict.InitramfsPCR(c.initrd)
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Manifest(images.ManifestOptions{
		Release: diskRelease, Created: time.Unix(1700000000, 0), IncludeSecureBoot: true,
		RuntimePCRs: map[int][]byte{tpm.PCRAppliance: p15},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.PCRs["7"]; !ok || len(m.PCRs) != 7 {
		t.Fatalf("manifest PCRs %v, want 4, 7, 9, 11, 12, 13, 15", slices.Sorted(maps.Keys(m.PCRs)))
	}
	digest := publishSigned(t, c, m)

	mach := startT(t, qemu.Config{
		BootDisk: path, TPMState: c.tpm.StateDir, Forwards: []qemu.Forward{{GuestPort: nbdPort}},
		OVMFCode: snakeoilCode, OVMFVars: snakeoilVars,
		ExtraArgs: []string{"-machine", "smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"},
	})
	c.waitServing(t, mach, 0)
	got := mach.MeasuredPCRs()
	for _, i := range []int{4, 9, 11, 12, 13, 15} {
		if hex.EncodeToString(got[i]) != m.PCRs[fmt.Sprint(i)] {
			t.Errorf("PCR %d measured %x, manifest %s", i, got[i], m.PCRs[fmt.Sprint(i)])
		}
	}
	admittedUnder(t, c, digest)
	data := bytes.Repeat([]byte("secure boot "), 1<<16)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := nbdcopy(t, "--flush", src, c.uri(mach)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readBack(t, c.uri(mach), len(data)), data) {
		t.Fatal("data read back differs")
	}
}
