package verifier

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/release"
)

// Errors returned by operator functions.
var (
	ErrExists      = errors.New("verifier: already exists")
	ErrNotFound    = errors.New("verifier: not found")
	ErrEKCert      = errors.New("verifier: EK certificate not trusted")
	ErrBadArgument = errors.New("verifier: invalid argument")
)

// EnrollParams describes an appliance to enroll.
type EnrollParams struct {
	// ID is the appliance id (protocol.ValidID).
	ID string
	// EKCert is the EK certificate (DER). When EK roots are configured
	// (AddEKRoot) it must chain to one of them. Either EKCert or EKPublic.
	EKCert []byte
	// EKPublic is the EK public key, when no certificate is available.
	// Refused when EK roots are configured.
	EKPublic crypto.PublicKey
	// Actor names the operator, for the audit log.
	Actor string
}

// Enroll records an appliance, its EK and a fresh remote share. The
// appliance then binds its AK by credential activation
// (protocol.PathEnrollChallenge).
func (d *DB) Enroll(ctx context.Context, p EnrollParams) error {
	if !protocol.ValidID(p.ID) {
		return fmt.Errorf("%w: appliance id %q", ErrBadArgument, p.ID)
	}
	roots, err := d.ekRoots(ctx)
	if err != nil {
		return err
	}
	ekPub := p.EKPublic
	var certDER []byte
	switch {
	case p.EKCert != nil:
		cert, err := x509.ParseCertificate(p.EKCert)
		if err != nil {
			return fmt.Errorf("%w: parse: %v", ErrEKCert, err)
		}
		if len(roots) > 0 {
			if err := verifyEKCert(cert, roots); err != nil {
				return err
			}
		}
		ekPub, certDER = cert.PublicKey, p.EKCert
	case ekPub == nil:
		return fmt.Errorf("%w: EK certificate or public key required", ErrBadArgument)
	case len(roots) > 0:
		return fmt.Errorf("%w: EK roots are configured, so an EK certificate is required", ErrEKCert)
	}
	der, err := x509.MarshalPKIXPublicKey(ekPub)
	if err != nil {
		return fmt.Errorf("%w: EK public key: %v", ErrBadArgument, err)
	}
	share, err := keys.NewShare()
	if err != nil {
		return err
	}
	return d.withTx(ctx, func(tx *sql.Tx) error {
		var n int
		tx.QueryRowContext(ctx, `SELECT count(*) FROM appliances WHERE id = ?`, p.ID).Scan(&n)
		if n > 0 {
			return fmt.Errorf("%w: appliance %q", ErrExists, p.ID)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO appliances (id, ek_public, ek_cert, remote_share, created_at, created_by) VALUES (?,?,?,?,?,?)`,
			p.ID, der, certDER, share, d.now().Unix(), p.Actor); err != nil {
			return fmt.Errorf("verifier: enroll: %w", err)
		}
		sum := sha256.Sum256(der)
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: p.Actor, Appliance: p.ID, Action: "enroll", Outcome: "ok", PCR: -1,
			Detail: "EK sha256 " + hex.EncodeToString(sum[:])})
	})
}

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
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO ek_roots (fingerprint, der, subject) VALUES (?,?,?)`, fp, cert.Raw, cert.Subject.String()); err != nil {
			return fmt.Errorf("verifier: add EK root: %w", err)
		}
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Action: "ek-root-add", Outcome: "ok", PCR: -1,
			Detail: cert.Subject.String() + " sha256 " + fp})
	})
}

func (d *DB) ekRoots(ctx context.Context) ([]*x509.Certificate, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT der FROM ek_roots`)
	if err != nil {
		return nil, fmt.Errorf("verifier: EK roots: %w", err)
	}
	defer rows.Close()
	var out []*x509.Certificate
	for rows.Next() {
		var der []byte
		if err := rows.Scan(&der); err != nil {
			return nil, err
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("verifier: stored EK root: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// ApplianceInfo is an appliance's record as operators see it (no secrets).
type ApplianceInfo struct {
	ID          string            `json:"id"`
	EKSHA256    string            `json:"ek_sha256"`
	HasEKCert   bool              `json:"has_ek_cert"`
	Created     time.Time         `json:"created"`
	AKName      string            `json:"ak_name,omitempty"`
	Activated   *time.Time        `json:"activated,omitempty"`
	Baseline    map[string]string `json:"baseline,omitempty"`
	LastEpoch   uint64            `json:"last_epoch"`
	Release     string            `json:"release,omitempty"`
	LeaseUntil  *time.Time        `json:"lease_until,omitempty"`
	Revoked     *time.Time        `json:"revoked,omitempty"`
	RevokedBy   string            `json:"revoked_by,omitempty"`
	RevokReason string            `json:"revoke_reason,omitempty"`
	// ServerCert is the DER certificate of the NBD server identity the
	// appliance last reported in a quoted heartbeat (nil: none yet). The
	// home state's NBD clients pin it as their CA.
	ServerCert []byte `json:"server_cert,omitempty"`
	// ServerCertSHA256 is the hex SHA-256 of ServerCert, as the appliance
	// prints it on its console.
	ServerCertSHA256 string `json:"server_cert_sha256,omitempty"`
	// ServerCertRecorded is when ServerCert was first reported.
	ServerCertRecorded *time.Time `json:"server_cert_recorded,omitempty"`
	// ServerCertRelease is the release the reporting boot matched.
	ServerCertRelease string `json:"server_cert_release,omitempty"`
}

// State is the appliance's state in one word: "enrolled" (no AK yet),
// "active", "revoked".
func (a *ApplianceInfo) State() string {
	switch {
	case a.Revoked != nil:
		return "revoked"
	case a.AKName == "":
		return "enrolled"
	}
	return "active"
}

// Appliances lists all appliances, ordered by id.
func (d *DB) Appliances(ctx context.Context) ([]ApplianceInfo, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id FROM appliances ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("verifier: list: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	out := make([]ApplianceInfo, 0, len(ids))
	for _, id := range ids {
		a, err := d.Appliance(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, *a)
	}
	return out, nil
}

// Appliance returns one appliance's record.
func (d *DB) Appliance(ctx context.Context, id string) (*ApplianceInfo, error) {
	var a ApplianceInfo
	var ek, cert []byte
	var created int64
	err := d.db.QueryRowContext(ctx, `SELECT id, ek_public, ek_cert, created_at FROM appliances WHERE id = ?`, id).Scan(&a.ID, &ek, &cert, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: appliance %q", ErrNotFound, id)
	} else if err != nil {
		return nil, fmt.Errorf("verifier: appliance: %w", err)
	}
	sum := sha256.Sum256(ek)
	a.EKSHA256, a.HasEKCert, a.Created = hex.EncodeToString(sum[:]), cert != nil, time.Unix(created, 0).UTC()
	var act int64
	if err := d.db.QueryRowContext(ctx, `SELECT ak_name, activated_at FROM enrollments WHERE appliance = ?`, id).Scan(&a.AKName, &act); err == nil {
		t := time.Unix(act, 0).UTC()
		a.Activated = &t
	}
	base, err := d.baseline(ctx, d.db, id)
	if err != nil {
		return nil, err
	}
	if len(base) > 0 {
		a.Baseline = map[string]string{}
		for k, v := range base {
			a.Baseline[strconv.Itoa(k)] = hex.EncodeToString(v)
		}
	}
	var ep int64
	if err := d.db.QueryRowContext(ctx, `SELECT last_epoch FROM epochs WHERE appliance = ?`, id).Scan(&ep); err == nil {
		a.LastEpoch = uint64(ep)
	}
	var until int64
	if err := d.db.QueryRowContext(ctx, `SELECT release, until FROM leases WHERE appliance = ?`, id).Scan(&a.Release, &until); err == nil {
		t := time.Unix(until, 0).UTC()
		a.LeaseUntil = &t
	}
	var rev int64
	if err := d.db.QueryRowContext(ctx, `SELECT revoked_at, revoked_by, reason FROM revocations WHERE appliance = ?`, id).Scan(&rev, &a.RevokedBy, &a.RevokReason); err == nil {
		t := time.Unix(rev, 0).UTC()
		a.Revoked = &t
	}
	var rec int64
	err = d.db.QueryRowContext(ctx, `SELECT cert, sha256, release, recorded_at FROM server_identities WHERE appliance = ?`, id).
		Scan(&a.ServerCert, &a.ServerCertSHA256, &a.ServerCertRelease, &rec)
	switch {
	case err == nil:
		t := time.Unix(rec, 0).UTC()
		a.ServerCertRecorded = &t
	case !errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("verifier: server identity: %w", err)
	}
	return &a, nil
}

type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

// stmtQuerier runs a prepared statement in place of its text.
type stmtQuerier struct{ st *sql.Stmt }

func (s stmtQuerier) QueryContext(ctx context.Context, _ string, args ...any) (*sql.Rows, error) {
	return s.st.QueryContext(ctx, args...)
}

func (d *DB) baseline(ctx context.Context, q querier, id string) (map[int][]byte, error) {
	const sel = `SELECT pcr, value FROM baselines WHERE appliance = ?`
	if q == querier(d.db) {
		st, err := d.prep(sel)
		if err != nil {
			return nil, err
		}
		q = stmtQuerier{st}
	}
	rows, err := q.QueryContext(ctx, sel, id)
	if err != nil {
		return nil, fmt.Errorf("verifier: baseline: %w", err)
	}
	defer rows.Close()
	out := map[int][]byte{}
	for rows.Next() {
		var pcr int
		var v []byte
		if err := rows.Scan(&pcr, &v); err != nil {
			return nil, err
		}
		out[pcr] = v
	}
	return out, rows.Err()
}

// Revoke revokes an appliance: its next attestation (unlock or heartbeat)
// is refused with protocol.CodeRevoked, and the appliance must zeroize.
func (d *DB) Revoke(ctx context.Context, id, reason, actor string) error {
	return d.withTx(ctx, func(tx *sql.Tx) error {
		var n int
		tx.QueryRowContext(ctx, `SELECT count(*) FROM appliances WHERE id = ?`, id).Scan(&n)
		if n == 0 {
			return fmt.Errorf("%w: appliance %q", ErrNotFound, id)
		}
		res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO revocations (appliance, revoked_at, revoked_by, reason) VALUES (?,?,?,?)`, id, d.now().Unix(), actor, reason)
		if err != nil {
			return fmt.Errorf("verifier: revoke: %w", err)
		}
		if k, _ := res.RowsAffected(); k == 0 {
			return fmt.Errorf("%w: appliance %q is already revoked", ErrExists, id)
		}
		tx.ExecContext(ctx, `DELETE FROM leases WHERE appliance = ?`, id)
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Appliance: id, Action: "revoke", Outcome: "ok", PCR: -1, Detail: reason})
	})
}

// AddReleaseKey trusts a release signing key.
func (d *DB) AddReleaseKey(ctx context.Context, pub ed25519.PublicKey, actor string) error {
	id := release.KeyID(pub)
	return d.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO release_keys (key_id, public_key, added_at) VALUES (?,?,?)`, id, []byte(pub), d.now().Unix()); err != nil {
			return fmt.Errorf("verifier: add release key: %w", err)
		}
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Action: "release-key-add", Outcome: "ok", PCR: -1, Detail: id})
	})
}

// SetReleaseThreshold sets k, the number of distinct trusted release keys
// that must sign a release.
func (d *DB) SetReleaseThreshold(ctx context.Context, k int, actor string) error {
	if k < 1 {
		return fmt.Errorf("%w: threshold %d", ErrBadArgument, k)
	}
	return d.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ('release_threshold', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, strconv.Itoa(k)); err != nil {
			return fmt.Errorf("verifier: set threshold: %w", err)
		}
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Action: "release-threshold", Outcome: "ok", PCR: -1, Detail: strconv.Itoa(k)})
	})
}

// ReleaseKeys returns the trusted release keys and the threshold.
func (d *DB) ReleaseKeys(ctx context.Context) ([]ed25519.PublicKey, int, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT public_key FROM release_keys ORDER BY key_id`)
	if err != nil {
		return nil, 0, fmt.Errorf("verifier: release keys: %w", err)
	}
	defer rows.Close()
	var keys []ed25519.PublicKey
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, 0, err
		}
		if len(b) != ed25519.PublicKeySize {
			return nil, 0, fmt.Errorf("verifier: stored release key of %d bytes", len(b))
		}
		keys = append(keys, ed25519.PublicKey(b))
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	ks, err := d.Setting(ctx, "release_threshold", "1")
	if err != nil {
		return nil, 0, err
	}
	k, err := strconv.Atoi(ks)
	if err != nil || k < 1 {
		return nil, 0, fmt.Errorf("verifier: stored release threshold %q", ks)
	}
	return keys, k, nil
}

// PublishRelease verifies env against the trusted release keys and
// threshold and makes its PCRs acceptable for attestation.
func (d *DB) PublishRelease(ctx context.Context, env *release.Envelope, actor string) (*release.Verified, error) {
	trusted, k, err := d.ReleaseKeys(ctx)
	if err != nil {
		return nil, err
	}
	v, err := env.Verify(trusted, k)
	if err != nil {
		return nil, err
	}
	raw, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	dg := hex.EncodeToString(v.Digest[:])
	err = d.withTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO releases (digest, name, release, envelope, published_at, published_by) VALUES (?,?,?,?,?,?)`,
			dg, v.Manifest.Name, v.Manifest.Release, raw, d.now().Unix(), actor)
		if err != nil {
			return fmt.Errorf("verifier: publish: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: release %s", ErrExists, dg)
		}
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Action: "release-publish", Outcome: "ok", PCR: -1,
			Detail: fmt.Sprintf("%s %s %s signed by %v", v.Manifest.Name, v.Manifest.Release, dg, v.SignedBy)})
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// WithdrawRelease stops accepting a published release.
func (d *DB) WithdrawRelease(ctx context.Context, digest, actor string) error {
	return d.withTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE releases SET withdrawn_at = ? WHERE digest = ? AND withdrawn_at IS NULL`, d.now().Unix(), digest)
		if err != nil {
			return fmt.Errorf("verifier: withdraw: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: published release %s", ErrNotFound, digest)
		}
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Action: "release-withdraw", Outcome: "ok", PCR: -1, Detail: digest})
	})
}

// ReleaseInfo describes a published release.
type ReleaseInfo struct {
	Digest    string     `json:"digest"`
	Name      string     `json:"name"`
	Release   string     `json:"release"`
	Published time.Time  `json:"published"`
	Withdrawn *time.Time `json:"withdrawn,omitempty"`
	// Manifest is set by Policy (verified releases only).
	Manifest *release.Manifest `json:"manifest,omitempty"`
}

// Releases lists published releases, newest first.
func (d *DB) Releases(ctx context.Context) ([]ReleaseInfo, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT digest, name, release, published_at, withdrawn_at FROM releases ORDER BY published_at DESC, digest`)
	if err != nil {
		return nil, fmt.Errorf("verifier: releases: %w", err)
	}
	defer rows.Close()
	var out []ReleaseInfo
	for rows.Next() {
		var r ReleaseInfo
		var pub int64
		var wd sql.NullInt64
		if err := rows.Scan(&r.Digest, &r.Name, &r.Release, &pub, &wd); err != nil {
			return nil, err
		}
		r.Published = time.Unix(pub, 0).UTC()
		if wd.Valid {
			t := time.Unix(wd.Int64, 0).UTC()
			r.Withdrawn = &t
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// SetBaseline records an appliance's firmware baseline explicitly (PCR ->
// SHA-256 value), replacing any recorded one.
func (d *DB) SetBaseline(ctx context.Context, id string, pcrs map[int][]byte, actor string) error {
	return d.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM baselines WHERE appliance = ?`, id); err != nil {
			return err
		}
		for k, v := range pcrs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO baselines (appliance, pcr, value) VALUES (?,?,?)`, id, k, v); err != nil {
				return fmt.Errorf("verifier: baseline: %w", err)
			}
		}
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: actor, Appliance: id, Action: "baseline-set", Outcome: "ok", PCR: -1, Detail: fmt.Sprintf("%d PCRs", len(pcrs))})
	})
}

// EKRoot is a trusted EK CA.
type EKRoot struct {
	Fingerprint string `json:"sha256"`
	Subject     string `json:"subject"`
}

// EKRoots lists the trusted EK CAs.
func (d *DB) EKRoots(ctx context.Context) ([]EKRoot, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT fingerprint, subject FROM ek_roots ORDER BY subject`)
	if err != nil {
		return nil, fmt.Errorf("verifier: EK roots: %w", err)
	}
	defer rows.Close()
	out := []EKRoot{}
	for rows.Next() {
		var r EKRoot
		if err := rows.Scan(&r.Fingerprint, &r.Subject); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
