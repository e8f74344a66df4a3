package qemu_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/qemu"
)

// selfSignedPEM returns a throwaway CA certificate.
func selfSignedPEM(t testing.TB, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// applianceConfig is a configuration for QEMU's user network: static
// 10.0.2.15, the host's loopback at 10.0.2.2.
func applianceConfig(t testing.TB, verifierPort int) []byte {
	t.Helper()
	ca := selfSignedPEM(t, "test CA")
	b, err := json.Marshal(map[string]any{
		"version":  1,
		"identity": "lux-01",
		"verifier": map[string]any{"url": fmt.Sprintf("https://10.0.2.2:%d", verifierPort), "ca_pem": ca},
		"nbd": map[string]any{"client_ca_pem": ca, "exports": []any{
			map[string]any{"name": "registers", "grants": []any{map[string]any{"identity": "tallinn-client", "access": "rw"}}},
		}},
		"network": map[string]any{"mode": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2"},
		"retry":   map[string]any{"initial": "1s", "max": "4s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	imageOnce sync.Once
	imageDir  string
)

// buildAppliance builds the appliance image once per test binary run.
func buildAppliance(t testing.TB, config []byte, name string) qemu.Image {
	t.Helper()
	imageOnce.Do(func() {
		d, err := os.MkdirTemp("", "embassy-qemu-images-")
		if err != nil {
			t.Fatal(err)
		}
		imageDir = d
	})
	img, err := qemu.BuildImage(context.Background(), qemu.ImageOptions{
		ModuleDir: moduleRoot(t),
		OutDir:    imageDir,
		Config:    config,
		Modules:   []string{"virtio_pci", "virtio_blk", "virtio_net"},
		Name:      name,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initrd %s: %v (built in %v)", name, img.Initramfs, img.BuildTime.Round(time.Millisecond))
	return img
}

func dataDisk(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// TestApplianceBootReachesVerifier boots the production image with a data
// disk and a TPM: the appliance must measure itself into PCR 15, load its
// modules, bring up the network, open the disk, reach the verifier's port
// through QEMU's user network, and report why it is not serving.
func TestApplianceBootReachesVerifier(t *testing.T) {
	tools(t)
	// A TCP listener stands in for the verifier's address: the test checks
	// the appliance reaches it from inside the guest.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
			accepted <- struct{}{}
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	img := buildAppliance(t, applianceConfig(t, port), "reach.initrd")

	m := startT(t, qemu.Config{
		Kernel: img.Kernel, Initrd: img.Initrd, Append: qemu.DefaultAppend,
		DataDisk: dataDisk(t, 256<<20),
		Forwards: []qemu.Forward{{GuestPort: 10809}},
	})
	steps := []string{
		`msg="appliance program started"`,
		`msg=measured type=binary`,
		`msg=measured type=config`,
		`msg=pcr when="after measuring" index=15 sha256=[0-9a-f]{64}`,
		`msg="step done" step=modules`,
		`msg="step done" step=network`,
		`msg="data disk" device=/dev/vda bytes=268435456`,
		`msg="verifier reachable"`,
		`msg="not serving; will retry"`,
	}
	for _, s := range steps {
		l, err := m.WaitForLine(regexp.MustCompile(s), 120*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%6.2fs %s", l.At.Seconds(), l.Text)
	}
	select {
	case <-accepted:
	default:
		t.Error("the verifier's listener saw no connection")
	}
	// PCR 15 is not all zeros: the appliance extended it.
	l2, _ := m.WaitForLine(regexp.MustCompile(`index=15 sha256=`), time.Second)
	if regexp.MustCompile(`sha256=0{64}`).MatchString(l2.Text) {
		t.Errorf("PCR 15 still zero: %s", l2.Text)
	}
	if _, err := m.WaitForLine(regexp.MustCompile(`serving NBD`), time.Second); err == nil {
		t.Error("served without attestation")
	}
}
