package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/testenv"
)

// writeCert issues a certificate (self-signed when parent is nil) and
// writes it and its key as PEM files named prefix-cert.pem/prefix-key.pem.
func writeCert(t *testing.T, dir, prefix string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(filepath.Join(dir, prefix+"-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, prefix+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func TestServeTLSGrants(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, caKey := writeCert(t, dir, "ca", &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	writeCert(t, dir, "server", &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "server"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}, ca, caKey)
	clients := map[string]string{} // CN -> certificate directory for libnbd
	for i, cn := range []string{"reader", "stranger"} {
		cdir := filepath.Join(dir, cn)
		os.Mkdir(cdir, 0o700)
		writeCert(t, cdir, "client", &x509.Certificate{
			SerialNumber: big.NewInt(int64(10 + i)), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, ca, caKey)
		b, _ := os.ReadFile(filepath.Join(dir, "ca-cert.pem"))
		os.WriteFile(filepath.Join(cdir, "ca-cert.pem"), b, 0o600)
		clients[cn] = cdir
	}
	img := filepath.Join(dir, "d.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	port, stop := startServe(t, "--file", img,
		"--tls-cert", filepath.Join(dir, "server-cert.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--client-ca", filepath.Join(dir, "ca-cert.pem"), "--grant", "reader=disk:ro")
	nbdinfo := func(cn string) (string, error) {
		cmd := exec.Command(testenv.Tool(t, "nbdinfo"), "nbds://127.0.0.1:"+port+"/disk?tls-certificates="+clients[cn])
		cmd.Env = testenv.SystemPathEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := nbdinfo("reader")
	if err != nil || !strings.Contains(out, "is_read_only: true") {
		t.Errorf("reader: %v\n%s", err, out)
	}
	if out, err := nbdinfo("stranger"); err == nil {
		t.Errorf("a client without a grant connected:\n%s", out)
	}
	stop()
}
