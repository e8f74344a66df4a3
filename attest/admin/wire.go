package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
)

// Prefix is the path every endpoint of this version of the API is under.
const Prefix = "/admin/v1/"

// Wire format, version 1 (docs/admin-api.md). []byte fields are standard
// base64, as encoding/json writes them. Responses are the verifier's own
// types (verifier.ApplianceInfo, AuditRecord, AuditReport, EKRoot,
// ReleaseInfo) or the ones below; a change with nothing to report answers
// 204 No Content.

// EnrollRequest is the body of POST /admin/v1/appliances.
type EnrollRequest struct {
	// ID is the appliance id.
	ID string `json:"id"`
	// EKCert is the EK certificate (DER), or
	EKCert []byte `json:"ek_cert,omitempty"`
	// EKPublic the EK public key (PKIX DER) when the TPM has no certificate.
	EKPublic []byte `json:"ek_public,omitempty"`
	// Share is this verifier's share of the remote secret (keys.Share's
	// binary encoding), dealt by the enrolment ceremony; empty: the
	// verifier deals a 1-of-1 set itself.
	Share []byte `json:"share,omitempty"`
}

// RevokeRequest is the body of POST /admin/v1/appliances/{id}/revoke.
type RevokeRequest struct {
	// Reason says why; it must not be blank.
	Reason string `json:"reason"`
}

// BaselineRequest is the body of POST /admin/v1/appliances/{id}/baseline.
type BaselineRequest struct {
	// PCRs maps a PCR index ("0".."23") to its SHA-256 value in hex.
	PCRs map[string]string `json:"pcrs"`
}

// EKRootRequest is the body of POST /admin/v1/ek-roots.
type EKRootRequest struct {
	// Cert is the CA certificate (DER).
	Cert []byte `json:"cert"`
}

// ReleaseKeyRequest is the body of POST /admin/v1/release-keys.
type ReleaseKeyRequest struct {
	// PublicKey is the raw 32-byte Ed25519 public key.
	PublicKey []byte `json:"public_key"`
}

// ThresholdRequest is the body of POST /admin/v1/release-threshold.
type ThresholdRequest struct {
	// Threshold is k, the distinct trusted signatures a release needs.
	Threshold int `json:"threshold"`
}

// ReleaseKeys is the answer to GET /admin/v1/release-keys.
type ReleaseKeys struct {
	// Keys are the trusted release keys, ordered by id.
	Keys []ReleaseKey `json:"keys"`
	// Threshold is k.
	Threshold int `json:"threshold"`
}

// ReleaseKey is one trusted release key.
type ReleaseKey struct {
	// ID is release.KeyID of the key.
	ID string `json:"id"`
	// PublicKey is the raw 32-byte Ed25519 public key.
	PublicKey []byte `json:"public_key"`
}

// PublishRequest is the body of POST /admin/v1/releases.
type PublishRequest struct {
	// Envelope is the signed release envelope, as `embassyctl release
	// sign` writes it.
	Envelope json.RawMessage `json:"envelope"`
}

// Published is the answer to POST /admin/v1/releases: what the verifier
// checked and now accepts.
type Published struct {
	// Digest is the hex SHA-256 of the manifest payload.
	Digest string `json:"digest"`
	// SignedBy are the ids of the trusted keys whose signatures verified.
	SignedBy []string `json:"signed_by"`
	// Manifest is the verified manifest.
	Manifest *release.Manifest `json:"manifest"`
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	// Error is a human-readable message.
	Error string `json:"error"`
	// Code is one of the codes in errorCodes, for programs.
	Code string `json:"code"`
}

// Errors for callers to act on. Client errors unwrap to these, or to the
// verifier's and release package's sentinel errors (verifier.ErrNotFound,
// ErrExists, ErrEKCert, ErrBadArgument, release.ErrThreshold,
// release.ErrFormat) for the codes that carry them.
var (
	// ErrUnauthenticated: no operator certificate, or one the operators'
	// CA did not issue (HTTP 401).
	ErrUnauthenticated = errors.New("admin: not authenticated as an operator")
	// ErrForbidden: the operator's certificate lacks the role (HTTP 403).
	ErrForbidden = errors.New("admin: operator lacks the role")
	// ErrBadRequest: a malformed request (HTTP 400).
	ErrBadRequest = errors.New("admin: bad request")
	// ErrNoEndpoint: no such endpoint (HTTP 404, code "no_endpoint").
	ErrNoEndpoint = errors.New("admin: no such endpoint")
)

// errorCodes maps the errors the API reports to their code and HTTP
// status, in the order they are tried (errors.Is). Anything else is 500,
// code "internal".
var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{ErrUnauthenticated, "unauthenticated", http.StatusUnauthorized},
	{ErrForbidden, "forbidden", http.StatusForbidden},
	{ErrBadRequest, "bad_request", http.StatusBadRequest},
	{ErrNoEndpoint, "no_endpoint", http.StatusNotFound},
	{verifier.ErrBadArgument, "bad_argument", http.StatusBadRequest},
	{release.ErrFormat, "release_format", http.StatusBadRequest},
	{verifier.ErrNotFound, "not_found", http.StatusNotFound},
	{verifier.ErrExists, "exists", http.StatusConflict},
	{verifier.ErrEKCert, "ek_cert_untrusted", http.StatusUnprocessableEntity},
	{release.ErrThreshold, "release_threshold", http.StatusUnprocessableEntity},
}

// Error is an error answer as the Client sees it. It unwraps to the
// sentinel error of its code, when it has one.
type Error struct {
	// Status is the HTTP status.
	Status int
	// Code and Message are the answer's ErrorBody.
	Code, Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("verifier admin API: %s (HTTP %d, %s)", e.Message, e.Status, e.Code)
}

// Unwrap returns the sentinel error of e's code, or nil.
func (e *Error) Unwrap() error {
	for _, c := range errorCodes {
		if c.code == e.Code {
			return c.err
		}
	}
	return nil
}

// classify returns err's code and HTTP status.
func classify(err error) (code string, status int) {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	return "internal", http.StatusInternalServerError
}
