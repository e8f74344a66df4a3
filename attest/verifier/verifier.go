// Package verifier is Embassy's remote attestation verifier: the service
// the home state runs (cmd/embassy-verifier) that enrolls appliances, checks
// their TPM quotes and event logs against policy, and releases the remote
// key share only to an appliance that booted a signed release on its
// enrolled TPM.
//
// State lives in SQLite (DB): appliances and their EKs, activated AKs,
// firmware baselines, single-use nonces, store epochs, leases,
// revocations, release keys and published releases, and an append-only,
// hash-chained audit log. The operator CLI (embassyctl) uses DB directly on
// the verifier host.
//
// Server serves the appliance-facing HTTPS JSON API (package protocol).
// Every attestation decision is written to the audit log; every refusal
// names the check that failed and, where one did, the PCR that differed.
// The protocol, the checks and the threat model as built are documented in
// docs/attestation.md.
package verifier

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/tpm"
	pb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	tpmquote "github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/legacy/tpm2/credactivation"
	"google.golang.org/protobuf/proto"
)

// Options configures a Server.
type Options struct {
	// DB is the verifier's state. Required.
	DB *DB
	// Lease is how long a released or renewed appliance may run before it
	// must re-attest. Default 10 minutes.
	Lease time.Duration
	// NonceTTL is how long a nonce stays valid. Default 60 seconds.
	NonceTTL time.Duration
	// EnrollTTL is how long a credential-activation challenge stays valid.
	// Default 5 minutes.
	EnrollTTL time.Duration
	// PolicyRefresh bounds how long a published or withdrawn release takes
	// to be seen by the server. Default 2 seconds.
	PolicyRefresh time.Duration
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
}

// Server is the appliance-facing API. It implements http.Handler.
type Server struct {
	db   *DB
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux

	polMu     sync.Mutex
	pol       []policyRelease
	polLoaded time.Time
}

// policyRelease is a published, verified, not withdrawn release.
type policyRelease struct {
	digest string
	label  string
	pcrs   map[int][]byte
}

// NewServer returns a Server.
func NewServer(opts Options) (*Server, error) {
	if opts.DB == nil {
		return nil, errors.New("verifier: Options.DB is required")
	}
	if opts.Lease <= 0 {
		opts.Lease = 10 * time.Minute
	}
	if opts.NonceTTL <= 0 {
		opts.NonceTTL = time.Minute
	}
	if opts.EnrollTTL <= 0 {
		opts.EnrollTTL = 5 * time.Minute
	}
	if opts.PolicyRefresh <= 0 {
		opts.PolicyRefresh = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{db: opts.DB, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	s.mux.HandleFunc("POST "+protocol.PathEnrollChallenge, handle(s, s.enrollChallenge))
	s.mux.HandleFunc("POST "+protocol.PathEnrollActivate, handle(s, s.enrollActivate))
	s.mux.HandleFunc("POST "+protocol.PathNonce, handle(s, s.nonce))
	s.mux.HandleFunc("POST "+protocol.PathAttest, handle(s, s.attest))
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Refusal is a negative decision, sent as a protocol.ErrorResponse.
type Refusal struct {
	Status int
	protocol.ErrorResponse
}

func (r *Refusal) Error() string {
	s := r.Code
	if r.Check != "" {
		s += " (" + r.Check + ")"
	}
	if r.PCR != nil {
		s += fmt.Sprintf(" PCR %d", *r.PCR)
	}
	return s + ": " + r.Detail
}

func refuse(check string, pcr int, format string, args ...any) *Refusal {
	r := &Refusal{Status: http.StatusForbidden, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeRefused, Check: check, Detail: fmt.Sprintf(format, args...)}}
	if pcr >= 0 {
		r.PCR = &pcr
	}
	return r
}

func badRequest(err error) *Refusal {
	return &Refusal{Status: http.StatusBadRequest, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeBadRequest, Detail: err.Error()}}
}

func handle[Req any, Resp any](s *Server, f func(context.Context, *Req) (*Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := protocol.Decode(r.Body, &req); err != nil {
			writeJSON(w, http.StatusBadRequest, badRequest(err).ErrorResponse)
			return
		}
		resp, err := f(r.Context(), &req)
		if err != nil {
			var ref *Refusal
			if errors.As(err, &ref) {
				writeJSON(w, ref.Status, ref.ErrorResponse)
				return
			}
			s.log.Error("verifier: internal error", "path", r.URL.Path, "err", err)
			writeJSON(w, http.StatusInternalServerError, protocol.ErrorResponse{Code: protocol.CodeInternal, Detail: "internal error"})
			return
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// appliance is what the checks need from an appliance's rows.
type appliance struct {
	id       string
	ekPub    crypto.PublicKey
	share    []byte
	akPublic []byte
	revoked  bool
}

func (s *Server) loadAppliance(ctx context.Context, id string) (*appliance, error) {
	var a appliance
	var ekDER []byte
	err := s.db.queryRow(ctx, `SELECT a.id, a.ek_public, a.remote_share, e.ak_public, r.appliance IS NOT NULL
		FROM appliances a LEFT JOIN enrollments e ON e.appliance = a.id LEFT JOIN revocations r ON r.appliance = a.id
		WHERE a.id = ?`, id).Scan(&a.id, &ekDER, &a.share, &a.akPublic, &a.revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, &Refusal{Status: http.StatusForbidden, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeNotEnrolled, Check: "enrollment", Detail: fmt.Sprintf("appliance %q is not enrolled", id)}}
	}
	if err != nil {
		return nil, fmt.Errorf("verifier: load appliance: %w", err)
	}
	if a.ekPub, err = x509.ParsePKIXPublicKey(ekDER); err != nil {
		return nil, fmt.Errorf("verifier: stored EK of %s: %w", id, err)
	}
	return &a, nil
}

// loadActive loads an appliance and refuses a revoked one.
func (s *Server) loadActive(ctx context.Context, id string) (*appliance, error) {
	a, err := s.loadAppliance(ctx, id)
	if err != nil {
		return nil, err
	}
	if a.revoked {
		return nil, revoked(a.id)
	}
	return a, nil
}

// auditRefusal writes a refusal to the audit log and stamps its seq.
func (s *Server) auditRefusal(ctx context.Context, id, action string, ref *Refusal) {
	s.auditRefusalNonce(ctx, id, action, ref, nil)
}

// auditRefusalNonce writes a refusal to the audit log and, in the same
// transaction, burns the request's nonce (if it is this appliance's).
func (s *Server) auditRefusalNonce(ctx context.Context, id, action string, ref *Refusal, nonce []byte) {
	rec := &AuditRecord{Actor: "appliance", Appliance: id, Action: action, Outcome: ref.Code, Check: ref.Check, PCR: -1, Detail: ref.Detail}
	if ref.PCR != nil {
		rec.PCR = *ref.PCR
	}
	err := s.db.withTx(ctx, func(tx *sql.Tx) error {
		if nonce != nil {
			if _, err := s.useNonce(ctx, tx, id, nonce); err != nil {
				return err
			}
		}
		return s.db.appendAudit(ctx, tx, rec)
	})
	if err != nil {
		s.log.Error("verifier: audit write failed", "err", err)
		return
	}
	ref.AuditSeq = rec.Seq
	s.log.Info("verifier: refused", "appliance", id, "action", action, "code", ref.Code, "check", ref.Check, "detail", ref.Detail, "audit_seq", rec.Seq)
}

// --- enrollment -------------------------------------------------------

// akAttrs are the attributes a trustworthy attestation key must have: it
// never leaves the TPM and signs only TPM-generated data.
const akAttrs = tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagRestricted | tpm2.FlagSign

func (s *Server) enrollChallenge(ctx context.Context, req *protocol.EnrollChallengeRequest) (resp *protocol.EnrollChallengeResponse, err error) {
	defer s.auditOnRefusal(ctx, req.ApplianceID, "enroll-challenge", &err)
	a, err := s.loadActive(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	if a.akPublic != nil {
		return nil, refuse("ak", -1, "appliance %q already has an activated AK", a.id)
	}
	akPub, err := tpm2.DecodePublic(req.AKPublic)
	if err != nil {
		return nil, badRequest(fmt.Errorf("ak_public: %v", err))
	}
	if akPub.Attributes&akAttrs != akAttrs || akPub.Attributes&tpm2.FlagDecrypt != 0 {
		return nil, refuse("ak", -1, "AK attributes %#x: want fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign-only", uint32(akPub.Attributes))
	}
	if _, err := akPub.Key(); err != nil {
		return nil, badRequest(fmt.Errorf("ak_public: %v", err))
	}
	name, err := akPub.Name()
	if err != nil || name.Digest == nil {
		return nil, badRequest(fmt.Errorf("ak_public: no name: %v", err))
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	blob, encSecret, err := credactivation.Generate(name.Digest, a.ekPub, 16, secret)
	if err != nil {
		return nil, fmt.Errorf("verifier: make credential: %w", err)
	}
	sess := make([]byte, 16)
	rand.Read(sess)
	expires := s.db.now().Add(s.opts.EnrollTTL)
	resp = &protocol.EnrollChallengeResponse{Session: hex.EncodeToString(sess), CredentialBlob: blob, EncryptedSecret: encSecret, Expires: expires.UTC()}
	err = s.db.withTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO enroll_sessions (id, appliance, ak_public, secret, expires) VALUES (?,?,?,?,?)`,
			resp.Session, a.id, req.AKPublic, secret, expires.UnixNano())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("verifier: store enroll session: %w", err)
	}
	return resp, nil
}

func (s *Server) auditOnRefusal(ctx context.Context, id, action string, errp *error) {
	var ref *Refusal
	if errors.As(*errp, &ref) && ref.Code != protocol.CodeBadRequest {
		s.auditRefusal(ctx, id, action, ref)
	}
}

func revoked(id string) *Refusal {
	return &Refusal{Status: http.StatusForbidden, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeRevoked, Check: "revocation", Detail: fmt.Sprintf("appliance %q is revoked", id)}}
}

func (s *Server) enrollActivate(ctx context.Context, req *protocol.EnrollActivateRequest) (resp *protocol.EnrollActivateResponse, err error) {
	defer s.auditOnRefusal(ctx, req.ApplianceID, "enroll-activate", &err)
	a, err := s.loadActive(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	var akPublic, secret []byte
	var expires int64
	var used bool
	// Burn the session first: one try per challenge.
	err = s.db.withTx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT ak_public, secret, expires, used FROM enroll_sessions WHERE id = ? AND appliance = ?`, req.Session, a.id).Scan(&akPublic, &secret, &expires, &used)
		if errors.Is(err, sql.ErrNoRows) {
			return refuse("enroll_session", -1, "unknown enrollment session")
		} else if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE enroll_sessions SET used = 1 WHERE id = ?`, req.Session)
		return err
	})
	if err != nil {
		return nil, err
	}
	switch {
	case used:
		return nil, refuse("enroll_session", -1, "enrollment session already used")
	case s.db.now().UnixNano() > expires:
		return nil, refuse("enroll_session", -1, "enrollment session expired")
	case subtle.ConstantTimeCompare(secret, req.Secret) != 1:
		return nil, refuse("credential", -1, "credential activation proof is wrong: the AK is not in the TPM holding the enrolled EK")
	}
	akArea, err := tpm2.DecodePublic(akPublic)
	if err != nil {
		return nil, fmt.Errorf("verifier: stored AK: %w", err)
	}
	akKey, err := akArea.Key()
	if err != nil {
		return nil, fmt.Errorf("verifier: stored AK: %w", err)
	}
	quote, err := sha256Quote(req.Attestation)
	if err != nil {
		return nil, err
	}
	if err := tpmquote.Verify(quote, akKey, protocol.EnrollQuoteData(req.Session, req.Secret)); err != nil {
		return nil, refuse("quote", -1, "enrollment quote: %v", err)
	}
	name, _ := akArea.Name()
	nameHex := hex.EncodeToString(mustEncodeName(name))
	base := map[string]string{}
	err = s.db.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO enrollments (appliance, ak_public, ak_name, activated_at) VALUES (?,?,?,?)`, a.id, akPublic, nameHex, s.db.now().Unix()); err != nil {
			return refuse("ak", -1, "appliance already has an activated AK")
		}
		existing, err := s.db.baseline(ctx, tx, a.id)
		if err != nil {
			return err
		}
		if len(existing) == 0 {
			for _, i := range tpm.FirmwarePCRs {
				v, ok := quote.GetPcrs().GetPcrs()[uint32(i)]
				if !ok {
					return refuse("baseline", i, "enrollment quote lacks PCR %d", i)
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO baselines (appliance, pcr, value) VALUES (?,?,?)`, a.id, i, v); err != nil {
					return err
				}
				existing[i] = v
			}
		}
		for k, v := range existing {
			base[fmt.Sprint(k)] = hex.EncodeToString(v)
		}
		return s.db.appendAudit(ctx, tx, &AuditRecord{Actor: "appliance", Appliance: a.id, Action: "enroll-activate", Outcome: "ok", PCR: -1, Detail: "AK " + nameHex})
	})
	if err != nil {
		return nil, err
	}
	return &protocol.EnrollActivateResponse{AKName: nameHex, Baseline: base}, nil
}

func mustEncodeName(n tpm2.Name) []byte {
	b, err := n.Encode()
	if err != nil {
		return nil
	}
	return b
}

// sha256Quote decodes an attestation and returns its SHA-256 bank quote.
func sha256Quote(raw []byte) (*tpmpb.Quote, error) {
	var att pb.Attestation
	if err := proto.Unmarshal(raw, &att); err != nil {
		return nil, badRequest(fmt.Errorf("attestation: %v", err))
	}
	for _, q := range att.GetQuotes() {
		if tpm2.Algorithm(q.GetPcrs().GetHash()) == tpm2.AlgSHA256 {
			return q, nil
		}
	}
	return nil, refuse("quote", -1, "no SHA-256 quote in the attestation")
}

// --- nonces -------------------------------------------------------------

func (s *Server) nonce(ctx context.Context, req *protocol.NonceRequest) (*protocol.NonceResponse, error) {
	a, err := s.loadActive(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	n := make([]byte, protocol.NonceSize)
	rand.Read(n)
	now := s.db.now()
	exp := now.Add(s.opts.NonceTTL)
	err = s.db.withTx(ctx, func(tx *sql.Tx) error {
		// Expired nonces are useless; drop those long gone so the table stays small.
		if _, err := s.db.txExec(ctx, tx, `DELETE FROM nonces WHERE expires < ?`, now.Add(-time.Hour).UnixNano()); err != nil {
			return err
		}
		_, err := s.db.txExec(ctx, tx, `INSERT INTO nonces (nonce, appliance, expires) VALUES (?,?,?)`, n, a.id, exp.UnixNano())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("verifier: store nonce: %w", err)
	}
	return &protocol.NonceResponse{Nonce: n, Expires: exp.UTC()}, nil
}

// checkNonce checks, without writing, that n was issued to id, is unused
// and unexpired. The nonce is marked used in the transaction that records
// the decision (useNonce), whatever the decision, so each attestation costs
// one write transaction.
func (s *Server) checkNonce(ctx context.Context, id string, n []byte) error {
	var owner string
	var expires int64
	var used sql.NullInt64
	now := s.db.now().UnixNano()
	err := s.db.queryRow(ctx, `SELECT appliance, expires, used_at FROM nonces WHERE nonce = ?`, n).Scan(&owner, &expires, &used)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return refuse("nonce", -1, "unknown nonce (never issued or long expired)")
	case err != nil:
		return fmt.Errorf("verifier: nonce: %w", err)
	case owner != id:
		return refuse("nonce", -1, "nonce was issued to another appliance")
	case used.Valid:
		return refuse("nonce", -1, "nonce already used (replay)")
	case now > expires:
		return refuse("nonce", -1, "nonce expired %s ago", time.Duration(now-expires).Round(time.Millisecond))
	}
	return nil
}

// useNonce marks n used inside tx. It reports false when n was already
// used: a concurrent replay that passed checkNonce at the same time.
func (s *Server) useNonce(ctx context.Context, tx *sql.Tx, id string, n []byte) (bool, error) {
	res, err := s.db.txExec(ctx, tx, `UPDATE nonces SET used_at = ? WHERE nonce = ? AND appliance = ? AND used_at IS NULL`, s.db.now().UnixNano(), n, id)
	if err != nil {
		return false, fmt.Errorf("verifier: use nonce: %w", err)
	}
	k, err := res.RowsAffected()
	return k == 1, err
}

// --- attestation --------------------------------------------------------

func (s *Server) attest(ctx context.Context, req *protocol.AttestRequest) (resp *protocol.AttestResponse, err error) {
	defer func() {
		var ref *Refusal
		if errors.As(err, &ref) && ref.Code != protocol.CodeBadRequest {
			s.auditRefusalNonce(ctx, req.ApplianceID, "attest-"+string(req.Purpose), ref, req.Nonce)
		}
	}()
	a, err := s.loadAppliance(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	if err := s.checkNonce(ctx, a.id, req.Nonce); err != nil {
		return nil, err
	}
	if a.revoked {
		return nil, revoked(a.id)
	}
	if a.akPublic == nil {
		return nil, refuse("ak", -1, "appliance has no activated AK: run the enrollment handshake")
	}
	if err := checkServerCert(a.id, req.ServerCert); err != nil {
		return nil, err
	}
	pcrs, err := s.verifyEvidence(a, req)
	if err != nil {
		return nil, err
	}
	rel, err := s.checkPolicy(ctx, a, pcrs)
	if err != nil {
		return nil, err
	}
	if req.Purpose == protocol.PurposeUnlock {
		if v := pcrs[tpm.PCRPhase]; !bytes.Equal(v, make([]byte, sha256.Size)) {
			return nil, refuse("phase", tpm.PCRPhase, "phase PCR already extended (%x): this boot has unlocked once", v)
		}
	}
	return s.decide(ctx, a, req, rel, pcrs)
}

// checkServerCert accepts a reported NBD server certificate (or none): it
// must parse and name the appliance, so that what clients pin says whom it
// is for.
func checkServerCert(id string, der []byte) error {
	if der == nil {
		return nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return badRequest(fmt.Errorf("server_cert: %v", err))
	}
	if c.Subject.CommonName != id {
		return badRequest(fmt.Errorf("server_cert names %q, not appliance %q", c.Subject.CommonName, id))
	}
	return nil
}

// recordServerCert stores a server certificate reported in an admitted
// heartbeat, auditing each new or changed identity (a change means a new
// KEK: a re-provisioned store).
func (s *Server) recordServerCert(ctx context.Context, tx *sql.Tx, id, release string, der []byte) error {
	if der == nil {
		return nil
	}
	sum := sha256.Sum256(der)
	fp := hex.EncodeToString(sum[:])
	var old string
	err := s.db.txQueryRow(ctx, tx, `SELECT sha256 FROM server_identities WHERE appliance = ?`, id).Scan(&old)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if old == fp {
		return nil
	}
	if _, err := s.db.txExec(ctx, tx, `INSERT INTO server_identities (appliance, cert, sha256, release, recorded_at) VALUES (?,?,?,?,?)
		ON CONFLICT(appliance) DO UPDATE SET cert = excluded.cert, sha256 = excluded.sha256, release = excluded.release, recorded_at = excluded.recorded_at`,
		id, der, fp, release, s.db.now().Unix()); err != nil {
		return err
	}
	detail := "NBD server identity sha256 " + fp + " reported by release " + release
	if old != "" {
		detail += "; replaces " + old
	}
	return s.db.appendAudit(ctx, tx, &AuditRecord{Actor: "appliance", Appliance: id, Action: "server-identity", Outcome: "ok", PCR: -1, Detail: detail})
}

// verifyEvidence checks the quote (AK from the DB, signature, nonce-bound
// extraData, PCR digest), replays the firmware event log, and replays the
// appliance log against PCR 15. It returns the quoted SHA-256 PCRs.
func (s *Server) verifyEvidence(a *appliance, req *protocol.AttestRequest) (map[int][]byte, error) {
	var att pb.Attestation
	if err := proto.Unmarshal(req.Attestation, &att); err != nil {
		return nil, badRequest(fmt.Errorf("attestation: %v", err))
	}
	akArea, err := tpm2.DecodePublic(a.akPublic)
	if err != nil {
		return nil, fmt.Errorf("verifier: stored AK: %w", err)
	}
	akKey, err := akArea.Key()
	if err != nil {
		return nil, fmt.Errorf("verifier: stored AK: %w", err)
	}
	if !bytes.Equal(att.GetAkPub(), a.akPublic) {
		return nil, refuse("ak", -1, "quote made with an AK other than the enrolled one")
	}
	var quote *tpmpb.Quote
	for _, q := range att.GetQuotes() {
		if tpm2.Algorithm(q.GetPcrs().GetHash()) == tpm2.AlgSHA256 {
			quote = q
		}
	}
	if quote == nil {
		return nil, refuse("quote", -1, "no SHA-256 quote in the attestation")
	}
	extra := protocol.QuoteData(req.Nonce, a.id, req.Purpose, req.StoreEpoch, req.ServerCert)
	// Only the SHA-256 quote may be used by the event-log replay.
	att.Quotes = []*tpmpb.Quote{quote}
	// VerifyAttestation verifies the quote's signature, extraData and PCR
	// digest with the enrolled AK before replaying the firmware event log,
	// so a success covers both checks with one RSA verification. On failure
	// the quote is checked alone to name the check that failed.
	if _, err := server.VerifyAttestation(&att, server.VerifyOpts{
		Nonce:                         extra,
		TrustedAKs:                    []crypto.PublicKey{akKey},
		HashAlgo:                      tpm2.AlgSHA256,
		Loader:                        server.UnsupportedLoader,
		AllowEFIAppBeforeCallingEvent: true,
		AllowEmptySBVar:               true,
	}); err != nil {
		if qerr := tpmquote.Verify(quote, akKey, extra); qerr != nil {
			return nil, refuse("quote", -1, "quote does not verify with the enrolled AK over this nonce: %v", qerr)
		}
		return nil, refuse("eventlog", -1, "firmware event log does not replay to the quoted PCRs: %v", err)
	}
	pcrs := map[int][]byte{}
	for k, v := range quote.GetPcrs().GetPcrs() {
		pcrs[int(k)] = v
	}
	events, err := measure.Parse(req.ApplianceLog)
	if err != nil {
		return nil, refuse("appliance_log", tpm.PCRAppliance, "%v", err)
	}
	replayed, err := measure.Replay(events)
	if err != nil {
		return nil, refuse("appliance_log", tpm.PCRAppliance, "%v", err)
	}
	if got := pcrs[tpm.PCRAppliance]; !bytes.Equal(replayed, got) {
		return nil, refuse("appliance_log", tpm.PCRAppliance, "appliance log replays to %x, quote has %x", replayed, got)
	}
	return pcrs, nil
}

// policy returns the accepted releases, reloading them from the DB (and
// re-verifying their signatures) at most every PolicyRefresh.
func (s *Server) policy(ctx context.Context) ([]policyRelease, error) {
	s.polMu.Lock()
	defer s.polMu.Unlock()
	if s.pol != nil && s.db.now().Sub(s.polLoaded) < s.opts.PolicyRefresh {
		return s.pol, nil
	}
	trusted, k, err := s.db.ReleaseKeys(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.db.QueryContext(ctx, `SELECT digest, envelope FROM releases WHERE withdrawn_at IS NULL ORDER BY published_at DESC, digest`)
	if err != nil {
		return nil, fmt.Errorf("verifier: load releases: %w", err)
	}
	defer rows.Close()
	pol := []policyRelease{}
	for rows.Next() {
		var dg string
		var raw []byte
		if err := rows.Scan(&dg, &raw); err != nil {
			return nil, err
		}
		env, err := release.ParseEnvelope(raw)
		if err == nil {
			var v *release.Verified
			if v, err = env.Verify(trusted, k); err == nil {
				var pv map[uint32][]byte
				if pv, err = v.Manifest.PCRValues(); err == nil {
					p := policyRelease{digest: dg, label: v.Manifest.Name + " " + v.Manifest.Release, pcrs: map[int][]byte{}}
					for i, val := range pv {
						p.pcrs[int(i)] = val
					}
					pol = append(pol, p)
					continue
				}
			}
		}
		s.log.Warn("verifier: published release no longer verifies; ignored", "digest", dg, "err", err)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	s.pol, s.polLoaded = pol, s.db.now()
	return pol, nil
}

// checkPolicy compares every policy PCR with the quote: the appliance's
// firmware baseline, then the PCRs of one published release.
func (s *Server) checkPolicy(ctx context.Context, a *appliance, pcrs map[int][]byte) (*policyRelease, error) {
	base, err := s.db.baseline(ctx, s.db.db, a.id)
	if err != nil {
		return nil, err
	}
	if len(base) == 0 {
		return nil, refuse("baseline", -1, "no firmware baseline recorded")
	}
	for _, i := range slices.Sorted(mapKeys(base)) {
		if !bytes.Equal(base[i], pcrs[i]) {
			return nil, refuse("baseline", i, "PCR %d is %x, baseline %x", i, pcrs[i], base[i])
		}
	}
	pol, err := s.policy(ctx)
	if err != nil {
		return nil, err
	}
	if len(pol) == 0 {
		return nil, refuse("release", -1, "no release is published")
	}
	var best *Refusal
	bestBad := -1
	for i := range pol {
		bad, first := 0, -1
		for _, idx := range slices.Sorted(mapKeys(pol[i].pcrs)) {
			if !bytes.Equal(pol[i].pcrs[idx], pcrs[idx]) {
				bad++
				if first < 0 {
					first = idx
				}
			}
		}
		if bad == 0 {
			return &pol[i], nil
		}
		if best == nil || bad < bestBad {
			best = refuse("release", first, "PCR %d is %x; closest release %q expects %x (%d PCR(s) differ)",
				first, pcrs[first], pol[i].label, pol[i].pcrs[first], bad)
			bestBad = bad
		}
	}
	return nil, best
}

func mapKeys[V any](m map[int]V) func(func(int) bool) {
	return func(yield func(int) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// decide checks the store epoch, records the decision and builds the
// response (with the import blob for an unlock).
func (s *Server) decide(ctx context.Context, a *appliance, req *protocol.AttestRequest, rel *policyRelease, pcrs map[int][]byte) (*protocol.AttestResponse, error) {
	resp := &protocol.AttestResponse{LeaseSeconds: int64(s.opts.Lease / time.Second), Release: rel.label}
	if req.Purpose == protocol.PurposeUnlock {
		resp.Decision = "released"
		// Bind the share to the firmware baseline, the release's PCRs and
		// the phase PCR at its initial value.
		bind := map[uint32][]byte{uint32(tpm.PCRPhase): make([]byte, sha256.Size)}
		for _, i := range tpm.FirmwarePCRs {
			bind[uint32(i)] = pcrs[i]
		}
		for i := range rel.pcrs {
			bind[uint32(i)] = pcrs[i]
		}
		blob, err := server.CreateImportBlob(a.ekPub, a.share, &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: bind})
		if err != nil {
			return nil, fmt.Errorf("verifier: import blob: %w", err)
		}
		if resp.ImportBlob, err = proto.Marshal(blob); err != nil {
			return nil, err
		}
		for i := range bind {
			resp.PCRs = append(resp.PCRs, int(i))
		}
		slices.Sort(resp.PCRs)
		pol, err := s.policy(ctx)
		if err != nil {
			return nil, err
		}
		for _, p := range pol {
			if p.digest == rel.digest {
				continue
			}
			st := protocol.SealTarget{Release: p.label, PCRs: map[string]string{fmt.Sprint(tpm.PCRPhase): hex.EncodeToString(make([]byte, sha256.Size))}}
			for _, i := range tpm.FirmwarePCRs {
				st.PCRs[fmt.Sprint(i)] = hex.EncodeToString(pcrs[i])
			}
			for i, v := range p.pcrs {
				st.PCRs[fmt.Sprint(i)] = hex.EncodeToString(v)
			}
			resp.SealTargets = append(resp.SealTargets, st)
		}
	} else {
		resp.Decision = "renewed"
	}
	now := s.db.now()
	err := s.db.withTx(ctx, func(tx *sql.Tx) error {
		if ok, err := s.useNonce(ctx, tx, a.id, req.Nonce); err != nil {
			return err
		} else if !ok {
			return refuse("nonce", -1, "nonce already used (concurrent replay)")
		}
		var last int64
		err := s.db.txQueryRow(ctx, tx, `SELECT last_epoch FROM epochs WHERE appliance = ?`, a.id).Scan(&last)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		// Revocation may have landed since the first check: re-check under
		// the write lock so a decision never follows a revocation.
		var n int
		if err := s.db.txQueryRow(ctx, tx, `SELECT count(*) FROM revocations WHERE appliance = ?`, a.id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return revoked(a.id)
		}
		if req.StoreEpoch < uint64(last) {
			return refuse("epoch", -1, "store epoch %d is older than %d last reported: rolled-back store", req.StoreEpoch, last)
		}
		resp.Provision = last == 0 && req.StoreEpoch == 0
		if _, err := s.db.txExec(ctx, tx, `INSERT INTO epochs (appliance, last_epoch, updated_at) VALUES (?,?,?)
			ON CONFLICT(appliance) DO UPDATE SET last_epoch = excluded.last_epoch, updated_at = excluded.updated_at`,
			a.id, int64(req.StoreEpoch), now.Unix()); err != nil {
			return err
		}
		if _, err := s.db.txExec(ctx, tx, `INSERT INTO leases (appliance, release, granted_at, until) VALUES (?,?,?,?)
			ON CONFLICT(appliance) DO UPDATE SET release = excluded.release, granted_at = excluded.granted_at, until = excluded.until`,
			a.id, rel.label, now.Unix(), now.Add(s.opts.Lease).Unix()); err != nil {
			return err
		}
		if err := s.recordServerCert(ctx, tx, a.id, rel.label, req.ServerCert); err != nil {
			return err
		}
		rec := &AuditRecord{Actor: "appliance", Appliance: a.id, Action: "attest-" + string(req.Purpose), Outcome: "ok", PCR: -1,
			Detail: fmt.Sprintf("%s; release %s (%s); epoch %d; lease %s", resp.Decision, rel.label, rel.digest[:16], req.StoreEpoch, s.opts.Lease)}
		if err := s.db.appendAudit(ctx, tx, rec); err != nil {
			return err
		}
		resp.AuditSeq = rec.Seq
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
