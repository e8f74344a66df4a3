package admin

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
)

// route is one endpoint: the role it needs and what serves it.
type route struct {
	// pattern is the http.ServeMux pattern.
	pattern string
	// role is the one role that may call it.
	role Role
	// action names it in the audit log: for a change, the verifier's own
	// action name.
	action string
	// change is set for an endpoint that changes the verifier's state.
	change bool
	// serve answers the call: a JSON value, or nil for 204.
	serve func(*call) (any, error)
	// handler, instead of serve, is a mounted read-only handler.
	handler http.Handler
	// unaudited skips the audit record of an authorised call (refusals
	// are still recorded): a scraper polling every few seconds would
	// otherwise bury the operators' trail.
	unaudited bool
}

// routes is the role matrix: every endpoint and the role it needs
// (docs/admin-api.md has the same table).
func routes(o Options) []route {
	rs := []route{
		{pattern: "GET " + Prefix + "appliances", role: Viewer, action: "appliances-list", serve: appliancesList},
		{pattern: "GET " + Prefix + "appliances/{id}", role: Viewer, action: "appliance-show", serve: applianceShow},
		{pattern: "GET " + Prefix + "ek-roots", role: Viewer, action: "ek-roots-list", serve: ekRootsList},
		{pattern: "GET " + Prefix + "releases", role: Viewer, action: "releases-list", serve: releasesList},
		{pattern: "GET " + Prefix + "release-keys", role: Viewer, action: "release-keys-list", serve: releaseKeysList},
		{pattern: "POST " + Prefix + "appliances", role: Enroller, action: "enroll", change: true, serve: enroll},
		{pattern: "POST " + Prefix + "appliances/{id}/baseline", role: Enroller, action: "baseline-set", change: true, serve: setBaseline},
		{pattern: "POST " + Prefix + "ek-roots", role: Trustee, action: "ek-root-add", change: true, serve: addEKRoot},
		{pattern: "POST " + Prefix + "appliances/{id}/revoke", role: Revoker, action: "revoke", change: true, serve: revoke},
		{pattern: "POST " + Prefix + "releases", role: Publisher, action: "release-publish", change: true, serve: publish},
		{pattern: "POST " + Prefix + "releases/{digest}/withdraw", role: Publisher, action: "release-withdraw", change: true, serve: withdraw},
		{pattern: "POST " + Prefix + "release-keys", role: Trustee, action: "release-key-add", change: true, serve: addReleaseKey},
		{pattern: "POST " + Prefix + "release-threshold", role: Trustee, action: "release-threshold", change: true, serve: setThreshold},
		{pattern: "GET " + Prefix + "audit", role: Auditor, action: "audit-list", serve: auditList},
		{pattern: "GET " + Prefix + "audit/verify", role: Auditor, action: "audit-verify", serve: auditVerify},
	}
	if o.Fleet != nil {
		rs = append(rs, route{pattern: "GET /fleet/", role: Viewer, action: "fleet", handler: http.StripPrefix("/fleet", o.Fleet)})
	}
	if o.Metrics != nil {
		rs = append(rs, route{pattern: "GET /metrics", role: Viewer, action: "metrics", handler: o.Metrics, unaudited: true})
	}
	return rs
}

// MaxAuditPage is the most audit records one GET /admin/v1/audit answers
// (and its default limit): the log grows with every attestation, and one
// request must not load it whole. Client.AuditRecords pages through more.
const MaxAuditPage = 1000

// call is one authorised API call.
type call struct {
	db Store
	r  *http.Request
	// actor is the operator, as the audit log names them.
	actor string
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](l []T, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	if l == nil {
		l = []T{}
	}
	return l, nil
}

func appliancesList(c *call) (any, error) { return nonNil(c.db.Appliances(c.r.Context())) }

func applianceShow(c *call) (any, error) { return c.db.Appliance(c.r.Context(), c.r.PathValue("id")) }

func ekRootsList(c *call) (any, error) { return nonNil(c.db.EKRoots(c.r.Context())) }

func releasesList(c *call) (any, error) { return nonNil(c.db.Releases(c.r.Context())) }

func releaseKeysList(c *call) (any, error) {
	pubs, k, err := c.db.ReleaseKeys(c.r.Context())
	if err != nil {
		return nil, err
	}
	out := ReleaseKeys{Keys: []ReleaseKey{}, Threshold: k}
	for _, p := range pubs {
		out.Keys = append(out.Keys, ReleaseKey{ID: release.KeyID(p), PublicKey: p})
	}
	return out, nil
}

func enroll(c *call) (any, error) {
	var req EnrollRequest
	if err := decode(c.r, &req); err != nil {
		return nil, err
	}
	p := verifier.EnrollParams{ID: req.ID, EKCert: req.EKCert, Actor: c.actor}
	if req.EKPublic != nil {
		pub, err := x509.ParsePKIXPublicKey(req.EKPublic)
		if err != nil {
			return nil, fmt.Errorf("%w: ek_public: %v", ErrBadRequest, err)
		}
		p.EKPublic = pub
	}
	if req.Share != nil {
		s, err := keys.ParseShare(req.Share)
		if err != nil {
			return nil, fmt.Errorf("%w: share: %v", ErrBadRequest, err)
		}
		defer clear(s.Value)
		p.Share = s
	}
	return nil, c.db.Enroll(c.r.Context(), p)
}

func setBaseline(c *call) (any, error) {
	var req BaselineRequest
	if err := decode(c.r, &req); err != nil {
		return nil, err
	}
	pcrs := map[int][]byte{}
	for k, v := range req.PCRs {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i > 23 {
			return nil, fmt.Errorf("%w: PCR %q: want 0..23", ErrBadRequest, k)
		}
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%w: PCR %d: want 64 hex digits (SHA-256)", ErrBadRequest, i)
		}
		pcrs[i] = b
	}
	id := c.r.PathValue("id")
	if _, err := c.db.Appliance(c.r.Context(), id); err != nil {
		return nil, err
	}
	return nil, c.db.SetBaseline(c.r.Context(), id, pcrs, c.actor)
}

func addEKRoot(c *call) (any, error) {
	var req EKRootRequest
	if err := decode(c.r, &req); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(req.Cert)
	if err != nil {
		return nil, fmt.Errorf("%w: cert: %v", ErrBadRequest, err)
	}
	return nil, c.db.AddEKRoot(c.r.Context(), cert, c.actor)
}

// maxReason bounds a revocation's reason, which the audit log keeps.
const maxReason = 1024

func revoke(c *call) (any, error) {
	var req RevokeRequest
	if err := decode(c.r, &req); err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.Reason) == "" || len(req.Reason) > maxReason {
		return nil, fmt.Errorf("%w: reason must say why, in at most %d bytes", ErrBadRequest, maxReason)
	}
	return nil, c.db.Revoke(c.r.Context(), c.r.PathValue("id"), req.Reason, c.actor)
}

func publish(c *call) (any, error) {
	var req PublishRequest
	if err := decode(c.r, &req); err != nil {
		return nil, err
	}
	env, err := release.ParseEnvelope(req.Envelope)
	if err != nil {
		return nil, err
	}
	v, err := c.db.PublishRelease(c.r.Context(), env, c.actor)
	if err != nil {
		return nil, err
	}
	return Published{Digest: hex.EncodeToString(v.Digest[:]), SignedBy: v.SignedBy, Manifest: v.Manifest}, nil
}

func withdraw(c *call) (any, error) {
	return nil, c.db.WithdrawRelease(c.r.Context(), c.r.PathValue("digest"), c.actor)
}

func addReleaseKey(c *call) (any, error) {
	var req ReleaseKeyRequest
	if err := decode(c.r, &req); err != nil {
		return nil, err
	}
	if len(req.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public_key of %d bytes, want %d", ErrBadRequest, len(req.PublicKey), ed25519.PublicKeySize)
	}
	return nil, c.db.AddReleaseKey(c.r.Context(), ed25519.PublicKey(req.PublicKey), c.actor)
}

func setThreshold(c *call) (any, error) {
	var req ThresholdRequest
	if err := decode(c.r, &req); err != nil {
		return nil, err
	}
	return nil, c.db.SetReleaseThreshold(c.r.Context(), req.Threshold, c.actor)
}

func auditList(c *call) (any, error) {
	q := c.r.URL.Query()
	f := verifier.AuditFilter{Appliance: q.Get("appliance")}
	var err error
	if f.Limit, err = intParam(q.Get("limit")); err != nil {
		return nil, fmt.Errorf("%w: limit: %v", ErrBadRequest, err)
	}
	switch {
	case f.Limit == 0:
		f.Limit = MaxAuditPage
	case f.Limit > MaxAuditPage:
		return nil, fmt.Errorf("%w: limit %d: at most %d records a request (page with after)", ErrBadRequest, f.Limit, MaxAuditPage)
	}
	after, err := intParam(q.Get("after"))
	if err != nil {
		return nil, fmt.Errorf("%w: after: %v", ErrBadRequest, err)
	}
	f.AfterSeq = int64(after)
	switch q.Get("from") {
	case "", "newest":
	case "oldest":
		f.Oldest = true
	default:
		return nil, fmt.Errorf("%w: from: want newest or oldest", ErrBadRequest)
	}
	return nonNil(c.db.AuditRecords(c.r.Context(), f))
}

func auditVerify(c *call) (any, error) {
	q := c.r.URL.Query()
	seq, err := intParam(q.Get("seq"))
	if err != nil {
		return nil, fmt.Errorf("%w: seq: %v", ErrBadRequest, err)
	}
	hash := strings.ToLower(q.Get("hash"))
	if (hash == "") != (seq == 0) {
		return nil, fmt.Errorf("%w: seq and hash go together", ErrBadRequest)
	}
	if _, err := hex.DecodeString(hash); err != nil || (hash != "" && len(hash) != 64) {
		return nil, fmt.Errorf("%w: hash: want 64 hex digits", ErrBadRequest)
	}
	return c.db.VerifyAudit(c.r.Context(), int64(seq), hash)
}

// intParam parses an optional non-negative integer query parameter.
func intParam(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a non-negative integer", s)
	}
	return n, nil
}
