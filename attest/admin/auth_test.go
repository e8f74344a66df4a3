package admin_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/internal/pki"
)

// TestRefusedCertificates: an operator certificate from another CA, an
// expired one, a server certificate of the operators' CA, or none at all
// does not get past the TLS handshake, and leaves no audit record.
func TestRefusedCertificates(t *testing.T) {
	f := newFixture(t)
	rogue := newCA(t, "rogue")
	// Issued by the operators' CA with the viewer role, but for servers.
	serverUsage, err := f.ops.Issue(pki.LeafOptions{CommonName: "server-usage", Usage: pki.Server, Roles: []string{"viewer"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for name, cert := range map[string]tls.Certificate{
		"another CA":         operator(t, rogue, "mallory", admin.Roles...),
		"expired":            expiredOperator(t, f.ops, "late"),
		"no certificate":     {},
		"server certificate": serverUsage.TLSCertificate(),
	} {
		t.Run(name, func(t *testing.T) {
			before := f.auditCount(t)
			status, body, err := do(t, f.httpClient(cert), f.srv.URL, "GET", "/admin/v1/appliances", "")
			if err == nil {
				t.Fatalf("answered HTTP %d %s", status, body)
			}
			if n := f.auditCount(t); n != before {
				t.Errorf("%d audit records added by a refused handshake", n-before)
			}
		})
	}
}

// TestHandlerChecksCertificateItself: a listener misconfigured to let any
// client certificate through (or one of another CA) does not open the API:
// the handler checks the chain to the operators' CA itself.
func TestHandlerChecksCertificateItself(t *testing.T) {
	f := newFixture(t)
	rogue := newCA(t, "rogue")
	h, err := admin.NewHandler(admin.Options{DB: f.db, Operators: f.ops.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	mallory := operator(t, rogue, "mallory", admin.Roles...)
	for name, cfg := range map[string]*tls.Config{
		"any certificate":   {Certificates: []tls.Certificate{f.serverCert(t)}, ClientAuth: tls.RequireAnyClientCert},
		"rogue CA trusted":  {Certificates: []tls.Certificate{f.serverCert(t)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: rogue.Pool()},
		"certificate asked": {Certificates: []tls.Certificate{f.serverCert(t)}, ClientAuth: tls.RequestClientCert},
	} {
		t.Run(name, func(t *testing.T) {
			srv := startTLS(t, h, cfg)
			before := f.auditCount(t)
			status, body, err := do(t, f.httpClient(mallory), srv.URL, "GET", "/admin/v1/appliances", "")
			if err != nil {
				t.Fatal(err)
			}
			var eb admin.ErrorBody
			if status != http.StatusUnauthorized || json.Unmarshal(body, &eb) != nil || eb.Code != "unauthenticated" {
				t.Errorf("HTTP %d %s, want 401 unauthenticated", status, body)
			}
			if n := f.auditCount(t); n != before {
				t.Errorf("%d audit records added", n-before)
			}
		})
	}
	// Plain HTTP (no TLS at all).
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/admin/v1/appliances", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("without TLS: HTTP %d %s", rec.Code, rec.Body)
	}
}

func TestNewHandlerRequiresOptions(t *testing.T) {
	f := newFixture(t)
	for name, o := range map[string]admin.Options{
		"no DB":        {Operators: f.ops.Pool()},
		"no operators": {DB: f.db},
	} {
		if _, err := admin.NewHandler(o); err == nil {
			t.Errorf("%s: NewHandler succeeded", name)
		}
	}
}

// TestConflictingRoles: a certificate holding both publisher and trustee
// (which together undo k-of-n release signing) opens nothing, not even
// the reads its other roles would allow, and embassyctl's role parser
// refuses to ask for one.
func TestConflictingRoles(t *testing.T) {
	f := newFixture(t)
	both := operator(t, f.ops, "greedy", admin.Viewer, admin.Publisher, admin.Trustee)
	status, body, err := do(t, f.httpClient(both), f.srv.URL, "GET", "/admin/v1/appliances", "")
	if err != nil {
		t.Fatal(err)
	}
	var eb admin.ErrorBody
	if status != http.StatusUnauthorized || json.Unmarshal(body, &eb) != nil || eb.Code != "unauthenticated" {
		t.Errorf("publisher+trustee: HTTP %d %s, want 401 unauthenticated", status, body)
	}
	if _, err := admin.ParseRoles("publisher,trustee"); !errors.Is(err, admin.ErrConflictingRoles) {
		t.Errorf("ParseRoles(publisher,trustee): %v, want ErrConflictingRoles", err)
	}
	if roles, err := admin.ParseRoles("viewer,trustee"); err != nil || len(roles) != 2 {
		t.Errorf("ParseRoles(viewer,trustee): %v %v", roles, err)
	}
}
