package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/fleet"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/internal/testenv"
)

// browserDir holds the Node script and its pinned playwright-core
// (scripts/install-browser-deps.sh installs it).
const browserDir = "testdata/browser"

// screenshotCopy is where the test leaves the page's screenshot for a
// human to look at (build/ is gitignored).
const screenshotCopy = "../../build/fleet-page.png"

// looks is what the script saw of one element.
type looks struct {
	ClassName  string `json:"className"`
	Background string `json:"background"`
	BadgeColor string `json:"badgeColor"`
	Text       string `json:"text"`
}

// visit is what the script saw in one browser context.
type visit struct {
	Requests  []string `json:"requests"`
	Errors    []string `json:"errors"`
	Status    int      `json:"status"`
	Title     string   `json:"title"`
	Refused   looks    `json:"refused"`
	Serving   looks    `json:"serving"`
	DetailURL string   `json:"detailURL"`
	Detail    looks    `json:"detail"`
	Loaded    bool     `json:"loaded"`
	Error     string   `json:"error"`
}

// TestBrowser loads the fleet page in headless Chromium over mutual TLS
// as the admin listener serves it: with an operator's client certificate
// the page loads, shows the refused appliance in red with its failing
// check, and requests nothing but itself; without one the TLS handshake is
// refused.
func TestBrowser(t *testing.T) {
	node := testenv.Tool(t, "node")
	chromium := testenv.Tool(t, "chromium")
	if _, err := os.Stat(filepath.Join(browserDir, "node_modules", "playwright-core", "package.json")); err != nil {
		t.Fatalf("playwright-core is not installed in %s (run scripts/install-browser-deps.sh, or make deps): %v", browserDir, err)
	}
	f := newFleet(t)
	srv := startAdmin(t, f.db)

	shot := filepath.Join(t.TempDir(), "fleet.png")
	cfg, _ := json.Marshal(map[string]string{
		"url": srv.origin + "/fleet/", "origin": srv.origin, "cert": srv.clientCert, "key": srv.clientKey,
		"chromium": chromium, "refused": refusedID, "serving": servingID, "screenshot": shot,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "fleet.mjs", string(cfg))
	cmd.Dir = browserDir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("fleet.mjs: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var out struct{ WithCert, WithoutCert visit }
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("fleet.mjs output: %v\n%s", err, stdout.String())
	}
	t.Logf("fleet.mjs saw: %s", stdout.String())

	w := out.WithCert
	if w.Status != http.StatusOK || w.Title != "Embassy fleet" {
		t.Errorf("with a certificate: status %d, title %q", w.Status, w.Title)
	}
	if !strings.Contains(w.Refused.ClassName, "state-refused") || !strings.Contains(w.Refused.Text, "failing check: epoch") ||
		!strings.Contains(w.Refused.Text, "rolled-back store") {
		t.Errorf("refused row: %+v", w.Refused)
	}
	if !reddish(t, w.Refused.Background, 10) || !reddish(t, w.Refused.BadgeColor, 100) {
		t.Errorf("refused row is not red: background %s, state %s", w.Refused.Background, w.Refused.BadgeColor)
	}
	if reddish(t, w.Serving.Background, 10) || reddish(t, w.Serving.BadgeColor, 100) || !strings.Contains(w.Serving.Text, "serving") {
		t.Errorf("serving row: %+v", w.Serving)
	}
	if w.DetailURL != srv.origin+"/fleet/appliances/"+refusedID || !reddish(t, w.Detail.Background, 10) ||
		!strings.Contains(w.Detail.Text, "failing check: epoch") {
		t.Errorf("refused appliance's page at %s: %+v", w.DetailURL, w.Detail)
	}
	wantReqs := []string{"GET " + srv.origin + "/fleet/", "GET " + srv.origin + "/fleet/appliances/" + refusedID}
	if fmt.Sprint(w.Requests) != fmt.Sprint(wantReqs) {
		t.Errorf("the browser requested %q, want only the two pages %q", w.Requests, wantReqs)
	}
	if len(w.Errors) != 0 {
		t.Errorf("the browser logged errors (a CSP violation?): %q", w.Errors)
	}
	if got := srv.requests(); fmt.Sprint(got) != "[operator-viewer GET /fleet/ operator-viewer GET /fleet/appliances/"+refusedID+"]" {
		t.Errorf("the server saw %q", got)
	}

	n := out.WithoutCert
	if n.Loaded || n.Error == "" {
		t.Errorf("without a certificate the page loaded: %+v", n)
	}
	if !srv.handshakeRefused() {
		t.Errorf("the server refused no handshake for want of a client certificate")
	}
	if len(srv.requests()) != 2 {
		t.Errorf("a request reached the handler without a certificate: %q", srv.requests())
	}
	// The admin API audited each page load, naming the operator.
	recs, err := f.db.AuditRecords(t.Context(), verifier.AuditFilter{Limit: 2})
	if err != nil || len(recs) != 2 {
		t.Fatalf("audit records: %d, %v", len(recs), err)
	}
	for _, r := range recs {
		if r.Actor != "operator:operator-viewer" || r.Action != "admin-read" || !strings.HasPrefix(r.Detail, "fleet GET /fleet/") {
			t.Errorf("audit record of a page load: %+v", r)
		}
	}

	if png, err := os.ReadFile(shot); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("screenshot: %v", err)
	} else if err := os.MkdirAll(filepath.Dir(screenshotCopy), 0o755); err == nil {
		os.WriteFile(screenshotCopy, png, 0o644)
	}
}

var rgbRE = regexp.MustCompile(`^rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)$`)

// reddish reports whether the CSS colour css is opaque and its red exceeds
// its green and blue by more than margin.
func reddish(t *testing.T, css string, margin int) bool {
	t.Helper()
	m := rgbRE.FindStringSubmatch(css)
	if m == nil {
		t.Errorf("colour %q is not rgb()", css)
		return false
	}
	if m[4] != "" && m[4] != "1" {
		return false
	}
	r, _ := strconv.Atoi(m[1])
	g, _ := strconv.Atoi(m[2])
	b, _ := strconv.Atoi(m[3])
	return r-g > margin && r-b > margin
}

// adminServer is the verifier's admin API (attest/admin) serving the
// fleet page over HTTPS on 127.0.0.1, as embassy-verifier's admin listener
// does: a client certificate from the operators' CA is required, and the
// page needs the viewer role.
type adminServer struct {
	origin                string
	clientCert, clientKey string // an operator's certificate and key (PEM files)

	mu      sync.Mutex
	seen    []string // "CN METHOD path" of every request
	refused bool     // a handshake failed for want of a client certificate
}

func (a *adminServer) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.seen...)
}

func (a *adminServer) handshakeRefused() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refused
}

// Write receives the server's error log.
func (a *adminServer) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if bytes.Contains(p, []byte("TLS handshake error")) && bytes.Contains(p, []byte("client didn't provide a certificate")) {
		a.refused = true
	}
	return len(p), nil
}

func startAdmin(t *testing.T, db *verifier.DB) *adminServer {
	t.Helper()
	serverCA, err := pki.NewCA("verifier admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	operatorCA, err := pki.NewCA("operators", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverLeaf, err := serverCA.Issue(pki.LeafOptions{CommonName: "verifier", Usage: pki.Server, Hosts: []string{"127.0.0.1"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	operator, err := operatorCA.Issue(admin.IssueOptions("operator-viewer", []admin.Role{admin.Viewer}, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	h, err := admin.NewHandler(admin.Options{DB: db, Operators: operatorCA.Pool(), Fleet: fleet.NewHandler(fleet.Options{Source: db})})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := operator.WriteFiles(dir, "operator"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &adminServer{origin: "https://" + ln.Addr().String(),
		clientCert: filepath.Join(dir, "operator-cert.pem"), clientKey: filepath.Join(dir, "operator-key.pem")}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a.mu.Lock()
			a.seen = append(a.seen, r.TLS.PeerCertificates[0].Subject.CommonName+" "+r.Method+" "+r.URL.Path)
			a.mu.Unlock()
			h.ServeHTTP(w, r)
		}),
		TLSConfig:         admin.TLSConfig(serverLeaf.TLSCertificate(), operatorCA.Pool()),
		ErrorLog:          log.New(a, "", 0),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return a
}
