package verifier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// enrollSession is a credential-activation challenge on record.
type enrollSession struct {
	id, appliance    string
	akPublic, secret []byte
	expires          time.Time
	used             bool
}

// errAKActivated reports an appliance whose AK is already activated.
var errAKActivated = errors.New("verifier: AK already activated")

// storeEnrollSession records a challenge.
func (d *DB) storeEnrollSession(ctx context.Context, s enrollSession) error {
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO enroll_sessions (id, appliance, ak_public, secret, expires) VALUES (?,?,?,?,?)`,
			s.id, s.appliance, s.akPublic, s.secret, s.expires.UnixNano())
		return err
	})
	if err != nil {
		return fmt.Errorf("verifier: store enroll session: %w", err)
	}
	return nil
}

// takeEnrollSession returns appliance id's challenge session and marks it
// used, whatever it was before (ErrNotFound: no such session).
func (d *DB) takeEnrollSession(ctx context.Context, session, id string) (*enrollSession, error) {
	s := &enrollSession{id: session, appliance: id}
	var expires int64
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT ak_public, secret, expires, used FROM enroll_sessions WHERE id = ? AND appliance = ?`, session, id).Scan(&s.akPublic, &s.secret, &expires, &s.used)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE enroll_sessions SET used = 1 WHERE id = ?`, session)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.expires = time.Unix(0, expires)
	return s, nil
}

// activateAK trusts appliance id's AK and appends rec, in one transaction.
// When no firmware baseline is on record, it records the one initial
// returns (whose error aborts the activation). It returns the baseline on
// record; errAKActivated when the appliance already has an AK.
func (d *DB) activateAK(ctx context.Context, id string, akPublic []byte, akName string, initial func() (map[int][]byte, error), rec *AuditRecord) (map[int][]byte, error) {
	var base map[int][]byte
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO enrollments (appliance, ak_public, ak_name, activated_at) VALUES (?,?,?,?)`, id, akPublic, akName, d.now().Unix()); err != nil {
			return fmt.Errorf("%w: %v", errAKActivated, err)
		}
		var err error
		if base, err = d.baseline(ctx, tx, id); err != nil {
			return err
		}
		if len(base) == 0 {
			if base, err = initial(); err != nil {
				return err
			}
			for i, v := range base {
				if _, err := tx.ExecContext(ctx, `INSERT INTO baselines (appliance, pcr, value) VALUES (?,?,?)`, id, i, v); err != nil {
					return err
				}
			}
		}
		return d.appendAudit(ctx, tx, rec)
	})
	if err != nil {
		return nil, err
	}
	return base, nil
}
