package verifier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// nonceRecord is an issued nonce as the DB holds it.
type nonceRecord struct {
	appliance string
	expires   time.Time
	used      bool
}

// storeNonce records nonce n issued to appliance id at now, and drops
// nonces expired over an hour ago so the table stays small.
func (d *DB) storeNonce(ctx context.Context, n []byte, id string, now, expires time.Time) error {
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := d.txExec(ctx, tx, `DELETE FROM nonces WHERE expires < ?`, now.Add(-time.Hour).UnixNano()); err != nil {
			return err
		}
		_, err := d.txExec(ctx, tx, `INSERT INTO nonces (nonce, appliance, expires) VALUES (?,?,?)`, n, id, expires.UnixNano())
		return err
	})
	if err != nil {
		return fmt.Errorf("verifier: store nonce: %w", err)
	}
	return nil
}

// nonceRecord returns nonce n's record (ErrNotFound: never issued or
// dropped).
func (d *DB) nonceRecord(ctx context.Context, n []byte) (*nonceRecord, error) {
	var r nonceRecord
	var expires int64
	var used sql.NullInt64
	err := d.queryRow(ctx, `SELECT appliance, expires, used_at FROM nonces WHERE nonce = ?`, n).Scan(&r.appliance, &expires, &used)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("verifier: nonce: %w", err)
	}
	r.expires, r.used = time.Unix(0, expires), used.Valid
	return &r, nil
}

// useNonce marks n used inside tx. It reports false when n was already
// used: a concurrent replay that passed the read-only check at the same
// time.
func (d *DB) useNonce(ctx context.Context, tx *sql.Tx, id string, n []byte) (bool, error) {
	res, err := d.txExec(ctx, tx, `UPDATE nonces SET used_at = ? WHERE nonce = ? AND appliance = ? AND used_at IS NULL`, d.now().UnixNano(), n, id)
	if err != nil {
		return false, fmt.Errorf("verifier: use nonce: %w", err)
	}
	k, err := res.RowsAffected()
	return k == 1, err
}
