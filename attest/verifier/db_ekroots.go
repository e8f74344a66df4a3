package verifier

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
)

// oidSubjectAltName: EK certificates carry the TPM's identity in a critical
// SAN of directory names, which crypto/x509 does not handle.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

func verifyEKCert(cert *x509.Certificate, roots []*x509.Certificate) error {
	// Self-signed CAs are anchors; others (a manufacturer's issuing CA)
	// are intermediates that must chain to an anchor.
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		if r.CheckSignatureFrom(r) == nil {
			pool.AddCert(r)
		} else {
			inter.AddCert(r)
		}
	}
	c := *cert
	c.UnhandledCriticalExtensions = nil
	for _, oid := range cert.UnhandledCriticalExtensions {
		if !oid.Equal(oidSubjectAltName) {
			c.UnhandledCriticalExtensions = append(c.UnhandledCriticalExtensions, oid)
		}
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %v", ErrEKCert, err)
	}
	return nil
}

// AddEKRoot trusts a TPM manufacturer CA (root or intermediate) for EK
// certificates.
func (d *DB) AddEKRoot(ctx context.Context, cert *x509.Certificate, actor string) error {
	sum := sha256.Sum256(cert.Raw)
	fp := hex.EncodeToString(sum[:])
	return d.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO ek_roots (fingerprint, der, subject) VALUES (?,?,?) ON CONFLICT DO NOTHING`, fp, cert.Raw, cert.Subject.String()); err != nil {
			return fmt.Errorf("verifier: add EK root: %w", err)
		}
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Action: "ek-root-add", Outcome: "ok", PCR: -1,
			Detail: cert.Subject.String() + " sha256 " + fp})
	})
}

func (d *DB) ekRoots(ctx context.Context) ([]*x509.Certificate, error) {
	return queryAll(ctx, d, "EK roots", `SELECT der FROM ek_roots`, nil, func(rows *sql.Rows) (*x509.Certificate, error) {
		var der []byte
		if err := rows.Scan(&der); err != nil {
			return nil, err
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("verifier: stored EK root: %w", err)
		}
		return c, nil
	})
}

// EKRoot is a trusted EK CA.
type EKRoot struct {
	Fingerprint string `json:"sha256"`
	Subject     string `json:"subject"`
}

// EKRoots lists the trusted EK CAs.
func (d *DB) EKRoots(ctx context.Context) ([]EKRoot, error) {
	out, err := queryAll(ctx, d, "EK roots", `SELECT fingerprint, subject FROM ek_roots ORDER BY subject`, nil, func(rows *sql.Rows) (EKRoot, error) {
		var r EKRoot
		err := rows.Scan(&r.Fingerprint, &r.Subject)
		return r, err
	})
	if out == nil && err == nil {
		out = []EKRoot{} // JSON [] rather than null
	}
	return out, err
}
