package verifier

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
)

// recordServerIdentity stores, inside tx, a server certificate reported
// in an admitted heartbeat (nil: none), auditing each new or changed
// identity (a change means a new KEK: a re-provisioned store).
func (d *DB) recordServerIdentity(ctx context.Context, tx *sql.Tx, id, release string, der []byte) error {
	if der == nil {
		return nil
	}
	sum := sha256.Sum256(der)
	fp := hex.EncodeToString(sum[:])
	var old string
	err := d.txQueryRow(ctx, tx, `SELECT sha256 FROM server_identities WHERE appliance = ?`, id).Scan(&old)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if old == fp {
		return nil
	}
	if _, err := d.txExec(ctx, tx, `INSERT INTO server_identities (appliance, cert, sha256, release, recorded_at) VALUES (?,?,?,?,?)
		ON CONFLICT(appliance) DO UPDATE SET cert = excluded.cert, sha256 = excluded.sha256, release = excluded.release, recorded_at = excluded.recorded_at`,
		id, der, fp, release, d.now().Unix()); err != nil {
		return err
	}
	detail := "NBD server identity sha256 " + fp + " reported by release " + release
	if old != "" {
		detail += "; replaces " + old
	}
	return d.appendAudit(ctx, tx, &AuditRecord{Actor: ActorAppliance, Appliance: id, Action: "server-identity", Outcome: "ok", PCR: -1, Detail: detail})
}
