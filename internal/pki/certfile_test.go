package pki_test

import (
	"crypto/x509"
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

func TestCAFilesRoundTrip(t *testing.T) {
	ca, err := pki.NewCA("operators", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(dir); err == nil {
		t.Error("WriteFiles overwrote an existing CA")
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key file: %v, %v", fi, err)
	}
	got, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := got.Issue(pki.LeafOptions{CommonName: "alice", Usage: pki.Client, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("a leaf of the loaded CA does not verify against the original: %v", err)
	}

	// A key that is not the certificate's, and a missing directory.
	other, _ := pki.NewCA("other", time.Hour)
	mixed := t.TempDir()
	if err := other.WriteFiles(mixed); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mixed, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(mixed); err == nil {
		t.Error("LoadCA paired a certificate with another CA's key")
	}
	if _, err := pki.LoadCA(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadCA of a missing directory succeeded")
	}
}

func TestReadPoolFile(t *testing.T) {
	ca, err := pki.NewCA("clients", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(good, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("not PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	pool, err := pki.ReadPoolFile(good)
	if err != nil || !pool.Equal(ca.Pool()) {
		t.Errorf("ReadPoolFile(%s): %v", good, err)
	}
	if _, err := pki.ReadPoolFile(bad); err == nil {
		t.Error("a file without a certificate read as a pool")
	}
	if _, err := pki.ReadPoolFile(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("a missing file read as a pool")
	}
}
