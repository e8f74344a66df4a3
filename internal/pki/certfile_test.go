package pki_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/pki"
)

func TestReadCertFile(t *testing.T) {
	ca, err := pki.NewCA("file CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: "leaf", Usage: pki.Client, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"cert.pem": ca.CertPEM(),
		"cert.der": ca.Cert.Raw,
		// A key before the certificate, as in a combined PEM file.
		"key-then-cert.pem": append(leaf.KeyPEM(), ca.CertPEM()...),
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := pki.ReadCertFile(p)
		if err != nil || !c.Equal(ca.Cert) {
			t.Errorf("%s: %v, %v", name, c, err)
		}
	}
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, leaf.KeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.ReadCertFile(bad); err == nil {
		t.Error("a key file read as a certificate")
	}
	if _, err := pki.ReadCertFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file read as a certificate")
	}
}
