package verifier

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/protocol"
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
	// Share is this verifier's share of the appliance's remote secret, as
	// dealt by the enrolment ceremony (keys.Deal). Nil: this verifier is
	// the whole authority and deals a 1-of-1 set itself.
	Share *keys.Share
	// Actor names the operator, for the audit log.
	Actor string
}

// Enroll records an appliance, its EK and its remote share. The
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
	share := p.Share
	if share == nil {
		dealt, err := keys.Deal(p.ID, 1, 1)
		if err != nil {
			return err
		}
		share = dealt[0]
	}
	if _, err := share.MarshalBinary(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadArgument, err)
	}
	return d.withTx(ctx, func(tx *sql.Tx) error {
		var n int
		tx.QueryRowContext(ctx, `SELECT count(*) FROM appliances WHERE id = ?`, p.ID).Scan(&n)
		if n > 0 {
			return fmt.Errorf("%w: appliance %q", ErrExists, p.ID)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO appliances (id, ek_public, ek_cert, remote_share, share_set, share_k, share_n, share_index, share_commit, created_at, created_by)
			VALUES (?,?,?,?,?,?,?,?,?,?,?)`, p.ID, der, certDER, share.Value, share.Set[:], share.Threshold, share.Total, share.Index, share.Commit[:],
			d.now().Unix(), p.Actor); err != nil {
			return fmt.Errorf("verifier: enroll: %w", err)
		}
		sum := sha256.Sum256(der)
		return d.appendAudit(ctx, tx, &AuditRecord{Actor: p.Actor, Appliance: p.ID, Action: "enroll", Outcome: "ok", PCR: -1,
			Detail: fmt.Sprintf("EK sha256 %s, share %d of %d (k %d) of set %s", hex.EncodeToString(sum[:]), share.Index, share.Total, share.Threshold, share.Set)})
	})
}

// ApplianceInfo is an appliance's record as operators see it (no secrets).
type ApplianceInfo struct {
	ID         string            `json:"id"`
	EKSHA256   string            `json:"ek_sha256"`
	HasEKCert  bool              `json:"has_ek_cert"`
	Created    time.Time         `json:"created"`
	AKName     string            `json:"ak_name,omitempty"`
	Activated  *time.Time        `json:"activated,omitempty"`
	Baseline   map[string]string `json:"baseline,omitempty"`
	LastEpoch  uint64            `json:"last_epoch"`
	Release    string            `json:"release,omitempty"`
	LeaseUntil *time.Time        `json:"lease_until,omitempty"`
	// LastAttested is when the verifier last admitted an attestation
	// (the lease's grant time), nil if never.
	LastAttested *time.Time `json:"last_attested,omitempty"`
	// LastRefusal is the newest refused (or revoked) request since the
	// last admitted attestation (nil: none since), so operators see why
	// an appliance is not serving.
	LastRefusal *AuditRecord `json:"last_refusal,omitempty"`
	Revoked     *time.Time   `json:"revoked,omitempty"`
	RevokedBy   string       `json:"revoked_by,omitempty"`
	RevokReason string       `json:"revoke_reason,omitempty"`
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
	ids, err := queryAll(ctx, d, "list", `SELECT id FROM appliances ORDER BY id`, nil, func(rows *sql.Rows) (string, error) {
		var id string
		err := rows.Scan(&id)
		return id, err
	})
	if err != nil {
		return nil, err
	}
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
	var until, granted int64
	if err := d.db.QueryRowContext(ctx, `SELECT release, granted_at, until FROM leases WHERE appliance = ?`, id).Scan(&a.Release, &granted, &until); err == nil {
		t, g := time.Unix(until, 0).UTC(), time.Unix(granted, 0).UTC()
		a.LeaseUntil, a.LastAttested = &t, &g
	}
	if a.LastRefusal, err = d.lastRefusal(ctx, id); err != nil {
		return nil, err
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

// lastRefusal returns appliance id's newest refused or revoked request
// (the verifier's own records, ActorAppliance) newer than its newest
// admitted attestation, or nil. Records operators' calls leave, such as
// an admin API refusal naming the appliance, are not the appliance's.
func (d *DB) lastRefusal(ctx context.Context, id string) (*AuditRecord, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT seq, time, actor, appliance, action, outcome, check_name, pcr, detail, prev_hash, hash
		FROM audit WHERE appliance = ? AND actor = ? AND outcome IN ('refused', 'revoked') AND seq > COALESCE(
			(SELECT MAX(seq) FROM audit WHERE appliance = ? AND actor = ? AND action LIKE 'attest-%' AND outcome = 'ok'), 0)
		ORDER BY seq DESC LIMIT 1`, id, ActorAppliance, id, ActorAppliance)
	if err != nil {
		return nil, fmt.Errorf("verifier: last refusal: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, rows.Err()
	}
	r, err := scanAudit(rows)
	if err != nil {
		return nil, err
	}
	return &r, nil
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
		res, err := tx.ExecContext(ctx, `INSERT INTO revocations (appliance, revoked_at, revoked_by, reason) VALUES (?,?,?,?) ON CONFLICT DO NOTHING`, id, d.now().Unix(), actor, reason)
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

// appliance is what the attestation checks need from an appliance's rows.
type appliance struct {
	id    string
	ekPub crypto.PublicKey
	// share is this verifier's share, nil for a row enrolled before
	// threshold shares (schema 3).
	share *keys.Share
	// akPublic is the activated AK's TPMT_PUBLIC, nil before activation.
	akPublic []byte
	revoked  bool
}

// applianceRecord loads appliance id for the checks (ErrNotFound: not
// enrolled).
func (d *DB) applianceRecord(ctx context.Context, id string) (*appliance, error) {
	var a appliance
	var ekDER, value, set, commit []byte
	var k, n, index sql.NullInt64
	err := d.queryRow(ctx, `SELECT a.id, a.ek_public, a.remote_share, a.share_set, a.share_k, a.share_n, a.share_index, a.share_commit,
		e.ak_public, r.appliance IS NOT NULL
		FROM appliances a LEFT JOIN enrollments e ON e.appliance = a.id LEFT JOIN revocations r ON r.appliance = a.id
		WHERE a.id = ?`, id).Scan(&a.id, &ekDER, &value, &set, &k, &n, &index, &commit, &a.akPublic, &a.revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: appliance %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("verifier: load appliance: %w", err)
	}
	if a.ekPub, err = x509.ParsePKIXPublicKey(ekDER); err != nil {
		return nil, fmt.Errorf("verifier: stored EK of %s: %w", id, err)
	}
	if set == nil { // enrolled before schema 3: no share set
		return &a, nil
	}
	if len(set) != keys.SetIDSize || len(commit) != sha256.Size || !k.Valid || !n.Valid || !index.Valid {
		return nil, fmt.Errorf("verifier: stored share of %s is incomplete", id)
	}
	a.share = &keys.Share{Threshold: int(k.Int64), Total: int(n.Int64), Index: int(index.Int64), Value: value}
	copy(a.share.Set[:], set)
	copy(a.share.Commit[:], commit)
	return &a, nil
}

// firmwareBaseline returns appliance id's firmware baseline (PCR ->
// value), empty when none is recorded.
func (d *DB) firmwareBaseline(ctx context.Context, id string) (map[int][]byte, error) {
	return d.baseline(ctx, d.db, id)
}
