package verifier

import (
	"context"

	"github.com/dataembassy/embassy/attest/keys"
)

// RemoteShare exposes an appliance's stored remote share to tests (the
// "stolen database" view).
func (d *DB) RemoteShare(ctx context.Context, id string) ([]byte, error) {
	var s []byte
	err := d.db.QueryRowContext(ctx, `SELECT remote_share FROM appliances WHERE id = ?`, id).Scan(&s)
	return s, err
}

// ForgetShareSet makes appliance id's row look enrolled before schema 3
// (no share set), as a migrated database holds it.
func (d *DB) ForgetShareSet(ctx context.Context, id string) error {
	_, err := d.db.ExecContext(ctx, `UPDATE appliances SET share_set = NULL, share_k = NULL, share_n = NULL, share_index = NULL, share_commit = NULL WHERE id = ?`, id)
	return err
}

// TruncateShareCommit leaves appliance id's share row incomplete, as a
// damaged database would.
func (d *DB) TruncateShareCommit(ctx context.Context, id string) error {
	_, err := d.db.ExecContext(ctx, `UPDATE appliances SET share_commit = ? WHERE id = ?`, []byte{0}, id)
	return err
}

// StoredShare returns the share row of appliance id as an attacker holding
// the database file reads it.
func (d *DB) StoredShare(ctx context.Context, id string) (*keys.Share, error) {
	a, err := d.applianceRecord(ctx, id)
	if err != nil {
		return nil, err
	}
	return a.share, nil
}

// UsedNonces counts the nonces burnt by an attestation.
func (d *DB) UsedNonces(ctx context.Context) (int, error) {
	var n int
	err := d.db.QueryRowContext(ctx, `SELECT count(*) FROM nonces WHERE used_at IS NOT NULL`).Scan(&n)
	return n, err
}
