package verifier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"time"
)

// ActorAppliance is the actor of the audit records the verifier writes of
// an appliance's own requests (attestations, enrolment, server identity);
// operators' records name the operator.
const ActorAppliance = "appliance"

// AuditRecord is one entry of the append-only, hash-chained audit log.
//
// Hash = SHA-256("embassy-audit-v1\x00" || PrevHash || fields), the fields
// encoded as length-prefixed strings and big-endian integers in the order
// below (see docs/attestation.md). The first record's PrevHash is 32 zero
// bytes. Triggers refuse UPDATE and DELETE; VerifyAudit detects
// records changed or deleted behind their back.
type AuditRecord struct {
	Seq       int64     `json:"seq"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	Appliance string    `json:"appliance"`
	Action    string    `json:"action"`
	// Outcome is "ok", "refused", "revoked" or "error".
	Outcome string `json:"outcome"`
	// Check names the failed check of a refusal.
	Check string `json:"check,omitempty"`
	// PCR is the PCR that differed, or -1.
	PCR      int    `json:"pcr"`
	Detail   string `json:"detail"`
	PrevHash []byte `json:"prev_hash"`
	Hash     []byte `json:"hash"`
}

func (r *AuditRecord) computeHash() []byte {
	h := sha256.New()
	h.Write([]byte("embassy-audit-v1\x00"))
	h.Write(r.PrevHash)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(r.Seq))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(r.Time.UnixNano()))
	h.Write(n[:])
	for _, s := range []string{r.Actor, r.Appliance, r.Action, r.Outcome, r.Check, r.Detail} {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	binary.BigEndian.PutUint64(n[:], uint64(int64(r.PCR)))
	h.Write(n[:])
	return h.Sum(nil)
}

// appendAudit adds r to the log inside tx, filling Seq, Time, PrevHash and
// Hash. Write transactions hold the database's write lock (withTx), so
// concurrent appenders (verifier processes, the CLI) serialise and the
// chain stays linear.
func (d *DB) appendAudit(ctx context.Context, tx *sql.Tx, r *AuditRecord) error {
	var last int64
	var prev []byte
	err := d.txQueryRow(ctx, tx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&last, &prev)
	if err == sql.ErrNoRows {
		prev = make([]byte, sha256.Size)
	} else if err != nil {
		return fmt.Errorf("verifier: audit: %w", err)
	}
	r.Seq = last + 1
	r.Time = d.now().UTC()
	r.PrevHash = prev
	r.Hash = r.computeHash()
	var pcr any
	if r.PCR >= 0 {
		pcr = r.PCR
	}
	_, err = d.txExec(ctx, tx, `INSERT INTO audit (seq, time, actor, appliance, action, outcome, check_name, pcr, detail, prev_hash, hash)
		VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
		r.Seq, r.Time.UnixNano(), r.Actor, r.Appliance, r.Action, r.Outcome, r.Check, pcr, r.Detail, r.PrevHash, r.Hash)
	if err != nil {
		return fmt.Errorf("verifier: audit: %w", err)
	}
	return nil
}

// Audit appends a record in its own transaction (operator actions).
func (d *DB) Audit(ctx context.Context, r *AuditRecord) error {
	return d.withTx(ctx, func(tx *sql.Tx) error { return d.appendAudit(ctx, tx, r) })
}

// AuditFilter selects audit records.
type AuditFilter struct {
	// Appliance, when set, keeps only that appliance's records.
	Appliance string
	// AfterSeq keeps records with Seq > AfterSeq.
	AfterSeq int64
	// Limit bounds the number of records (0: no limit): the newest ones,
	// or with Oldest the oldest ones.
	Limit int
	// Oldest makes Limit keep the oldest records after AfterSeq, for
	// paging: AfterSeq = the last Seq of a page gives the next page.
	Oldest bool
}

// AuditRecords returns audit records in ascending order.
func (d *DB) AuditRecords(ctx context.Context, f AuditFilter) ([]AuditRecord, error) {
	q := `SELECT seq, time, actor, appliance, action, outcome, check_name, pcr, detail, prev_hash, hash FROM audit WHERE seq > ?`
	args := []any{f.AfterSeq}
	if f.Appliance != "" {
		q += ` AND appliance = ?`
		args = append(args, f.Appliance)
	}
	newest := f.Limit > 0 && !f.Oldest
	if newest {
		q += ` ORDER BY seq DESC`
	} else {
		q += ` ORDER BY seq`
	}
	if f.Limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	out, err := queryAll(ctx, d, "audit", q, args, scanAudit)
	if err != nil {
		return nil, err
	}
	if newest {
		slices.Reverse(out)
	}
	return out, nil
}

func scanAudit(rows *sql.Rows) (AuditRecord, error) {
	var r AuditRecord
	var ts int64
	var pcr sql.NullInt64
	if err := rows.Scan(&r.Seq, &ts, &r.Actor, &r.Appliance, &r.Action, &r.Outcome, &r.Check, &pcr, &r.Detail, &r.PrevHash, &r.Hash); err != nil {
		return r, fmt.Errorf("verifier: audit: %w", err)
	}
	r.Time = time.Unix(0, ts).UTC()
	r.PCR = -1
	if pcr.Valid {
		r.PCR = int(pcr.Int64)
	}
	return r, nil
}

// AuditProblem is one inconsistency found by VerifyAudit.
type AuditProblem struct {
	// Seq is the record concerned (for a gap: the first missing seq).
	Seq int64 `json:"seq"`
	// Kind is "changed" (hash does not match the content), "deleted" (a
	// gap in the sequence or a broken link) or "truncated" (the head is
	// not the expected one).
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// AuditReport is VerifyAudit's result.
type AuditReport struct {
	Records  int64          `json:"records"`
	HeadSeq  int64          `json:"head_seq"`
	HeadHash string         `json:"head_hash"`
	Problems []AuditProblem `json:"problems"`
}

// VerifyAudit walks the whole chain. A record whose content no longer
// matches its hash is "changed"; a missing seq or a PrevHash that does not
// link to the previous record is "deleted". When wantHead is non-empty (hex
// hash of a head recorded earlier, e.g. printed by a previous verify), a
// chain that no longer contains it is reported "truncated": deleting the
// newest records cannot be seen from the chain alone.
func (d *DB) VerifyAudit(ctx context.Context, wantHeadSeq int64, wantHead string) (*AuditReport, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT seq, time, actor, appliance, action, outcome, check_name, pcr, detail, prev_hash, hash FROM audit ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("verifier: audit: %w", err)
	}
	defer rows.Close()
	rep := &AuditReport{Problems: []AuditProblem{}}
	prevHash := make([]byte, sha256.Size)
	expect := int64(1)
	foundHead := wantHead == ""
	for rows.Next() {
		r, err := scanAudit(rows)
		if err != nil {
			return nil, err
		}
		rep.Records++
		if r.Seq != expect {
			rep.Problems = append(rep.Problems, AuditProblem{Seq: expect, Kind: "deleted",
				Detail: fmt.Sprintf("records %d..%d missing", expect, r.Seq-1)})
		} else if !bytes.Equal(r.PrevHash, prevHash) {
			rep.Problems = append(rep.Problems, AuditProblem{Seq: r.Seq, Kind: "deleted",
				Detail: "prev_hash does not link to the previous record"})
		}
		if !bytes.Equal(r.computeHash(), r.Hash) {
			rep.Problems = append(rep.Problems, AuditProblem{Seq: r.Seq, Kind: "changed",
				Detail: "content does not match its hash"})
		}
		if !foundHead && r.Seq == wantHeadSeq {
			if hex.EncodeToString(r.Hash) != wantHead {
				rep.Problems = append(rep.Problems, AuditProblem{Seq: r.Seq, Kind: "changed",
					Detail: "hash differs from the recorded head"})
			}
			foundHead = true
		}
		prevHash = r.Hash
		expect = r.Seq + 1
		rep.HeadSeq, rep.HeadHash = r.Seq, hex.EncodeToString(r.Hash)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if !foundHead {
		rep.Problems = append(rep.Problems, AuditProblem{Seq: wantHeadSeq, Kind: "truncated",
			Detail: fmt.Sprintf("recorded head %d is gone; the log ends at %d", wantHeadSeq, rep.HeadSeq)})
	}
	return rep, nil
}
