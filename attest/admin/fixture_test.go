package admin_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// fixture is a verifier database behind the admin API on a real mutual-TLS
// listener, with the operators' CA and the server's CA.
type fixture struct {
	db       *verifier.DB
	srv      *httptest.Server
	ops      *pki.CA // the operators' CA
	serverCA *pki.CA
	// fleetHits and metricsHits count the requests the stubs served.
	fleetHits, metricsHits atomic.Int32
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db, err := verifier.OpenDB(t.Context(), filepath.Join(t.TempDir(), "v.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &fixture{db: db, ops: newCA(t, "operators"), serverCA: newCA(t, "verifier")}
	h, err := admin.NewHandler(admin.Options{
		DB:        db,
		Operators: f.ops.Pool(),
		Fleet: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.fleetHits.Add(1)
			w.Write([]byte("fleet page " + r.URL.Path))
		}),
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.metricsHits.Add(1)
			w.Write([]byte("metrics"))
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = startTLS(t, h, admin.TLSConfig(f.serverCert(t), f.ops.Pool()))
	return f
}

// startTLS serves h on 127.0.0.1 with cfg.
func startTLS(t *testing.T, h http.Handler, cfg *tls.Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = cfg
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func newCA(t testing.TB, name string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// serverCert is the admin listener's certificate, for 127.0.0.1.
func (f *fixture) serverCert(t *testing.T) tls.Certificate {
	t.Helper()
	leaf, err := f.serverCA.Issue(pki.LeafOptions{CommonName: "verifier", Usage: pki.Server, Hosts: []string{"127.0.0.1"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return leaf.TLSCertificate()
}

// operator issues an operator certificate by ca for name with roles.
func operator(t *testing.T, ca *pki.CA, name string, roles ...admin.Role) tls.Certificate {
	t.Helper()
	leaf, err := ca.Issue(admin.IssueOptions(name, roles, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return leaf.TLSCertificate()
}

// expiredOperator is an operator certificate by ca that expired an hour ago.
func expiredOperator(t *testing.T, ca *pki.CA, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{"viewer"}},
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     time.Now().Add(-time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// httpClient is a raw HTTPS client presenting cert (none when empty).
func (f *fixture) httpClient(cert tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: f.serverCA.Pool(), MinVersion: tls.VersionTLS13}
	if cert.Certificate != nil {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

// client is an admin.Client presenting cert.
func (f *fixture) client(t *testing.T, cert tls.Certificate) *admin.Client {
	t.Helper()
	c, err := admin.NewClient(f.srv.URL, cert, f.serverCA.Pool())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// do sends method path (relative to the server) with body and returns the
// status and the answer's body.
func do(t *testing.T, hc *http.Client, base, method, path, body string) (int, []byte, error) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// lastAudit returns the newest audit record.
func (f *fixture) lastAudit(t *testing.T) verifier.AuditRecord {
	t.Helper()
	recs, err := f.db.AuditRecords(t.Context(), verifier.AuditFilter{Limit: 1})
	if err != nil || len(recs) != 1 {
		t.Fatalf("audit: %v, %d records", err, len(recs))
	}
	return recs[0]
}

// auditCount returns how many audit records there are.
func (f *fixture) auditCount(t *testing.T) int {
	t.Helper()
	rep, err := f.db.VerifyAudit(t.Context(), 0, "")
	if err != nil {
		t.Fatal(err)
	}
	return int(rep.Records)
}

// jsonBody encodes v for a request body.
func jsonBody(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ekPublicDER is a fresh RSA EK public key, PKIX DER.
func ekPublicDER(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// signedRelease is a release envelope signed by a fresh key, and the key.
func signedRelease(t *testing.T, name string) (*release.Envelope, ed25519.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m := &release.Manifest{Version: release.Version, Name: name, Release: "1", Created: time.Now().UTC().Truncate(time.Second), Components: []release.Component{}}
	m.SetPCR(15, bytes.Repeat([]byte{0xcd}, 32))
	env, err := release.NewEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	env.Sign(priv)
	return env, pub
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func mustParsePKIX(t *testing.T, der []byte) crypto.PublicKey {
	t.Helper()
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rolesBut is every role except r: an operator may hold every role but
// not publisher and trustee together.
func rolesBut(r admin.Role) []admin.Role {
	return slices.DeleteFunc(slices.Clone(admin.Roles), func(x admin.Role) bool { return x == r })
}

// trusteePath reports whether path is an endpoint of the trustee role.
func trusteePath(path string) bool {
	for _, p := range []string{"/ek-roots", "/release-keys", "/release-threshold"} {
		if strings.Contains(path, p) {
			return true
		}
	}
	return false
}
