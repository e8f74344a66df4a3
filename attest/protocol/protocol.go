// Package protocol defines the messages of Embassy's attestation API
// (HTTPS, JSON, paths under /v1/) shared by the appliance's client
// (attest/agent) and the verifier (attest/verifier), and their strict
// decoding. Byte fields are base64 in JSON. The protocol is documented in
// docs/attestation.md.
package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"
)

// API paths.
const (
	PathEnrollChallenge = "/v1/enroll/challenge"
	PathEnrollActivate  = "/v1/enroll/activate"
	PathNonce           = "/v1/attest/nonce"
	PathAttest          = "/v1/attest"
)

// MaxBody bounds a request or response body.
const MaxBody = 1 << 20

// NonceSize is the size of a verifier nonce.
const NonceSize = 32

// Purpose says what an attestation is for.
type Purpose string

const (
	// PurposeUnlock asks for the remote share (the first attestation of a
	// boot). The phase PCR must still be at its initial value.
	PurposeUnlock Purpose = "unlock"
	// PurposeHeartbeat renews the lease of a running appliance; no share is
	// granted.
	PurposeHeartbeat Purpose = "heartbeat"
)

// Decisions in AttestResponse.Decision.
const (
	// DecisionGranted answers an unlock: the remote share is granted
	// (AttestResponse.ImportBlob). Before the key hand-over was called a
	// grant the wire value was "released".
	DecisionGranted = "granted"
	// DecisionRenewed answers a heartbeat: the lease is renewed.
	DecisionRenewed = "renewed"
)

// ErrFormat reports a malformed message.
var ErrFormat = errors.New("protocol: malformed message")

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidID reports whether s is a valid appliance id: 1..64 characters of
// letters, digits, '.', '_' and '-', starting with a letter or digit.
func ValidID(s string) bool { return idRE.MatchString(s) }

// EnrollChallengeRequest starts binding an attestation key to the
// appliance's enrolled EK.
type EnrollChallengeRequest struct {
	// ApplianceID is the id the operator enrolled.
	ApplianceID string `json:"appliance_id"`
	// AKPublic is the attestation key's TPMT_PUBLIC encoding.
	AKPublic []byte `json:"ak_public"`
}

// EnrollChallengeResponse carries a MakeCredential challenge for the AK,
// encrypted to the enrolled EK.
type EnrollChallengeResponse struct {
	// Session identifies the challenge in EnrollActivateRequest.
	Session string `json:"session"`
	// CredentialBlob and EncryptedSecret are TPM2_ActivateCredential's
	// inputs (TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, with their size
	// prefixes).
	CredentialBlob  []byte `json:"credential_blob"`
	EncryptedSecret []byte `json:"encrypted_secret"`
	// Expires is when the challenge stops being accepted.
	Expires time.Time `json:"expires"`
}

// EnrollActivateRequest proves the AK lives in the TPM holding the EK.
type EnrollActivateRequest struct {
	ApplianceID string `json:"appliance_id"`
	Session     string `json:"session"`
	// Secret is the credential recovered by TPM2_ActivateCredential.
	Secret []byte `json:"secret"`
	// Attestation is a go-tpm-tools attest.Attestation protobuf made with
	// the AK over EnrollQuoteData(session, secret); its PCRs become the
	// appliance's firmware baseline unless the operator set one.
	Attestation []byte `json:"attestation"`
}

// EnrollActivateResponse confirms the AK binding.
type EnrollActivateResponse struct {
	// AKName is the hex TPM name of the now trusted AK.
	AKName string `json:"ak_name"`
	// Baseline is the firmware baseline on record (PCR index -> hex).
	Baseline map[string]string `json:"baseline"`
}

// NonceRequest asks for a fresh attestation nonce.
type NonceRequest struct {
	ApplianceID string `json:"appliance_id"`
}

// NonceResponse carries a single-use nonce.
type NonceResponse struct {
	Nonce   []byte    `json:"nonce"`
	Expires time.Time `json:"expires"`
}

// AttestRequest presents evidence.
type AttestRequest struct {
	ApplianceID string  `json:"appliance_id"`
	Purpose     Purpose `json:"purpose"`
	// Nonce is the nonce from NonceResponse.
	Nonce []byte `json:"nonce"`
	// StoreEpoch is the store's current epoch (0: no store yet).
	StoreEpoch uint64 `json:"store_epoch"`
	// Attestation is a go-tpm-tools attest.Attestation protobuf (quote over
	// the SHA-256 bank and the firmware's TCG event log) made with the
	// enrolled AK over QuoteData(...).
	Attestation []byte `json:"attestation"`
	// ApplianceLog is the appliance's measurement log (attest/measure).
	ApplianceLog []byte `json:"appliance_log"`
	// ServerCert (heartbeat only, optional) is the DER certificate of the
	// NBD server identity the appliance serves with. The quote covers it,
	// so the verifier records, for the home state's NBD clients to pin, a
	// server identity reported by the attested software itself rather than
	// one read off a console in the host country.
	ServerCert []byte `json:"server_cert,omitempty"`
	// QuoteSet, when not empty, lists the QuoteData of every verifier one
	// quote was made for (SHA-256 each, at most MaxQuoteSet): an appliance
	// attesting to k of n verifiers quotes once over QuoteSetData(QuoteSet)
	// instead of once per verifier. It must contain this request's own
	// QuoteData. The other entries are digests, so this verifier learns
	// nothing of the others' nonces and cannot present their requests.
	QuoteSet [][]byte `json:"quote_set,omitempty"`
}

// MaxQuoteSet bounds AttestRequest.QuoteSet (one entry per verifier).
const MaxQuoteSet = 16

// AttestResponse is the verifier's positive decision.
type AttestResponse struct {
	// Decision is DecisionGranted (unlock) or DecisionRenewed (heartbeat).
	Decision string `json:"decision"`
	// LeaseSeconds is how long the appliance may serve before it must
	// re-attest.
	LeaseSeconds int64 `json:"lease_seconds"`
	// Provision is true when the verifier has never seen a store epoch
	// above 0 from this appliance: the store must be created.
	Provision bool `json:"provision,omitempty"`
	// ImportBlob is the remote share as a go-tpm-tools ImportBlob protobuf,
	// encrypted to the enrolled EK and bound to PCRs (unlock only).
	ImportBlob []byte `json:"import_blob,omitempty"`
	// PCRs lists the PCRs the share is bound to; the appliance seals its
	// local share to the same PCRs.
	PCRs []int `json:"pcrs,omitempty"`
	// Release names the accepted release ("name release").
	Release string `json:"release"`
	// SealTargets (unlock and heartbeat) lists the other published releases with
	// the PCR values (SHA-256, hex, keyed by index) a boot of each will
	// have, phase PCR at zero. The appliance seals its local share to each
	// while it holds it, so it can still unlock after an upgrade.
	SealTargets []SealTarget `json:"seal_targets,omitempty"`
	// AuditSeq is the audit record of the decision.
	AuditSeq int64 `json:"audit_seq"`
}

// SealTarget is the predicted PCR state of another release.
type SealTarget struct {
	Release string            `json:"release"`
	PCRs    map[string]string `json:"pcrs"`
}

// Error codes in ErrorResponse.
const (
	CodeRefused     = "refused"
	CodeRevoked     = "revoked"
	CodeNotEnrolled = "not_enrolled"
	CodeBadRequest  = "bad_request"
	CodeInternal    = "internal"
)

// ErrorResponse is every non-2xx body.
type ErrorResponse struct {
	// Code is one of the Code constants.
	Code string `json:"code"`
	// Check names the failed check (refusals), e.g. "nonce", "pcr",
	// "quote", "eventlog", "appliance_log", "epoch", "ak".
	Check string `json:"check,omitempty"`
	// PCR is the PCR that differed, when one did.
	PCR *int `json:"pcr,omitempty"`
	// Detail is a human explanation.
	Detail string `json:"detail"`
	// AuditSeq is the audit record of the refusal, when one was written.
	AuditSeq int64 `json:"audit_seq,omitempty"`
}

// MaxServerCert bounds AttestRequest.ServerCert.
const MaxServerCert = 4096

// QuoteData is the extraData the appliance's quote covers: it binds the
// verifier's nonce to the appliance id, the purpose, the reported store
// epoch and the NBD server certificate (empty when not reported), so none
// can be changed in transit.
func QuoteData(nonce []byte, applianceID string, purpose Purpose, epoch uint64, serverCert []byte) []byte {
	h := sha256.New()
	h.Write([]byte("embassy-attest-v2\x00"))
	writeField(h, nonce)
	writeField(h, []byte(applianceID))
	writeField(h, []byte(purpose))
	binary.Write(h, binary.BigEndian, epoch)
	writeField(h, serverCert)
	return h.Sum(nil)
}

// QuoteSetData is the extraData of one quote made for several verifiers:
// it commits to each verifier's QuoteData, in the order given.
func QuoteSetData(set [][]byte) []byte {
	h := sha256.New()
	h.Write([]byte("embassy-attest-set-v1\x00"))
	binary.Write(h, binary.BigEndian, uint32(len(set)))
	for _, d := range set {
		h.Write(d)
	}
	return h.Sum(nil)
}

// EnrollQuoteData is the extraData of the enrollment quote.
func EnrollQuoteData(session string, secret []byte) []byte {
	h := sha256.New()
	h.Write([]byte("embassy-enroll-v1\x00"))
	writeField(h, []byte(session))
	writeField(h, secret)
	return h.Sum(nil)
}

func writeField(w io.Writer, b []byte) {
	binary.Write(w, binary.BigEndian, uint32(len(b)))
	w.Write(b)
}

// Validator is implemented by messages with field constraints.
type Validator interface{ Validate() error }

// Decode reads one JSON message of at most MaxBody bytes from r into v,
// refusing unknown fields and trailing data, then validates it.
func Decode(r io.Reader, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, MaxBody+1))
	if err != nil {
		return fmt.Errorf("protocol: read: %w", err)
	}
	if len(data) > MaxBody {
		return fmt.Errorf("%w: body over %d bytes", ErrFormat, MaxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrFormat)
	}
	if val, ok := v.(Validator); ok {
		return val.Validate()
	}
	return nil
}

func checkID(id string) error {
	if !ValidID(id) {
		return fmt.Errorf("%w: appliance id %q", ErrFormat, id)
	}
	return nil
}

// Validate checks the request's fields.
func (r *EnrollChallengeRequest) Validate() error {
	if err := checkID(r.ApplianceID); err != nil {
		return err
	}
	if len(r.AKPublic) == 0 || len(r.AKPublic) > 1024 {
		return fmt.Errorf("%w: ak_public of %d bytes", ErrFormat, len(r.AKPublic))
	}
	return nil
}

// Validate checks the request's fields.
func (r *EnrollActivateRequest) Validate() error {
	if err := checkID(r.ApplianceID); err != nil {
		return err
	}
	if r.Session == "" || len(r.Session) > 128 || len(r.Secret) == 0 || len(r.Secret) > 64 || len(r.Attestation) == 0 {
		return fmt.Errorf("%w: session, secret and attestation required", ErrFormat)
	}
	return nil
}

// Validate checks the request's fields.
func (r *NonceRequest) Validate() error { return checkID(r.ApplianceID) }

// Validate checks the request's fields.
func (r *AttestRequest) Validate() error {
	if err := checkID(r.ApplianceID); err != nil {
		return err
	}
	if r.Purpose != PurposeUnlock && r.Purpose != PurposeHeartbeat {
		return fmt.Errorf("%w: purpose %q", ErrFormat, r.Purpose)
	}
	if len(r.Nonce) != NonceSize {
		return fmt.Errorf("%w: nonce of %d bytes", ErrFormat, len(r.Nonce))
	}
	if len(r.Attestation) == 0 || len(r.ApplianceLog) == 0 {
		return fmt.Errorf("%w: attestation and appliance_log required", ErrFormat)
	}
	if len(r.ServerCert) > 0 && r.Purpose != PurposeHeartbeat {
		return fmt.Errorf("%w: server_cert is reported by heartbeats only", ErrFormat)
	}
	if len(r.ServerCert) > MaxServerCert {
		return fmt.Errorf("%w: server_cert of %d bytes (at most %d)", ErrFormat, len(r.ServerCert), MaxServerCert)
	}
	if len(r.QuoteSet) > MaxQuoteSet {
		return fmt.Errorf("%w: quote_set of %d entries (at most %d)", ErrFormat, len(r.QuoteSet), MaxQuoteSet)
	}
	seen := map[string]bool{}
	for _, d := range r.QuoteSet {
		if len(d) != sha256.Size || seen[string(d)] {
			return fmt.Errorf("%w: quote_set entries must be distinct %d-byte digests", ErrFormat, sha256.Size)
		}
		seen[string(d)] = true
	}
	return nil
}
