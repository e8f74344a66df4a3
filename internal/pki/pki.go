// Package pki issues the small X.509 hierarchies Embassy's tools and tests
// need: a private CA and the server and client certificates it signs.
//
// The verifier's `--init-tls` uses it for the HTTPS identity appliances pin;
// tests and the QEMU harness use it for throwaway CAs (home-state clients,
// rogue CAs, verifier identities). Keys are ECDSA P-256 and serial numbers
// are random 127-bit integers, as RFC 5280 recommends for unpredictability.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// clockSkew backdates NotBefore so that a peer whose clock runs slightly
// behind (a freshly booted guest) still accepts a certificate issued now.
const clockSkew = time.Hour

// CA is a certificate authority: a self-signed certificate and its key.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Key signs the certificates the CA issues.
	Key *ecdsa.PrivateKey
}

// NewCA makes a CA named commonName, valid from now for validity.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	cert, err := create(tmpl, tmpl, key, key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA %q: %w", commonName, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM returns the CA certificate in PEM.
func (ca *CA) CertPEM() []byte { return certPEM(ca.Cert) }

// Roles returns the roles a certificate carries: its subject's
// OrganizationalUnit values as LeafOptions.Roles wrote them, sorted and
// without duplicates (X.509 does not keep their order). The caller decides
// which names mean something; only a verified certificate's roles are
// worth reading.
func Roles(c *x509.Certificate) []string {
	r := slices.Clone(c.Subject.OrganizationalUnit)
	slices.Sort(r)
	return slices.Compact(r)
}

// Pool returns a pool holding only this CA, for RootCAs or ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Usage says what a leaf certificate authenticates.
type Usage int

const (
	// Client is a TLS client certificate (ExtKeyUsageClientAuth).
	Client Usage = iota
	// Server is a TLS server certificate (ExtKeyUsageServerAuth).
	Server
)

// LeafOptions describe a certificate to issue.
type LeafOptions struct {
	// CommonName is the subject's CN; for clients it is the identity the
	// NBD server's grants name.
	CommonName string
	// Usage is Client or Server.
	Usage Usage
	// Hosts are the IP addresses and DNS names a server certificate is
	// valid for (each string is parsed as an IP first).
	Hosts []string
	// URIs are URI subject alternative names.
	URIs []*url.URL
	// Validity is how long the certificate is valid from now.
	Validity time.Duration
	// Roles are written as the subject's OrganizationalUnit values: the
	// verifier's admin API reads an operator's roles from them (see
	// Roles). Each must be non-empty.
	Roles []string
}

// Leaf is an issued certificate and its private key.
type Leaf struct {
	// Cert is the certificate.
	Cert *x509.Certificate
	// Key is its private key.
	Key *ecdsa.PrivateKey

	keyDER []byte // PKCS #8
}

// Issue signs a new leaf certificate with a fresh key.
func (ca *CA) Issue(o LeafOptions) (*Leaf, error) {
	if o.Validity <= 0 {
		return nil, errors.New("pki: leaf validity must be positive")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: leaf key: %w", err)
	}
	now := time.Now()
	for _, r := range o.Roles {
		if r == "" {
			return nil, errors.New("pki: empty role")
		}
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: o.CommonName, OrganizationalUnit: o.Roles},
		NotBefore: now.Add(-clockSkew),
		NotAfter:  now.Add(o.Validity),
		KeyUsage:  x509.KeyUsageDigitalSignature,
		URIs:      o.URIs,
	}
	switch o.Usage {
	case Client:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case Server:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	default:
		return nil, fmt.Errorf("pki: unknown usage %d", o.Usage)
	}
	for _, h := range o.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	cert, err := create(tmpl, ca.Cert, key, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate for %q: %w", o.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: key for %q: %w", o.CommonName, err)
	}
	return &Leaf{Cert: cert, Key: key, keyDER: keyDER}, nil
}

// CertPEM returns the certificate in PEM.
func (l *Leaf) CertPEM() []byte { return certPEM(l.Cert) }

// KeyPEM returns the private key as PEM-encoded PKCS #8.
func (l *Leaf) KeyPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: l.keyDER})
}

// TLSCertificate returns the leaf for tls.Config.Certificates.
func (l *Leaf) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
}

// WriteFiles writes the certificate to dir/prefix-cert.pem (mode 0644) and
// the key to dir/prefix-key.pem (mode 0600), creating dir. With prefix
// "client" this is the layout GnuTLS-based NBD clients (libnbd's
// tls-certificates, qemu's tls-creds-x509) read.
func (l *Leaf) WriteFiles(dir, prefix string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, prefix+"-cert.pem"), l.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, prefix+"-key.pem"), l.KeyPEM(), 0o600); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

func create(tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) (*x509.Certificate, error) {
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	tmpl.SerialNumber = sn
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
