package qemu_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
)

const (
	applianceID = "lux-01"
	clientID    = "tallinn-client"
	nbdPort     = 10809
)

// chain is a verifier, a client PKI, a manufactured TPM and an appliance
// image configured for them.
type chain struct {
	v       *qemu.Verifier
	tpm     *qemu.TPM
	certs   string // libnbd tls-certificates directory
	config  []byte
	img     qemu.Image
	binary  []byte
	initrd  []byte
	disk    string
	release int
}

func newChain(t *testing.T, lease time.Duration) *chain {
	t.Helper()
	tools(t)
	testenv.Tool(t, "swtpm_setup")
	ctx := context.Background()
	c := &chain{certs: filepath.Join(t.TempDir(), "certs")}
	var err error
	if c.v, err = qemu.StartVerifier(ctx, qemu.VerifierOptions{Dir: t.TempDir(), Lease: lease}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.v.Close)
	clientCA, err := qemu.ClientPKI(c.certs, clientID)
	if err != nil {
		t.Fatal(err)
	}
	if c.tpm, err = qemu.ManufactureTPM(ctx, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if err := c.v.Enroll(ctx, applianceID, c.tpm); err != nil {
		t.Fatal(err)
	}
	if c.config, err = qemu.ApplianceConfig(qemu.ConfigOptions{
		Identity: applianceID, VerifierURL: c.v.GuestURL, VerifierCAPEM: c.v.CAPEM,
		ClientCAPEM: clientCA, ClientIdentity: clientID,
	}); err != nil {
		t.Fatal(err)
	}
	c.img = buildAppliance(t, c.config, fmt.Sprintf("%s.initrd", t.Name()))
	if c.binary, err = os.ReadFile(filepath.Join(filepath.Dir(c.img.Initrd), "embassy-appliance")); err != nil {
		t.Fatal(err)
	}
	if c.initrd, err = os.ReadFile(c.img.Initrd); err != nil {
		t.Fatal(err)
	}
	c.disk = dataDisk(t, 256<<20) // the store keeps two slots per block
	return c
}

// boot starts the appliance on the chain's TPM and disk.
func (c *chain) boot(t *testing.T, initrd string) *qemu.Machine {
	t.Helper()
	if initrd == "" {
		initrd = c.img.Initrd
	}
	return startT(t, qemu.Config{
		Kernel: c.img.Kernel, Initrd: initrd, Append: qemu.DefaultAppend,
		DataDisk: c.disk, TPMState: c.tpm.StateDir,
		Forwards: []qemu.Forward{{GuestPort: nbdPort}},
	})
}

// publish publishes the release of the chain's image: PCR 9 and 15
// predicted from the build, PCR 4 (the kernel as QEMU patched it) read from
// the booted appliance's console. The predicted PCR 9 must equal what the
// firmware measured.
func (c *chain) publish(t *testing.T, m *qemu.Machine) {
	t.Helper()
	if _, err := m.WaitForLine(regexp.MustCompile(`msg=pcr when="after measuring" index=15`), 240*time.Second); err != nil {
		t.Fatal(err)
	}
	got := m.MeasuredPCRs()
	p9 := qemu.PredictPCR9(qemu.DefaultAppend, c.initrd)
	if !bytes.Equal(got[9], p9) {
		t.Fatalf("PCR 9 measured %x, predicted %x", got[9], p9)
	}
	p15, err := qemu.PredictPCR15(c.binary, c.config)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[15], p15) {
		t.Fatalf("PCR 15 measured %x, predicted %x", got[15], p15)
	}
	c.release++
	if err := c.v.Publish(context.Background(), fmt.Sprintf("test.%d", c.release), c.initrd,
		map[int][]byte{4: got[4], 9: p9, 15: p15}); err != nil {
		t.Fatal(err)
	}
}

// waitServing waits for the appliance to serve and pins its identity.
func (c *chain) waitServing(t *testing.T, m *qemu.Machine, from int) qemu.Line {
	t.Helper()
	l, err := m.WaitForLineFrom(from, regexp.MustCompile(`msg="serving NBD"`), 240*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pemCert, fp, err := m.ServerIdentity(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.certs, "ca-cert.pem"), pemCert, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("serving %.2fs after QEMU start (server identity %s…)", l.At.Seconds(), fp[:16])
	return l
}

func (c *chain) uri(m *qemu.Machine) string {
	return fmt.Sprintf("nbds://%s/registers?tls-certificates=%s", m.HostAddr(nbdPort), c.certs)
}

func nbdcopy(t *testing.T, args ...string) (time.Duration, error) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "nbdcopy"), args...)
	cmd.Env = testenv.SystemPathEnv()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("nbdcopy %v: %w\n%s", args, err, out)
	}
	return time.Since(start), nil
}

// readBack copies the whole export into a file and returns its first n bytes.
func readBack(t *testing.T, uri string, n int) []byte {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "readback")
	os.WriteFile(dst, nil, 0o600)
	d, err := nbdcopy(t, uri, dst)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("read %d MiB back in %v", len(b)>>20, d.Round(time.Millisecond))
	if len(b) < n {
		t.Fatalf("export holds %d bytes, wrote %d", len(b), n)
	}
	return b[:n]
}

// TestE2EProvisionServeReboot is scenario 1: first boot provisions and
// serves; 64 MiB written with nbdcopy over TLS read back identical; after a
// reboot (same TPM, same disk) the data is still there.
func TestE2EProvisionServeReboot(t *testing.T) {
	c := newChain(t, 0)
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

	// Reboot: same TPM, same disk.
	m.Close()
	m2 := c.boot(t, "")
	c.waitServing(t, m2, 0)
	if _, err := m2.WaitForLine(regexp.MustCompile(`msg="store opened"`), time.Second); err != nil {
		t.Error("second boot did not open the existing store:", err)
	}
	if !bytes.Equal(readBack(t, c.uri(m2), len(data)), data) {
		t.Fatal("data after reboot differs")
	}
}
