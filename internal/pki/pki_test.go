package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/pki"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue(pki.LeafOptions{CommonName: "server", Usage: pki.Server, Hosts: []string{"127.0.0.1", "localhost"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue(pki.LeafOptions{CommonName: "backup-1", Usage: pki.Client, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		leaf    *pki.Leaf
		roots   *pki.CA
		usage   x509.ExtKeyUsage
		host    string
		wantErr bool
	}{
		{"server by IP", srv, ca, x509.ExtKeyUsageServerAuth, "127.0.0.1", false},
		{"server by name", srv, ca, x509.ExtKeyUsageServerAuth, "localhost", false},
		{"server wrong host", srv, ca, x509.ExtKeyUsageServerAuth, "10.0.2.2", true},
		{"server as client", srv, ca, x509.ExtKeyUsageClientAuth, "", true},
		{"client", cli, ca, x509.ExtKeyUsageClientAuth, "", false},
		{"client as server", cli, ca, x509.ExtKeyUsageServerAuth, "", true},
		{"other CA", cli, other, x509.ExtKeyUsageClientAuth, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.leaf.Cert.Verify(x509.VerifyOptions{Roots: tc.roots.Pool(), KeyUsages: []x509.ExtKeyUsage{tc.usage}, DNSName: tc.host})
			if (err != nil) != tc.wantErr {
				t.Fatalf("Verify: err = %v, want error %v", err, tc.wantErr)
			}
		})
	}
	if srv.Cert.SerialNumber.Cmp(cli.Cert.SerialNumber) == 0 {
		t.Error("two leaves share a serial number")
	}
	if !srv.Cert.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || srv.Cert.DNSNames[0] != "localhost" {
		t.Errorf("server SANs = %v %v", srv.Cert.IPAddresses, srv.Cert.DNSNames)
	}
}

func TestWriteFilesLoadsAsKeyPair(t *testing.T) {
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: "c", Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	if err := leaf.WriteFiles(dir, "client"); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "client-cert.pem"), filepath.Join(dir, "client-key.pem")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := tls.X509KeyPair(ca.CertPEM(), leaf.KeyPEM()); err == nil {
		t.Error("CA certificate paired with the leaf key")
	}
}

func TestIssueRejectsBadOptions(t *testing.T) {
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []pki.LeafOptions{
		{CommonName: "no validity"},
		{CommonName: "bad usage", Usage: pki.Usage(7), Validity: time.Hour},
		{CommonName: "empty role", Roles: []string{"viewer", ""}, Validity: time.Hour},
	} {
		if _, err := ca.Issue(o); err == nil {
			t.Errorf("Issue(%+v) succeeded", o)
		}
	}
}

func TestRoles(t *testing.T) {
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, roles := range [][]string{nil, {"viewer"}, {"auditor", "enroller", "revoker"}} {
		// Given out of order and with a duplicate: read back sorted, once.
		given := append(slices.Clone(roles), roles...)
		slices.Reverse(given)
		leaf, err := ca.Issue(pki.LeafOptions{CommonName: "alice", Usage: pki.Client, Roles: given, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		// Parse the DER again: the roles must survive the encoding.
		c, err := x509.ParseCertificate(leaf.Cert.Raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := pki.Roles(c); !slices.Equal(got, roles) || c.Subject.CommonName != "alice" {
			t.Errorf("roles %q: certificate has CN %q, roles %q", roles, c.Subject.CommonName, got)
		}
	}
}
