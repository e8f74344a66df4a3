package admin_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/verifier"
)

// FuzzHandler: no request body or path makes the handler panic or answer
// anything but JSON with a status it documents.
func FuzzHandler(f *testing.F) {
	db, err := verifier.OpenDB(f.Context(), filepath.Join(f.TempDir(), "v.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	ops := newCA(f, "operators")
	h, err := admin.NewHandler(admin.Options{DB: db, Operators: ops.Pool()})
	if err != nil {
		f.Fatal(err)
	}
	// Two operators between them hold every role (publisher and trustee
	// never go together); the request goes to the one whose roles allow it.
	var states [2]*tls.ConnectionState
	for i, but := range []admin.Role{admin.Trustee, admin.Publisher} {
		leaf, err := ops.Issue(admin.IssueOptions("fuzzer", rolesBut(but), time.Hour))
		if err != nil {
			f.Fatal(err)
		}
		states[i] = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf.Cert}, VerifiedChains: [][]*x509.Certificate{{leaf.Cert, ops.Cert}}}
	}
	for _, seed := range []struct{ method, path, body string }{
		{"POST", "/admin/v1/appliances", `{"id":"rack1","ek_public":"AAAA","share":"AQ=="}`},
		{"POST", "/admin/v1/appliances/rack1/baseline", `{"pcrs":{"0":"00"}}`},
		{"POST", "/admin/v1/appliances/rack1/revoke", `{"reason":"x"}`},
		{"POST", "/admin/v1/releases", `{"envelope":{"version":1,"payload":"e30=","signatures":[]}}`},
		{"POST", "/admin/v1/release-threshold", `{"threshold":-1}`},
		{"GET", "/admin/v1/audit?limit=1&after=2&appliance=x", ""},
		{"GET", "/admin/v1/audit/verify?seq=1&hash=" + strings.Repeat("0", 64), ""},
	} {
		f.Add(seed.method, seed.path, seed.body)
	}
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if method != "GET" && method != "POST" {
			method = "POST"
		}
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequest(method, "https://verifier"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		req.TLS = states[0]
		if trusteePath(path) {
			req.TLS = states[1]
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 204, 400, 404, 409, 422:
		case 301, 307, 308: // http.ServeMux redirects an unclean path to its clean form
			return
		default:
			t.Fatalf("%s %s %q: HTTP %d %s", method, path, body, rec.Code, rec.Body)
		}
		if rec.Code != 204 && !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
			t.Fatalf("%s %s: %s answer", method, path, rec.Header().Get("Content-Type"))
		}
	})
}
