package verifier

import "context"

// RemoteShare exposes an appliance's stored remote share to tests (the
// "stolen database" view).
func (d *DB) RemoteShare(ctx context.Context, id string) ([]byte, error) {
	var s []byte
	err := d.db.QueryRowContext(ctx, `SELECT remote_share FROM appliances WHERE id = ?`, id).Scan(&s)
	return s, err
}
