package appliance

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// serverKeyInfo labels the HKDF derivation of the NBD server key.
const serverKeyInfo = "embassy nbd server key v1"

// ServerIdentity is the appliance's NBD server certificate and key.
type ServerIdentity struct {
	// Certificate is ready for tls.Config.Certificates.
	Certificate tls.Certificate
	// CertPEM is the self-signed certificate clients pin (as their CA file).
	CertPEM []byte
	// Fingerprint is the hex sha256 of the certificate's DER.
	Fingerprint string
}

// DeriveServerIdentity derives the NBD server's Ed25519 key from the KEK
// (HKDF-SHA256) and self-signs a certificate for it, deterministically: the
// same KEK always gives byte-identical certificate and key. Only an
// appliance that passed attestation and unsealed its local share holds the
// KEK, so only it can present this identity; the host's operator, who can
// read the boot image, cannot impersonate it to clients.
//
// The certificate names identity (CN and DNS SAN) and the given IPs, and is
// its own CA, so clients can use it directly as their trust anchor.
func DeriveServerIdentity(kek []byte, identity string, ips []net.IP) (*ServerIdentity, error) {
	seed, err := hkdf.Key(sha256.New, kek, nil, serverKeyInfo, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("appliance: deriving the server key: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	clear(seed)
	pub := priv.Public().(ed25519.PublicKey)
	serial := sha256.Sum256(pub)
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(serial[:16]),
		Subject:               pkix.Name{CommonName: identity, Organization: []string{"Embassy appliance"}},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2099, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{identity},
		IPAddresses:           ips,
	}
	// Ed25519 signatures are deterministic, so is the certificate.
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("appliance: self-signing the server certificate: %w", err)
	}
	fp := sha256.Sum256(der)
	return &ServerIdentity{
		Certificate: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv},
		CertPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Fingerprint: hex.EncodeToString(fp[:]),
	}, nil
}

// Zeroize wipes the private key.
func (s *ServerIdentity) Zeroize() {
	if k, ok := s.Certificate.PrivateKey.(ed25519.PrivateKey); ok {
		clear(k)
	}
}
