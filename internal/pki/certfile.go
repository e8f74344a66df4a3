package pki

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
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
