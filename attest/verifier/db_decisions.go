package verifier

import (
	"context"
	"database/sql"
	"time"
)

// decision is what recordDecision writes for an admitted attestation.
type decision struct {
	appliance string
	nonce     []byte
	epoch     uint64
	// release is the label of the matched release.
	release    string
	at         time.Time
	leaseUntil time.Time
	// serverCert is the reported NBD server certificate, or nil.
	serverCert []byte
	audit      *AuditRecord
}

// decisionState is what a decision's last checks read under the write
// lock.
type decisionState struct {
	// nonceFresh is false when the nonce was burnt by a concurrent replay.
	nonceFresh bool
	revoked    bool
	lastEpoch  uint64
}

// recordDecision, in one write transaction: burns the nonce, reads the
// appliance's state, lets admit refuse (rolling back), then records the
// store epoch, the lease, the server identity and the audit record
// (filling dec.audit's Seq). It returns the state admit saw.
func (d *DB) recordDecision(ctx context.Context, dec *decision, admit func(decisionState) error) (decisionState, error) {
	var st decisionState
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		var err error
		if st.nonceFresh, err = d.useNonce(ctx, tx, dec.appliance, dec.nonce); err != nil {
			return err
		}
		if st.nonceFresh {
			// Revocation may have landed since the first check: re-read it
			// under the write lock so a decision never follows a revocation.
			var last int64
			err = d.txQueryRow(ctx, tx, `SELECT COALESCE((SELECT last_epoch FROM epochs WHERE appliance = ?), 0),
				EXISTS (SELECT 1 FROM revocations WHERE appliance = ?)`, dec.appliance, dec.appliance).Scan(&last, &st.revoked)
			if err != nil {
				return err
			}
			st.lastEpoch = uint64(last)
		}
		if err := admit(st); err != nil {
			return err
		}
		if _, err := d.txExec(ctx, tx, `INSERT INTO epochs (appliance, last_epoch, updated_at) VALUES (?,?,?)
			ON CONFLICT(appliance) DO UPDATE SET last_epoch = excluded.last_epoch, updated_at = excluded.updated_at`,
			dec.appliance, int64(dec.epoch), dec.at.Unix()); err != nil {
			return err
		}
		if _, err := d.txExec(ctx, tx, `INSERT INTO leases (appliance, release, granted_at, until) VALUES (?,?,?,?)
			ON CONFLICT(appliance) DO UPDATE SET release = excluded.release, granted_at = excluded.granted_at, until = excluded.until`,
			dec.appliance, dec.release, dec.at.Unix(), dec.leaseUntil.Unix()); err != nil {
			return err
		}
		if err := d.recordServerIdentity(ctx, tx, dec.appliance, dec.release, dec.serverCert); err != nil {
			return err
		}
		return d.appendAudit(ctx, tx, dec.audit)
	})
	return st, err
}

// recordRefusal appends a refusal's audit record and, in the same
// transaction, burns nonce when it is non-nil and rec.Appliance's.
func (d *DB) recordRefusal(ctx context.Context, rec *AuditRecord, nonce []byte) error {
	return d.withTx(ctx, func(tx *sql.Tx) error {
		if nonce != nil {
			if _, err := d.useNonce(ctx, tx, rec.Appliance, nonce); err != nil {
				return err
			}
		}
		return d.appendAudit(ctx, tx, rec)
	})
}
