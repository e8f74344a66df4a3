package qemu_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/qemu"
)

// resealedRE matches the appliance's console line after it sealed its
// local share to a release a quorum of verifiers named as a seal target
// and wrote the blob into the disk header.
func resealedRE(release string) *regexp.Regexp {
	return regexp.MustCompile(`(?i)seal.*` + regexp.QuoteMeta(release))
}

// TestE2EUpgrade keeps the store across an upgrade, 2 of 3 verifiers:
// release 1 boots, provisions and takes 16 MiB over NBD; release 2, whose
// configuration differs from release 1's in one byte, is published while
// the appliance runs; on a heartbeat the appliance learns the new seal
// target and writes its sealed local share for release 2 into the disk
// header; a reboot (same TPM, same disk) into release 2 serves the same
// data (sha256); with release 1 withdrawn, booting release 1 is refused.
func TestE2EUpgrade(t *testing.T) {
	const lease = 30 * time.Second
	c := newClusterChain(t, verifierNames, 2, lease)
	ctx := context.Background()
	config2 := bytes.Replace(c.config, []byte(`"initial": "1s"`), []byte(`"initial": "2s"`), 1)
	if bytes.Equal(config2, c.config) || len(config2) != len(c.config) {
		t.Fatal("could not change one byte of the configuration")
	}
	img2 := buildAppliance(t, config2, t.Name()+".2.initrd")
	sameSize(t, c.img.Initrd, img2.Initrd)
	var err error
	if c.initrd, err = os.ReadFile(c.img.Initrd); err != nil {
		t.Fatal(err)
	}
	initrd2, err := os.ReadFile(img2.Initrd)
	if err != nil {
		t.Fatal(err)
	}

	// Release 1: provision and write.
	m := c.boot(t, "")
	c.publish(t, m) // test.1
	c.waitServing(t, m, 0)
	data := c.writeRandom(t, m, 16<<20)
	want := sha256.Sum256(data)

	// Release 2 published while release 1 serves: same kernel (PCR 4 as
	// measured), PCR 9 and 15 predicted from its initrd and configuration.
	p15, err := predict.AppliancePCR(c.binary, config2)
	if err != nil {
		t.Fatal(err)
	}
	from := len(m.Lines())
	c.publishPCRs(t, "test.2", initrd2, map[int][]byte{
		4: m.MeasuredPCRs()[4], 9: predict.KernelBootPCR9(qemu.DefaultAppend, initrd2), 15: p15,
	})
	published := time.Now()
	l, err := m.WaitForLineFrom(from, resealedRE("test.2"), 2*lease)
	if err != nil {
		t.Fatal("the running appliance did not seal to release 2: ", err)
	}
	t.Logf("sealed to release 2 %v after publishing it: %s", time.Since(published).Round(time.Second), l.Text)
	m.Close()

	// Release 2 boots on the same TPM and disk and serves the same data.
	m = c.boot(t, img2.Initrd)
	c.waitServing(t, m, 0)
	if _, err := m.WaitForLine(regexp.MustCompile(`msg="store opened"`), time.Second); err != nil {
		t.Error("release 2 did not open the existing store:", err)
	}
	if got := sha256.Sum256(readBack(t, c.uri(m), len(data))); got != want {
		t.Fatalf("release 2 reads sha256 %x, release 1 wrote %x", got, want)
	}
	m.Close()

	// Release 1 withdrawn everywhere: refused.
	if err := c.cluster.Withdraw(ctx, "test.1"); err != nil {
		t.Fatal(err)
	}
	m = c.boot(t, "")
	l, err = m.WaitForLine(regexp.MustCompile(`reason=refused|HALTED`), 300*time.Second)
	if err != nil {
		t.Fatal("withdrawn release 1: ", err)
	}
	t.Logf("withdrawn release 1: %s", l.Text)
	c.noServing(t, m)
	recs, err := c.v.Audit(ctx, applianceID)
	if err != nil {
		t.Fatal(err)
	}
	if last := recs[len(recs)-1]; last.Outcome != "refused" {
		t.Errorf("verifier %s's last audit record for release 1 after withdrawal: %+v", verifierNames[0], last)
	}
}

// sameSize pads the smaller of two initrds with zero bytes to the size of
// the larger. QEMU's direct kernel boot writes the initrd's size and load
// address into the kernel's setup header, which the firmware measures into
// PCR 4, so two releases differing in one configuration byte would differ
// in PCR 4 whenever their compressed initrds differ in length (the test
// predicts release 2's PCR 4 from release 1's boot). The kernel skips zero
// bytes after an initramfs archive.
func sameSize(t testing.TB, a, b string) {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	small, size := a, fb.Size()
	if fa.Size() > fb.Size() {
		small, size = b, fa.Size()
	}
	if err := os.Truncate(small, size); err != nil {
		t.Fatal(err)
	}
}
