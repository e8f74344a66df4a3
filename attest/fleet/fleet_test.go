package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/fleet"
	"github.com/dataembassy/embassy/attest/verifier"
)

// get serves one request to h.
func get(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

// row returns appliance id's table row in the fleet page.
func row(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<tr id="appliance-` + regexp.QuoteMeta(id) + `".*?</tr>`).FindString(body)
	if m == "" {
		t.Fatalf("no row for %s in the page", id)
	}
	return m
}

func TestFleetPage(t *testing.T) {
	f := newFleet(t)
	now := time.Now()
	h := fleet.NewHandler(fleet.Options{Source: f.db, Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)})
	rec := get(t, h, http.MethodGet, "/")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /: %d %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	sum := sha256.Sum256(f.serverCert.Raw)
	serverSHA := hex.EncodeToString(sum[:])

	rows := []struct {
		id   string
		want []string
	}{
		{servingID, []string{`class="state-serving"`, "serving", "s left", "embassy-appliance 1", `<td class="num">2</td>`, serverSHA[:16]}},
		{refusedID, []string{`class="state-refused"`, "refused", "failing check: <strong>epoch</strong>",
			"store epoch 1 is older than 3 last reported: rolled-back store", `<td class="num">3</td>`, "void: refused since"}},
		{revokedID, []string{`class="state-revoked"`, "revoked", "failing check: <strong>revocation</strong>", "revoked by bob: disk shipped home for inspection"}},
		{enrolledID, []string{`class="state-never-attested"`, "never attested", "attestation key not yet activated"}},
	}
	for _, r := range rows {
		got := row(t, body, r.id)
		for _, w := range r.want {
			if !strings.Contains(got, w) {
				t.Errorf("row of %s lacks %q:\n%s", r.id, w, got)
			}
		}
	}
	for _, w := range []string{
		`<span class="count state-refused">2 refused</span>`, `<span class="count state-serving">1 serving</span>`,
		`<tr class="accepted">`, `<tr class="withdrawn">`, "withdrawn ",
		"disk shipped home for inspection", `<td class="outcome">refused</td>`,
	} {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q", w)
		}
	}
	if strings.Contains(body, "<script") || strings.Contains(body, "<img") {
		t.Errorf("markup from the database reached the page unescaped")
	}
	if !strings.Contains(row(t, body, hostileID), `failing check: <strong>release&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;`) {
		t.Errorf("hostile check not shown escaped:\n%s", row(t, body, hostileID))
	}
	if regexp.MustCompile(`(?i)(src|href)="(https?:)?//`).MatchString(body) {
		t.Errorf("page links to another origin")
	}

	hd := rec.Header()
	for k, want := range map[string]string{
		"Content-Type": "text/html; charset=utf-8", "X-Content-Type-Options": "nosniff",
		"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
	} {
		if got := hd.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	csp := hd.Get("Content-Security-Policy")
	if !strings.HasPrefix(csp, "default-src 'none'; style-src 'sha256-") || strings.Contains(csp, "unsafe") || strings.Contains(csp, "http") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
}

// TestLeaseExpired: past the lease's end, the serving appliance's lease
// has ended; the refused one stays refused.
func TestLeaseExpired(t *testing.T) {
	f := newFleet(t)
	later := time.Now().Add(11 * time.Minute) // the verifier's default lease is 10 minutes
	h := fleet.NewHandler(fleet.Options{Source: f.db, Now: func() time.Time { return later }})
	body := get(t, h, http.MethodGet, "/").Body.String()
	if got := row(t, body, servingID); !strings.Contains(got, `class="state-lease-expired"`) || !strings.Contains(got, "lease expired") || !strings.Contains(got, "ended ") {
		t.Errorf("serving appliance after its lease:\n%s", got)
	}
	if got := row(t, body, refusedID); !strings.Contains(got, `class="state-refused"`) {
		t.Errorf("refused appliance after its lease:\n%s", got)
	}
}

// TestAppliancePage: the per-appliance pages, reached through the
// relative links of the fleet page mounted under a prefix.
func TestAppliancePage(t *testing.T) {
	f := newFleet(t)
	h := http.StripPrefix("/fleet", fleet.NewHandler(fleet.Options{Source: f.db, AuditLimit: 3}))
	index := get(t, h, http.MethodGet, "/fleet/").Body.String()
	if !strings.Contains(index, `<a href="appliances/`+refusedID+`">`) {
		t.Fatalf("fleet page has no relative link to %s", refusedID)
	}
	sum := sha256.Sum256(f.serverCert.Raw)
	for _, c := range []struct {
		id     string
		want   []string
		audits int // records shown: AuditLimit, or fewer when there are fewer
	}{
		{refusedID, []string{`class="panel state-refused"`, "failing check: <strong>epoch</strong>", "rolled-back store", `<a href="../">`}, 3},
		{servingID, []string{`class="panel state-serving"`, hex.EncodeToString(sum[:]), "<li>PCR 2: <code>0000", "<li>PCR 5:", "with an EK certificate"}, 3},
		{revokedID, []string{`class="panel state-revoked"`, "by bob: disk shipped home for inspection", "not activated"}, 2},
	} {
		rec := get(t, h, http.MethodGet, "/fleet/appliances/"+c.id)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", c.id, rec.Code, rec.Body)
		}
		body := rec.Body.String()
		for _, w := range c.want {
			if !strings.Contains(body, w) {
				t.Errorf("page of %s lacks %q", c.id, w)
			}
		}
		audit := body[strings.Index(body, `<table class="audit">`):]
		if n := strings.Count(audit, `<tr class="outcome-`); n != c.audits {
			t.Errorf("page of %s shows %d audit records, want %d", c.id, n, c.audits)
		}
		if strings.Count(audit, "<td>"+c.id+"</td>") != c.audits {
			t.Errorf("page of %s shows another appliance's audit records", c.id)
		}
	}
}

func TestEmptyFleet(t *testing.T) {
	db := openDB(t)
	body := get(t, fleet.NewHandler(fleet.Options{Source: db}), http.MethodGet, "/").Body.String()
	for _, w := range []string{"No appliance is enrolled.", "No release is published.", "No audit records."} {
		if !strings.Contains(body, w) {
			t.Errorf("empty fleet page lacks %q", w)
		}
	}
}

func TestBadRequests(t *testing.T) {
	h := http.StripPrefix("/fleet", fleet.NewHandler(fleet.Options{Source: openDB(t)}))
	for _, c := range []struct {
		method, target string
		status         int
		home           string
	}{
		{http.MethodGet, "/fleet/nope", http.StatusNotFound, "./"},
		{http.MethodGet, "/fleet/appliances/", http.StatusNotFound, "../"},
		{http.MethodGet, "/fleet/appliances/unknown", http.StatusNotFound, "../"},
		{http.MethodGet, "/fleet/appliances/a/b", http.StatusNotFound, "../../"},
		{http.MethodGet, "/fleet/appliances/%3Cscript%3E", http.StatusNotFound, "../"},
		{http.MethodGet, "/fleet/appliances/..%2F..%2Fetc", http.StatusNotFound, "../../../"},
		{http.MethodGet, "/fleet/?audit=5", http.StatusBadRequest, "./"},
		{http.MethodGet, "/fleet/appliances/x?y", http.StatusBadRequest, "../"},
		{http.MethodPost, "/fleet/", http.StatusMethodNotAllowed, "./"},
		{http.MethodDelete, "/fleet/appliances/x", http.StatusMethodNotAllowed, "../"},
	} {
		rec := get(t, h, c.method, c.target)
		body := rec.Body.String()
		if rec.Code != c.status || !strings.Contains(body, `<a href="`+c.home+`">Back to the fleet</a>`) {
			t.Errorf("%s %s: %d, want %d with a link to %s:\n%s", c.method, c.target, rec.Code, c.status, c.home, body)
		}
		if rec.Header().Get("Content-Security-Policy") == "" || strings.Contains(body, "<script") {
			t.Errorf("%s %s: error page without CSP or with markup", c.method, c.target)
		}
		if c.status == http.StatusMethodNotAllowed && rec.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: Allow %q", c.method, c.target, rec.Header().Get("Allow"))
		}
	}
	if rec := get(t, h, http.MethodHead, "/fleet/"); rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Errorf("HEAD: %d with %d bytes", rec.Code, rec.Body.Len())
	}
}

// failing is a Source whose every read fails.
type failing struct{ err error }

func (f failing) Appliances(context.Context) ([]verifier.ApplianceInfo, error) { return nil, f.err }
func (f failing) Appliance(context.Context, string) (*verifier.ApplianceInfo, error) {
	return nil, f.err
}
func (f failing) AuditRecords(context.Context, verifier.AuditFilter) ([]verifier.AuditRecord, error) {
	return nil, f.err
}
func (f failing) Releases(context.Context) ([]verifier.ReleaseInfo, error) { return nil, f.err }

// TestSourceError: a failing read is a 500 that keeps the error for the
// log, not the page.
func TestSourceError(t *testing.T) {
	var logged bytes.Buffer
	h := fleet.NewHandler(fleet.Options{Source: failing{errors.New("disk I/O error <secret path>")}, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	for _, p := range []string{"/", "/appliances/rack-1"} {
		logged.Reset()
		rec := get(t, h, http.MethodGet, p)
		if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "secret") {
			t.Errorf("%s: %d %s", p, rec.Code, rec.Body)
		}
		if !strings.Contains(logged.String(), "disk I/O error") {
			t.Errorf("%s: error not logged: %q", p, logged.String())
		}
	}
}

func openDB(t *testing.T) *verifier.DB {
	t.Helper()
	db, err := verifier.OpenDB(context.Background(), filepath.Join(t.TempDir(), "verifier.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
