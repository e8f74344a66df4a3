package pki

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
)

// ReadCertFile reads one X.509 certificate from a file, PEM (the first
// CERTIFICATE block) or DER, as operators and TPM vendors hand them out.
func ReadCertFile(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der := b
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			der = blk.Bytes
			break
		}
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	return c, nil
}

// ReadPoolFile reads a pool of trusted certificates from a PEM file (one
// or more CERTIFICATE blocks), refusing a file that holds none.
func ReadPoolFile(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

// CA files: WriteFiles writes a CA as dir/ca.pem (the certificate, mode
// 0644, what peers trust) and dir/ca-key.pem (its key, PKCS #8, mode 0600);
// LoadCA reads them back to issue more certificates.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
)

// WriteFiles writes the CA certificate and key into dir (created with mode
// 0700), refusing to overwrite an existing CA there.
func (ca *CA) WriteFiles(dir string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return fmt.Errorf("pki: CA key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{caKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{caCertFile, ca.CertPEM(), 0o644},
	} {
		fd, err := os.OpenFile(filepath.Join(dir, f.name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		_, err = fd.Write(f.data)
		if cerr := fd.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("pki: %w", err)
		}
	}
	return nil
}

// LoadCA reads a CA that WriteFiles wrote into dir.
func LoadCA(dir string) (*CA, error) {
	cert, err := ReadCertFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", filepath.Join(dir, caCertFile))
	}
	b, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("pki: %s: no PRIVATE KEY block", filepath.Join(dir, caKeyFile))
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", filepath.Join(dir, caKeyFile), err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s is not the key of %s", filepath.Join(dir, caKeyFile), filepath.Join(dir, caCertFile))
	}
	return &CA{Cert: cert, Key: key}, nil
}
