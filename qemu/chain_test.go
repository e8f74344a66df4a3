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
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
)

const (
	applianceID = "lux-01"
	clientID    = "tallinn-client"
	nbdPort     = 10809
	// metricsPort is the appliance's Prometheus listener in the guest,
	// forwarded when the chain has a scraper.
	metricsPort = 9464
)

// imageSeq numbers the chains' images.
var imageSeq atomic.Int32

// chain is a verifier (or a k-of-n cluster of verifier processes), a
// client PKI, a manufactured TPM and an appliance image configured for
// them.
type chain struct {
	// v is the one verifier; with a cluster, its first process (the one
	// the client pins the server identity from).
	v *qemu.Verifier
	// cluster, when set, is every verifier: releases go to each.
	cluster  *qemu.Cluster
	tpm      *qemu.TPM
	certs    string // libnbd tls-certificates directory
	clientCA string
	config   []byte
	img      qemu.Image
	binary   []byte
	initrd   []byte
	disk     string
	release  int
	// scraper, when set, is the Prometheus scraper the appliance's
	// metrics section trusts; boots then forward metricsPort.
	scraper *scraper
}

func newChain(t testing.TB, lease time.Duration) *chain {
	t.Helper()
	return newChainDisk(t, lease, "")
}

// newChainDisk is newChain with the appliance's data disk named
// diskDevice ("" = the appliance's default, /dev/vda).
func newChainDisk(t testing.TB, lease time.Duration, diskDevice string) *chain {
	t.Helper()
	return newChainConfig(t, newChainTPM(t), lease, qemu.ConfigOptions{DiskDevice: diskDevice})
}

// newChainMetrics is newChain with the appliance serving Prometheus
// metrics on metricsPort to the chain's scraper.
func newChainMetrics(t testing.TB, lease time.Duration) *chain {
	t.Helper()
	c := newChainTPM(t)
	c.scraper = newScraper(t)
	return newChainConfig(t, c, lease, qemu.ConfigOptions{
		MetricsListen: fmt.Sprintf(":%d", metricsPort), MetricsClientCAPEM: c.scraper.caPEM,
	})
}

// newChainConfig starts c's verifier, enrolls c's TPM and builds the
// appliance configured with o (its verifier filled in).
func newChainConfig(t testing.TB, c *chain, lease time.Duration, o qemu.ConfigOptions) *chain {
	t.Helper()
	ctx := context.Background()
	var err error
	if c.v, err = qemu.StartVerifier(ctx, qemu.VerifierOptions{Dir: t.TempDir(), Lease: lease}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.v.Close)
	if err := c.v.Enroll(ctx, applianceID, c.tpm); err != nil {
		t.Fatal(err)
	}
	o.VerifierURL, o.VerifierCAPEM = c.v.GuestURL, c.v.CAPEM
	c.build(t, o)
	return c
}

// newChainTPM starts a chain with its client PKI and TPM.
func newChainTPM(t testing.TB) *chain {
	t.Helper()
	tools(t)
	testenv.Tool(t, "swtpm_setup")
	c := &chain{certs: filepath.Join(t.TempDir(), "certs")}
	var err error
	if c.clientCA, err = qemu.ClientPKI(c.certs, clientID); err != nil {
		t.Fatal(err)
	}
	if c.tpm, err = qemu.ManufactureTPM(context.Background(), t.TempDir()); err != nil {
		t.Fatal(err)
	}
	return c
}

// build writes the appliance configuration o (identity and client grant
// filled in), builds its image and makes the data disk.
func (c *chain) build(t testing.TB, o qemu.ConfigOptions) {
	t.Helper()
	o.Identity, o.ClientCAPEM, o.ClientIdentity = applianceID, c.clientCA, clientID
	var err error
	if c.config, err = qemu.ApplianceConfig(o); err != nil {
		t.Fatal(err)
	}
	// One test may build several chains (a benchmark compares two).
	c.img = buildAppliance(t, c.config, fmt.Sprintf("%s-%d.initrd", t.Name(), imageSeq.Add(1)))
	if c.binary, err = os.ReadFile(filepath.Join(filepath.Dir(c.img.Initrd), "embassy-appliance")); err != nil {
		t.Fatal(err)
	}
	if c.initrd, err = os.ReadFile(c.img.Initrd); err != nil {
		t.Fatal(err)
	}
	c.disk = dataDisk(t, 256<<20) // the store keeps two slots per block
}

// boot starts the appliance on the chain's TPM and disk.
func (c *chain) boot(t testing.TB, initrd string) *qemu.Machine {
	t.Helper()
	if initrd == "" {
		initrd = c.img.Initrd
	}
	fw := []qemu.Forward{{GuestPort: nbdPort}}
	if c.scraper != nil {
		fw = append(fw, qemu.Forward{GuestPort: metricsPort})
	}
	return startT(t, qemu.Config{
		Kernel: c.img.Kernel, Initrd: initrd, Append: qemu.DefaultAppend,
		DataDisk: c.disk, TPMState: c.tpm.StateDir, Forwards: fw,
	})
}

// publish publishes the release of the chain's image: PCR 9 and 15
// predicted from the build, PCR 4 (the kernel as QEMU patched it) read from
// the booted appliance's console. The predicted PCR 9 must equal what the
// firmware measured.
func (c *chain) publish(t testing.TB, m *qemu.Machine) {
	t.Helper()
	if _, err := m.WaitForLine(regexp.MustCompile(`msg=pcr when="after measuring" index=15`), 240*time.Second); err != nil {
		t.Fatal(err)
	}
	got := m.MeasuredPCRs()
	p9 := predict.KernelBootPCR9(qemu.DefaultAppend, c.initrd)
	if !bytes.Equal(got[9], p9) {
		t.Fatalf("PCR 9 measured %x, predicted %x", got[9], p9)
	}
	p15, err := predict.AppliancePCR(c.binary, c.config)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[15], p15) {
		t.Fatalf("PCR 15 measured %x, predicted %x", got[15], p15)
	}
	c.release++
	c.publishPCRs(t, fmt.Sprintf("test.%d", c.release), c.initrd, map[int][]byte{4: got[4], 9: p9, 15: p15})
}

// publishPCRs publishes release name expecting pcrs to the verifier, or
// to every verifier of the cluster.
func (c *chain) publishPCRs(t testing.TB, name string, initrd []byte, pcrs map[int][]byte) {
	t.Helper()
	var err error
	if c.cluster != nil {
		err = c.cluster.Publish(context.Background(), name, initrd, pcrs)
	} else {
		err = c.v.Publish(context.Background(), name, initrd, pcrs)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// waitServing waits for the appliance to serve and pins the server
// identity it reported to the verifier.
func (c *chain) waitServing(t testing.TB, m *qemu.Machine, from int) qemu.Line {
	t.Helper()
	l, err := m.WaitForLineFrom(from, regexp.MustCompile(`msg="serving NBD"`), 240*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Pin the identity the appliance reported under a quote, as the home
	// state does, and check it is the one the console shows.
	fp, err := c.v.PinServerIdentity(context.Background(), m, applianceID, from, c.certs, 120*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("serving %.2fs after QEMU start (server identity %s…, recorded by the verifier)", l.At.Seconds(), fp[:16])
	return l
}

func (c *chain) uri(m *qemu.Machine) string {
	return fmt.Sprintf("nbds://%s/registers?tls-certificates=%s", m.HostAddr(nbdPort), c.certs)
}

func nbdcopy(t testing.TB, args ...string) (time.Duration, error) {
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
func readBack(t testing.TB, uri string, n int) []byte {
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

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// noServing checks the appliance never served on this boot and that no NBD
// handshake succeeds on its port.
func (c *chain) noServing(t testing.TB, m *qemu.Machine) {
	t.Helper()
	if l, err := m.WaitForLine(regexp.MustCompile(`msg="serving NBD"`), time.Millisecond); err == nil {
		t.Errorf("served: %s", l.Text)
	}
	cmd := exec.Command(testenv.Tool(t, "nbdinfo"), c.uri(m))
	cmd.Env = testenv.SystemPathEnv()
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("an NBD client got through:\n%s", out)
	}
}

// nbdAnswers reports whether an NBD client gets through to the export.
func (c *chain) nbdAnswers(t testing.TB, m *qemu.Machine) error {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "nbdinfo"), "--size", c.uri(m))
	cmd.Env = testenv.SystemPathEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nbdinfo: %w\n%s", err, out)
	}
	return nil
}

// writeRandom writes size random bytes to the start of m's export with
// nbdcopy over mutual TLS (flushed) and returns them.
func (c *chain) writeRandom(t testing.TB, m *qemu.Machine, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := nbdcopy(t, "--flush", src, c.uri(m)); err != nil {
		t.Fatal(err)
	}
	return data
}
