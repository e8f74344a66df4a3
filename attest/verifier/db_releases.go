package verifier

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/dataembassy/embassy/attest/release"
)

// AddReleaseKey trusts a release signing key.
func (d *DB) AddReleaseKey(ctx context.Context, pub ed25519.PublicKey, actor string) error {
	id := release.KeyID(pub)
	return d.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO release_keys (key_id, public_key, added_at) VALUES (?,?,?) ON CONFLICT DO NOTHING`, id, []byte(pub), d.now().Unix()); err != nil {
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
	keys, err := queryAll(ctx, d, "release keys", `SELECT public_key FROM release_keys ORDER BY key_id`, nil, func(rows *sql.Rows) (ed25519.PublicKey, error) {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		if len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("verifier: stored release key of %d bytes", len(b))
		}
		return ed25519.PublicKey(b), nil
	})
	if err != nil {
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
		res, err := tx.ExecContext(ctx, `INSERT INTO releases (digest, name, release, envelope, published_at, published_by) VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING`,
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
	return queryAll(ctx, d, "releases", `SELECT digest, name, release, published_at, withdrawn_at FROM releases ORDER BY published_at DESC, digest`, nil, func(rows *sql.Rows) (ReleaseInfo, error) {
		var r ReleaseInfo
		var pub int64
		var wd sql.NullInt64
		if err := rows.Scan(&r.Digest, &r.Name, &r.Release, &pub, &wd); err != nil {
			return r, err
		}
		r.Published = time.Unix(pub, 0).UTC()
		if wd.Valid {
			t := time.Unix(wd.Int64, 0).UTC()
			r.Withdrawn = &t
		}
		return r, nil
	})
}

// storedRelease is a published, not withdrawn release as stored: its
// signatures are checked again by whoever uses it.
type storedRelease struct {
	digest   string
	envelope []byte
}

// publishedReleases returns the releases not withdrawn, newest first.
func (d *DB) publishedReleases(ctx context.Context) ([]storedRelease, error) {
	return queryAll(ctx, d, "load releases", `SELECT digest, envelope FROM releases WHERE withdrawn_at IS NULL ORDER BY published_at DESC, digest`, nil, func(rows *sql.Rows) (storedRelease, error) {
		var r storedRelease
		err := rows.Scan(&r.digest, &r.envelope)
		return r, err
	})
}
