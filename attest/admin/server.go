package admin

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// OutcomeForbidden is the audit outcome of a call refused for a missing
// role (check "role"). It is not "refused", the outcome of an appliance's
// refused attestation: an operator's call never marks an appliance as
// refused.
const OutcomeForbidden = "forbidden"

// Store is the verifier state the API serves: *verifier.DB.
type Store interface {
	Appliances(ctx context.Context) ([]verifier.ApplianceInfo, error)
	Appliance(ctx context.Context, id string) (*verifier.ApplianceInfo, error)
	Enroll(ctx context.Context, p verifier.EnrollParams) error
	Revoke(ctx context.Context, id, reason, actor string) error
	SetBaseline(ctx context.Context, id string, pcrs map[int][]byte, actor string) error
	AddEKRoot(ctx context.Context, cert *x509.Certificate, actor string) error
	EKRoots(ctx context.Context) ([]verifier.EKRoot, error)
	Audit(ctx context.Context, r *verifier.AuditRecord) error
	AuditRecords(ctx context.Context, f verifier.AuditFilter) ([]verifier.AuditRecord, error)
	VerifyAudit(ctx context.Context, wantHeadSeq int64, wantHead string) (*verifier.AuditReport, error)
	AddReleaseKey(ctx context.Context, pub ed25519.PublicKey, actor string) error
	SetReleaseThreshold(ctx context.Context, k int, actor string) error
	ReleaseKeys(ctx context.Context) ([]ed25519.PublicKey, int, error)
	PublishRelease(ctx context.Context, env *release.Envelope, actor string) (*release.Verified, error)
	WithdrawRelease(ctx context.Context, digest, actor string) error
	Releases(ctx context.Context) ([]verifier.ReleaseInfo, error)
}

// Options configure the admin API handler.
type Options struct {
	// DB is the verifier's state. Required.
	DB Store
	// Operators holds the operators' CA. Required: the handler checks
	// every request's client certificate against it itself, whatever the
	// listener's TLS configuration (use TLSConfig) let through.
	Operators *x509.CertPool
	// Fleet, when set, is served under /fleet/ to viewers, with the
	// "/fleet" prefix stripped (it sees "/", "/appliances/rack1", …).
	Fleet http.Handler
	// Metrics, when set, is served at /metrics to viewers.
	Metrics http.Handler
	// Logger receives refusals and internal errors (nil: discarded).
	Logger *slog.Logger
}

// maxBody bounds a request body: a release envelope may reach 2 MiB.
const maxBody = 3 << 20

// TLSConfig returns the admin listener's TLS configuration: cert as the
// server identity, TLS 1.3, and a client certificate issued by operators
// required on every connection.
func TLSConfig(cert tls.Certificate, operators *x509.CertPool) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    operators,
		MinVersion:   tls.VersionTLS13,
	}
}

// handler serves the API.
type handler struct {
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux
}

// operator is an authenticated request's operator.
type operator struct {
	name  string
	roles []Role
}

// actor is the operator's name in the audit log.
func (o *operator) actor() string { return "operator:" + o.name }

// NewHandler returns the admin API handler (see the package doc).
func NewHandler(opts Options) (http.Handler, error) {
	if opts.DB == nil || opts.Operators == nil {
		return nil, errors.New("admin: Options.DB and Options.Operators are required")
	}
	h := &handler{opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	for _, rt := range routes(opts) {
		h.mux.Handle(rt.pattern, h.guard(rt))
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("%w: %s %s", ErrNoEndpoint, r.Method, r.URL.Path))
	})
	return h, nil
}

// operatorKey is the context key of the request's *operator.
type operatorKey struct{}

// ServeHTTP authenticates every request before routing it.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op, err := h.authenticate(r)
	if err != nil {
		h.log.Warn("admin API: unauthenticated request", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
		writeError(w, err)
		return
	}
	h.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), operatorKey{}, op)))
}

// authenticate returns the request's operator: its client certificate
// must have been verified by the TLS layer and must chain to the
// operators' CA for client authentication now.
func (h *handler) authenticate(r *http.Request) (*operator, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.VerifiedChains) == 0 {
		return nil, fmt.Errorf("%w: no verified client certificate", ErrUnauthenticated)
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: h.opts.Operators, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if leaf.Subject.CommonName == "" {
		return nil, fmt.Errorf("%w: operator certificate without a common name", ErrUnauthenticated)
	}
	op := &operator{name: leaf.Subject.CommonName}
	for _, s := range pki.Roles(leaf) {
		if r := Role(s); slices.Contains(Roles, r) {
			op.roles = append(op.roles, r)
		}
	}
	if err := checkRoles(op.roles); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnauthenticated, op.name, err)
	}
	return op, nil
}

// guard authorises and audits a request to rt (authenticated by
// ServeHTTP), then serves it. A read is audited when authorised, before it
// runs; a change audits itself (the verifier records it with the operator
// as actor) and is audited here only when it fails.
func (h *handler) guard(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := r.Context().Value(operatorKey{}).(*operator)
		rec := &verifier.AuditRecord{Actor: op.actor(), Action: rt.action, PCR: -1, Detail: requestLine(r)}
		if id := r.PathValue("id"); protocol.ValidID(id) {
			rec.Appliance = id // an invalid one stays in the bounded request line
		}
		if !slices.Contains(op.roles, rt.role) {
			rec.Outcome, rec.Check = OutcomeForbidden, "role"
			rec.Detail += fmt.Sprintf(": needs role %s, certificate grants %s", rt.role, roleList(op.roles))
			err := fmt.Errorf("%w: %s needs role %s; %s holds %s", ErrForbidden, rt.action, rt.role, op.name, roleList(op.roles))
			h.log.Warn("admin API: refused", "operator", op.name, "action", rt.action, "need", rt.role)
			if aerr := h.opts.DB.Audit(r.Context(), rec); aerr != nil {
				err = aerr
			}
			writeError(w, err)
			return
		}
		if rt.serve == nil { // a mounted handler: a read
			if rt.unaudited {
				h.log.Debug("admin API", "operator", op.name, "action", rt.action)
				rt.handler.ServeHTTP(w, r)
			} else if h.auditRead(w, r, rec) {
				rt.handler.ServeHTTP(w, r)
			}
			return
		}
		if !rt.change && !h.auditRead(w, r, rec) {
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		v, err := rt.serve(&call{db: h.opts.DB, r: r, actor: op.actor()})
		if err != nil {
			if rt.change {
				rec.Outcome, rec.Detail = "error", rec.Detail+": "+bounded(err.Error())
				if aerr := h.opts.DB.Audit(r.Context(), rec); aerr != nil {
					h.log.Error("admin API: audit", "err", aerr)
				}
			}
			if _, status := classify(err); status == http.StatusInternalServerError {
				h.log.Error("admin API", "operator", op.name, "action", rt.action, "err", err)
			}
			writeError(w, err)
			return
		}
		writeJSON(w, v)
	})
}

// auditRead records an authorised read as "admin-read"; on failure it
// answers 500 and returns false.
func (h *handler) auditRead(w http.ResponseWriter, r *http.Request, rec *verifier.AuditRecord) bool {
	rec.Outcome, rec.Detail, rec.Action = "ok", rec.Action+" "+rec.Detail, "admin-read"
	if err := h.opts.DB.Audit(r.Context(), rec); err != nil {
		h.log.Error("admin API: audit", "err", err)
		writeError(w, err)
		return false
	}
	return true
}

// requestLine is the method and the request URI, bounded, for the audit
// log.
func requestLine(r *http.Request) string { return bounded(r.Method + " " + r.URL.RequestURI()) }

// maxDetail bounds what a request puts in an audit record's detail.
const maxDetail = 512

// bounded is s cut to maxDetail bytes (a request may carry megabytes).
func bounded(s string) string {
	if len(s) > maxDetail {
		return strings.ToValidUTF8(s[:maxDetail], "") + "..."
	}
	return s
}

// writeJSON answers v as JSON, or 204 for nil.
func writeJSON(w http.ResponseWriter, v any) {
	if v == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// writeError answers err as an ErrorBody with its status; internal errors
// are not described to the client.
func writeError(w http.ResponseWriter, err error) {
	code, status := classify(err)
	msg := err.Error()
	if status == http.StatusInternalServerError {
		msg = "internal error (see the verifier's log)"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(ErrorBody{Error: msg, Code: code})
}

// decode reads the request body as exactly one JSON value into v.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: body: %v", ErrBadRequest, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: body: trailing data", ErrBadRequest)
	}
	return nil
}
