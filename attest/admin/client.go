package admin

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
)

// Client calls a verifier's admin API as one operator. Its methods mirror
// *verifier.DB's, so code written against an interface of them drives
// either. The actor arguments are ignored: the verifier names the operator
// of the client certificate in its audit log. Safe for concurrent use.
type Client struct {
	base string // scheme://host[:port], no trailing slash
	hc   *http.Client
}

// NewClient returns a client of the admin API at baseURL (https://host:port)
// that authenticates with the operator certificate cert and trusts the
// verifier's server certificate when it chains to roots (nil: the system's
// roots).
func NewClient(baseURL string, cert tls.Certificate, roots *x509.CertPool) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("admin: verifier URL %q: want https://HOST[:PORT]", baseURL)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &Client{base: "https://" + u.Host, hc: &http.Client{Transport: tr, Timeout: time.Minute}}, nil
}

// Close releases the client's idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// do sends method path with body in as JSON (nil: none) and decodes the
// answer into out (nil: expect none).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("admin: %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+Prefix+path, body)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var eb ErrorBody
		if json.Unmarshal(b, &eb) != nil || eb.Code == "" {
			eb = ErrorBody{Code: "http", Error: strings.TrimSpace(string(b))}
		}
		return &Error{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
	}
	if out == nil {
		return nil
	}
	// An answer (the whole audit log, say) may be large: stream it.
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin: %s %s: answer: %w", method, path, err)
	}
	return nil
}

// maxErrorBody bounds the error answer the client reads.
const maxErrorBody = 64 << 10

// Appliances lists all appliances, ordered by id.
func (c *Client) Appliances(ctx context.Context) ([]verifier.ApplianceInfo, error) {
	var out []verifier.ApplianceInfo
	return out, c.do(ctx, http.MethodGet, "appliances", nil, &out)
}

// Appliance returns one appliance's record.
func (c *Client) Appliance(ctx context.Context, id string) (*verifier.ApplianceInfo, error) {
	var out verifier.ApplianceInfo
	if err := c.do(ctx, http.MethodGet, "appliances/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Enroll enrolls an appliance (p.Actor is ignored).
func (c *Client) Enroll(ctx context.Context, p verifier.EnrollParams) error {
	req := EnrollRequest{ID: p.ID, EKCert: p.EKCert}
	if p.EKPublic != nil {
		der, err := x509.MarshalPKIXPublicKey(p.EKPublic)
		if err != nil {
			return fmt.Errorf("admin: EK public key: %w", err)
		}
		req.EKPublic = der
	}
	if p.Share != nil {
		b, err := p.Share.MarshalBinary()
		if err != nil {
			return fmt.Errorf("admin: share: %w", err)
		}
		defer clear(b)
		req.Share = b
	}
	return c.do(ctx, http.MethodPost, "appliances", req, nil)
}

// Revoke revokes an appliance.
func (c *Client) Revoke(ctx context.Context, id, reason, _ string) error {
	return c.do(ctx, http.MethodPost, "appliances/"+url.PathEscape(id)+"/revoke", RevokeRequest{Reason: reason}, nil)
}

// SetBaseline replaces an appliance's firmware baseline.
func (c *Client) SetBaseline(ctx context.Context, id string, pcrs map[int][]byte, _ string) error {
	req := BaselineRequest{PCRs: map[string]string{}}
	for k, v := range pcrs {
		req.PCRs[strconv.Itoa(k)] = hex.EncodeToString(v)
	}
	return c.do(ctx, http.MethodPost, "appliances/"+url.PathEscape(id)+"/baseline", req, nil)
}

// AddEKRoot trusts a TPM manufacturer CA for EK certificates.
func (c *Client) AddEKRoot(ctx context.Context, cert *x509.Certificate, _ string) error {
	return c.do(ctx, http.MethodPost, "ek-roots", EKRootRequest{Cert: cert.Raw}, nil)
}

// EKRoots lists the trusted EK CAs.
func (c *Client) EKRoots(ctx context.Context) ([]verifier.EKRoot, error) {
	var out []verifier.EKRoot
	return out, c.do(ctx, http.MethodGet, "ek-roots", nil, &out)
}

// AuditRecords returns audit records in ascending order, as
// verifier.DB.AuditRecords does. With f.Limit 0 it pages through every
// record, MaxAuditPage a request; f.Limit may not exceed MaxAuditPage.
func (c *Client) AuditRecords(ctx context.Context, f verifier.AuditFilter) ([]verifier.AuditRecord, error) {
	if f.Limit > MaxAuditPage {
		return nil, fmt.Errorf("%w: limit %d: at most %d (or 0 for every record)", ErrBadRequest, f.Limit, MaxAuditPage)
	}
	if f.Limit > 0 {
		return c.auditPage(ctx, f)
	}
	// Every record: page forward from f.AfterSeq until a short page.
	var all []verifier.AuditRecord
	for {
		page, err := c.auditPage(ctx, verifier.AuditFilter{Appliance: f.Appliance, AfterSeq: f.AfterSeq, Limit: MaxAuditPage, Oldest: true})
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) < MaxAuditPage {
			return all, nil
		}
		f.AfterSeq = page[len(page)-1].Seq
	}
}

// auditPage is one GET /admin/v1/audit.
func (c *Client) auditPage(ctx context.Context, f verifier.AuditFilter) ([]verifier.AuditRecord, error) {
	q := url.Values{}
	if f.Appliance != "" {
		q.Set("appliance", f.Appliance)
	}
	q.Set("limit", strconv.Itoa(f.Limit))
	if f.AfterSeq > 0 {
		q.Set("after", strconv.FormatInt(f.AfterSeq, 10))
	}
	if f.Oldest {
		q.Set("from", "oldest")
	}
	var out []verifier.AuditRecord
	return out, c.do(ctx, http.MethodGet, "audit?"+q.Encode(), nil, &out)
}

// VerifyAudit walks the verifier's whole audit chain (see
// verifier.DB.VerifyAudit).
func (c *Client) VerifyAudit(ctx context.Context, wantHeadSeq int64, wantHead string) (*verifier.AuditReport, error) {
	q := url.Values{}
	if wantHead != "" {
		q.Set("seq", strconv.FormatInt(wantHeadSeq, 10))
		q.Set("hash", wantHead)
	}
	var out verifier.AuditReport
	if err := c.do(ctx, http.MethodGet, "audit/verify?"+q.Encode(), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AddReleaseKey trusts a release signing key.
func (c *Client) AddReleaseKey(ctx context.Context, pub ed25519.PublicKey, _ string) error {
	return c.do(ctx, http.MethodPost, "release-keys", ReleaseKeyRequest{PublicKey: pub}, nil)
}

// SetReleaseThreshold sets how many distinct trusted keys must sign a
// release.
func (c *Client) SetReleaseThreshold(ctx context.Context, k int, _ string) error {
	return c.do(ctx, http.MethodPost, "release-threshold", ThresholdRequest{Threshold: k}, nil)
}

// ReleaseKeys returns the trusted release keys and the threshold.
func (c *Client) ReleaseKeys(ctx context.Context) ([]ed25519.PublicKey, int, error) {
	var out ReleaseKeys
	if err := c.do(ctx, http.MethodGet, "release-keys", nil, &out); err != nil {
		return nil, 0, err
	}
	keys := make([]ed25519.PublicKey, 0, len(out.Keys))
	for _, k := range out.Keys {
		if len(k.PublicKey) != ed25519.PublicKeySize {
			return nil, 0, fmt.Errorf("admin: release key %s of %d bytes", k.ID, len(k.PublicKey))
		}
		keys = append(keys, ed25519.PublicKey(k.PublicKey))
	}
	return keys, out.Threshold, nil
}

// PublishRelease has the verifier check env against its trusted keys and
// threshold and accept it.
func (c *Client) PublishRelease(ctx context.Context, env *release.Envelope, _ string) (*release.Verified, error) {
	raw, err := env.Marshal()
	if err != nil {
		return nil, fmt.Errorf("admin: envelope: %w", err)
	}
	var out Published
	if err := c.do(ctx, http.MethodPost, "releases", PublishRequest{Envelope: raw}, &out); err != nil {
		return nil, err
	}
	v := &release.Verified{Manifest: out.Manifest, SignedBy: out.SignedBy}
	d, err := hex.DecodeString(out.Digest)
	if err != nil || len(d) != len(v.Digest) || out.Manifest == nil {
		return nil, fmt.Errorf("admin: publish answer: digest %q, manifest %v", out.Digest, out.Manifest != nil)
	}
	copy(v.Digest[:], d)
	return v, nil
}

// WithdrawRelease stops accepting a published release.
func (c *Client) WithdrawRelease(ctx context.Context, digest, _ string) error {
	return c.do(ctx, http.MethodPost, "releases/"+url.PathEscape(digest)+"/withdraw", nil, nil)
}

// Releases lists published releases, newest first.
func (c *Client) Releases(ctx context.Context) ([]verifier.ReleaseInfo, error) {
	var out []verifier.ReleaseInfo
	return out, c.do(ctx, http.MethodGet, "releases", nil, &out)
}
