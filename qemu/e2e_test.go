package qemu_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
)

// TestE2ELifecycle runs, on one provisioned disk:
//
//   - scenario 1: first boot provisions and serves; 64 MiB written with
//     nbdcopy over TLS read back identical, the appliance's Prometheus
//     metrics (scraped over mutual TLS) count that traffic; after a reboot
//     (same TPM, same disk) the data is still there;
//   - scenario 7: the whole disk rolled back to an earlier copy is refused
//     at unlock;
//   - scenario 3: the same disk with another TPM gets no key;
//   - scenario 4: revoking the running appliance stops it serving within
//     its lease, and a revoked appliance is refused at boot.
func TestE2ELifecycle(t *testing.T) {
	c := newChainMetrics(t, 30*time.Second)
	ctx := context.Background()

	// Scenario 1.
	m := c.boot(t, "")
	c.publish(t, m)
	c.waitServing(t, m, 0)
	if _, err := m.WaitForLine(regexp.MustCompile(`msg="store formatted"`), time.Second); err != nil {
		t.Error("first boot did not format the store:", err)
	}
	data := make([]byte, 64<<20)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := nbdcopy(t, "--flush", src, c.uri(m))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote 64 MiB in %v (%.1f MiB/s)", d.Round(time.Millisecond), 64/d.Seconds())
	if !bytes.Equal(readBack(t, c.uri(m), len(data)), data) {
		t.Fatal("data read back differs")
	}
	c.checkMetrics(t, m, len(data), 30*time.Second)
	m.Close()
	snapshot := filepath.Join(t.TempDir(), "snapshot.img")
	copyFile(t, c.disk, snapshot)

	m = c.boot(t, "")
	c.waitServing(t, m, 0)
	if _, err := m.WaitForLine(regexp.MustCompile(`msg="store opened"`), time.Second); err != nil {
		t.Error("second boot did not open the existing store:", err)
	}
	if !bytes.Equal(readBack(t, c.uri(m), len(data)), data) {
		t.Fatal("data after reboot differs")
	}
	// Newer writes move the store (and its TPM counter) past the snapshot.
	more := bytes.Repeat([]byte("newer"), 1<<16)
	os.WriteFile(src, more, 0o600)
	if _, err := nbdcopy(t, "--flush", src, c.uri(m)); err != nil {
		t.Fatal(err)
	}
	m.Close()
	current := filepath.Join(t.TempDir(), "current.img")
	copyFile(t, c.disk, current)

	// Scenario 7: the disk rolled back to the snapshot.
	copyFile(t, snapshot, c.disk)
	m = c.boot(t, "")
	l, err := m.WaitForLine(regexp.MustCompile(`HALTED|reason=refused`), 300*time.Second)
	if err != nil {
		t.Fatal("rolled-back disk: ", err)
	}
	t.Logf("rolled-back disk: %s", l.Text)
	if !regexp.MustCompile(`(?i)roll|epoch`).MatchString(l.Text) {
		t.Errorf("refusal does not name the rollback: %s", l.Text)
	}
	c.noServing(t, m)
	m.Close()
	copyFile(t, current, c.disk)

	// Scenario 3: the same disk with a fresh TPM.
	other, err := qemu.ManufactureTPM(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m = startT(t, qemu.Config{
		Kernel: c.img.Kernel, Initrd: c.img.Initrd, Append: qemu.DefaultAppend,
		DataDisk: c.disk, TPMState: other.StateDir, Forwards: []qemu.Forward{{GuestPort: nbdPort}},
	})
	l, err = m.WaitForLine(regexp.MustCompile(`reason=refused|HALTED`), 300*time.Second)
	if err != nil {
		t.Fatal("other TPM: ", err)
	}
	t.Logf("other TPM: %s", l.Text)
	c.noServing(t, m)
	if _, err := m.WaitForLine(regexp.MustCompile(`verifier granted the key`), time.Millisecond); err == nil {
		t.Error("the verifier granted the key to another TPM")
	}
	m.Close()

	// Scenario 4: revoke the running appliance.
	m = c.boot(t, "")
	c.waitServing(t, m, 0)
	if !bytes.Equal(readBack(t, c.uri(m), len(more)), more) {
		t.Fatal("current data not served after the rollback attempt")
	}
	revokedAt := time.Now()
	if err := c.v.DB.Revoke(ctx, applianceID, "test: scenario 4", "harness"); err != nil {
		t.Fatal(err)
	}
	l, err = m.WaitForLine(regexp.MustCompile(`stopped serving, keys zeroized" reason=revoked`), 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped serving %v after revocation (lease 30s)", time.Since(revokedAt).Round(time.Second))
	if time.Since(revokedAt) > 35*time.Second {
		t.Errorf("took longer than the lease to stop")
	}
	cmd := exec.Command(testenv.Tool(t, "nbdinfo"), c.uri(m))
	cmd.Env = testenv.SystemPathEnv()
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("still serving after revocation:\n%s", out)
	}
	m.Close()
	m = c.boot(t, "")
	if _, err := m.WaitForLine(regexp.MustCompile(`reason=revoked`), 300*time.Second); err != nil {
		t.Fatal("revoked appliance at boot: ", err)
	}
	c.noServing(t, m)
	recs, err := c.v.Audit(ctx, applianceID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		t.Logf("audit #%d %s %s check=%s pcr=%d %s", r.Seq, r.Action, r.Outcome, r.Check, r.PCR, r.Detail)
	}
}

// TestE2ETamperedConfig is scenario 2: a boot image whose configuration
// differs in one byte is refused, never opens its NBD port, and the
// verifier's audit log says which PCR differed.
func TestE2ETamperedConfig(t *testing.T) {
	c := newChain(t, 0)
	tampered := bytes.Replace(c.config, []byte(`"initial": "1s"`), []byte(`"initial": "2s"`), 1)
	if bytes.Equal(tampered, c.config) || len(tampered) != len(c.config) {
		t.Fatal("could not change one byte of the configuration")
	}
	img := buildAppliance(t, tampered, "tampered.initrd")
	m := c.boot(t, img.Initrd)
	// The release is the genuine image's (PCR 4 from this boot: same kernel).
	if _, err := m.WaitForLine(regexp.MustCompile(`msg=pcr when="after measuring" index=15`), 240*time.Second); err != nil {
		t.Fatal(err)
	}
	p15, err := predict.AppliancePCR(c.binary, c.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.v.Publish(context.Background(), "genuine", c.initrd,
		map[int][]byte{4: m.MeasuredPCRs()[4], 9: predict.KernelBootPCR9(qemu.DefaultAppend, c.initrd), 15: p15}); err != nil {
		t.Fatal(err)
	}
	from := len(m.Lines())
	l, err := m.WaitForLineFrom(from, regexp.MustCompile(`reason=refused`), 120*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("refused: %s", l.Text)
	c.noServing(t, m)
	recs, err := c.v.Audit(context.Background(), applianceID)
	if err != nil {
		t.Fatal(err)
	}
	last := recs[len(recs)-1]
	t.Logf("audit: %+v", last)
	if last.Outcome != "refused" || (last.PCR != 9 && last.PCR != 15) {
		t.Errorf("audit record does not name PCR 9 or 15: %+v", last)
	}
}

// connectPy connects nbdsh's handle h to uri; libnbd refuses URIs naming
// local files (tls-certificates) unless allowed.
func connectPy(uri string) string {
	return fmt.Sprintf("h.set_uri_allow_local_file(True)\nh.connect_uri(%q)\n", uri)
}

// nbdsh runs a Python snippet against the export; h is the connected handle.
func nbdsh(t testing.TB, uri, code string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "nbdsh"), "-c", connectPy(uri)+code)
	cmd.Env = testenv.SystemPathEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestE2ECrashAndBitFlip runs scenarios 6 and 5 on one provisioned disk:
// QEMU killed in the middle of writes, after which every flushed write is
// intact and the store opens; then one byte of the disk flipped while the
// appliance is off, after which reading that block fails with an I/O error,
// the rest reads fine, and the appliance reports the integrity failure.
func TestE2ECrashAndBitFlip(t *testing.T) {
	c := newChain(t, 0)
	m := c.boot(t, "")
	c.publish(t, m)
	c.waitServing(t, m, 0)
	m.Close()
	formatted := filepath.Join(t.TempDir(), "formatted.img")
	copyFile(t, c.disk, formatted)

	// Scenario 6: 16 MiB flushed, then unflushed writes past it, then the
	// power cord.
	m = c.boot(t, "")
	c.waitServing(t, m, 0)
	flushed := make([]byte, 16<<20)
	rand.Read(flushed)
	src := filepath.Join(t.TempDir(), "flushed")
	os.WriteFile(src, flushed, 0o600)
	if _, err := nbdcopy(t, "--flush", src, c.uri(m)); err != nil {
		t.Fatal(err)
	}
	writer := exec.Command(testenv.Tool(t, "nbdsh"), "-c", connectPy(c.uri(m))+`
import os
off = 16 << 20
while True:
    h.pwrite(b"\xab" * (256 << 10), off)
    off = (16 << 20) + ((off + (256 << 10)) % (16 << 20))
`)
	writer.Env = testenv.SystemPathEnv()
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	m.Kill()
	writer.Process.Kill()
	writer.Wait()
	m.Close()

	m = c.boot(t, "")
	c.waitServing(t, m, 0)
	out, err := nbdsh(t, c.uri(m), `
import hashlib, sys
d = b"".join(h.pread(1 << 20, i << 20) for i in range(16))
print("FLUSHED", hashlib.sha256(d).hexdigest())
bad = 0
for i in range(4096):
    b = h.pread(4096, (16 << 20) + i * 4096)
    if b != b"\x00" * 4096 and b != b"\xab" * 4096:
        bad += 1
print("TORN", bad)
`)
	if err != nil {
		t.Fatalf("reading after the crash: %v\n%s", err, out)
	}
	want := fmt.Sprintf("FLUSHED %x", sha256Sum(flushed))
	if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(out) {
		t.Errorf("flushed data changed by the crash:\n%s", out)
	}
	if !regexp.MustCompile(`TORN 0\b`).MatchString(out) {
		t.Errorf("blocks neither old nor new after the crash:\n%s", out)
	}
	m.Close()

	// Scenario 5: flip one byte of ciphertext written since formatting.
	before, err := os.ReadFile(formatted)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(c.disk)
	if err != nil {
		t.Fatal(err)
	}
	var changed []int
	for off := 1 << 20; off+4096 <= len(after); off += 4096 {
		if !bytes.Equal(before[off:off+4096], after[off:off+4096]) {
			changed = append(changed, off)
		}
	}
	if len(changed) < 4096 {
		t.Fatalf("only %d blocks changed on disk", len(changed))
	}
	// The flushed data dominates what changed; metadata is a few blocks.
	victim := changed[len(changed)/4] + 100
	after[victim] ^= 0x01
	if err := os.WriteFile(c.disk, after, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped one bit at disk offset %d", victim)

	m = c.boot(t, "")
	from := c.waitServing(t, m, 0)
	_ = from
	out, err = nbdsh(t, c.uri(m), `
bad = []
for i in range(32 * 256):
    try:
        h.pread(4096, i * 4096)
    except nbd.Error as e:
        bad.append(i)
print("BAD", bad)
`)
	if err != nil {
		t.Fatalf("scan: %v\n%s", err, out)
	}
	t.Logf("scan: %s", out)
	sm := regexp.MustCompile(`BAD \[(\d+)\]`).FindStringSubmatch(out)
	if sm == nil {
		t.Fatalf("want exactly one unreadable block:\n%s", out)
	}
	if _, err := m.WaitForLine(regexp.MustCompile(`(?i)integrity`), 30*time.Second); err != nil {
		t.Error("the appliance did not report the integrity failure:", err)
	}
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
