package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// apiVerifier is a verifier database behind the admin API on 127.0.0.1.
type apiVerifier struct {
	url, db string
}

// operators is an operators' CA made with `embassyctl operator init-ca`
// and the server CA every test verifier's certificate chains to.
type operators struct {
	dir      string // the CA directory
	certs    string // where issued certificates go
	serverCA string // the verifiers' server CA (PEM file)
	ca       *pki.CA
	srvCA    *pki.CA
}

func newOperators(t *testing.T) *operators {
	t.Helper()
	o := &operators{dir: filepath.Join(t.TempDir(), "ops"), certs: t.TempDir(), serverCA: filepath.Join(t.TempDir(), "server-ca.pem")}
	if out, code := ctl(t, "operator", "init-ca", "--dir", o.dir); code != 0 || !strings.Contains(out, "ca.pem") {
		t.Fatalf("operator init-ca: %d %s", code, out)
	}
	if out, code := ctl(t, "operator", "init-ca", "--dir", o.dir); code != 1 {
		t.Fatalf("operator init-ca over an existing CA: %d %s", code, out)
	}
	ca, err := pki.LoadCA(o.dir)
	if err != nil {
		t.Fatal(err)
	}
	o.ca = ca
	if o.srvCA, err = pki.NewCA("verifiers", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(o.serverCA, o.srvCA.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return o
}

// issue makes an operator certificate with `embassyctl operator issue` and
// returns the connection flags that use it.
func (o *operators) issue(t *testing.T, name, roles string) []string {
	t.Helper()
	if out, code := ctl(t, "operator", "issue", "--ca-dir", o.dir, "--name", name, "--roles", roles, "--out", o.certs); code != 0 {
		t.Fatalf("operator issue %s: %d %s", name, code, out)
	}
	return []string{"--cert", filepath.Join(o.certs, name+"-cert.pem"), "--key", filepath.Join(o.certs, name+"-key.pem"), "--ca", o.serverCA}
}

// start serves a fresh verifier database's admin API.
func (o *operators) start(t *testing.T) apiVerifier {
	t.Helper()
	path := newDB(t)
	db, err := verifier.OpenDB(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	h, err := admin.NewHandler(admin.Options{DB: db, Operators: o.ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := o.srvCA.Issue(pki.LeafOptions{CommonName: "verifier", Usage: pki.Server, Hosts: []string{"127.0.0.1"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = admin.TLSConfig(leaf.TLSCertificate(), o.ca.Pool())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return apiVerifier{url: srv.URL, db: path}
}

// TestAPIMode: enroll, list, show, revoke and the audit log through the
// admin API; the audit log names the certificate's operator; a role the
// certificate lacks is refused.
func TestAPIMode(t *testing.T) {
	ops := newOperators(t)
	v := ops.start(t)
	alice := append([]string{"--verifier", v.url}, ops.issue(t, "alice", "viewer,enroller,revoker")...)
	bob := append([]string{"--verifier", v.url}, ops.issue(t, "bob", "viewer")...)
	carol := append([]string{"--verifier", v.url}, ops.issue(t, "carol", "auditor")...)
	with := func(cmd []string, conn []string, more ...string) []string {
		return append(append(append([]string{}, cmd...), conn...), more...)
	}
	ek := writeEKPub(t)
	if out, code := ctl(t, with([]string{"enroll"}, alice, "--id", "rack1", "--ek-pub", ek)...); code != 0 || !strings.Contains(out, "enrolled") {
		t.Fatalf("enroll: %d %s", code, out)
	}
	if out, code := ctl(t, with([]string{"enroll"}, alice, "--id", "rack1", "--ek-pub", ek)...); code != 1 || !strings.Contains(out, "already exists") {
		t.Fatalf("duplicate enroll: %d %s", code, out)
	}
	out, code := ctl(t, with([]string{"appliances", "list"}, bob, "--json")...)
	var list []verifier.ApplianceInfo
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].State() != "enrolled" {
		t.Fatalf("list --json: %d %s", code, out)
	}
	if out, code := ctl(t, with([]string{"appliances", "list"}, bob)...); code != 0 || !strings.Contains(out, "rack1") || !strings.Contains(out, "ID") {
		t.Fatalf("list table: %d %s", code, out)
	}
	if out, code := ctl(t, with([]string{"revoke"}, bob, "--reason", "stolen", "rack1")...); code != 1 || !strings.Contains(out, "lacks the role") {
		t.Fatalf("viewer revokes: %d %s", code, out)
	}
	if out, code := ctl(t, with([]string{"revoke"}, alice, "--reason", "stolen", "rack1")...); code != 0 {
		t.Fatalf("revoke: %d %s", code, out)
	}
	if out, code := ctl(t, with([]string{"appliances", "show"}, bob, "rack1")...); code != 0 || !strings.Contains(out, "by operator:alice: stolen") {
		t.Fatalf("show: %d %s", code, out)
	}
	if out, code := ctl(t, with([]string{"audit", "list"}, bob)...); code != 1 || !strings.Contains(out, "needs role auditor") {
		t.Fatalf("viewer reads the audit log: %d %s", code, out)
	}
	out, code = ctl(t, with([]string{"audit", "list"}, carol, "--appliance", "rack1", "--json")...)
	var recs []verifier.AuditRecord
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil {
		t.Fatalf("audit list: %d %s", code, out)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.Actor+" "+r.Action+" "+r.Outcome)
	}
	// The ceremony reads before it enrolls (already enrolled
	// anywhere?) and after (the EK hash it reports); the second enroll
	// stopped at its read.
	want := "operator:alice admin-read ok; operator:alice enroll ok; operator:alice admin-read ok; operator:alice admin-read ok; " +
		"operator:bob revoke forbidden; operator:alice revoke ok; operator:bob admin-read ok"
	if strings.Join(got, "; ") != want {
		t.Errorf("rack1's audit records\n%s\nwant\n%s", strings.Join(got, "; "), want)
	}
	if out, code := ctl(t, with([]string{"audit", "verify"}, carol)...); code != 0 || !strings.Contains(out, "OK: chain intact") {
		t.Fatalf("audit verify: %d %s", code, out)
	}

	// The same through the environment.
	t.Setenv("EMBASSY_VERIFIER_URL", v.url)
	t.Setenv("EMBASSY_OPERATOR_CERT", bob[3])
	t.Setenv("EMBASSY_OPERATOR_KEY", bob[5])
	t.Setenv("EMBASSY_OPERATOR_CA", bob[7])
	if out, code := ctl(t, "appliances", "list"); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("list from the environment: %d %s", code, out)
	}
}

// TestAPIModeUsage: the connection flags' usage errors (exit 2).
func TestAPIModeUsage(t *testing.T) {
	ops := newOperators(t)
	v := ops.start(t)
	conn := ops.issue(t, "alice", "viewer")
	t.Setenv("EMBASSY_VERIFIER_URL", "")
	t.Setenv("EMBASSY_VERIFIER_DB", "")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no verifier", []string{"appliances", "list"}, "which verifier?"},
		{"API and database", append([]string{"appliances", "list", "--verifier", v.url, "--db", newDB(t)}, conn...), "exclude each other"},
		{"--actor with API", append(append([]string{"revoke", "--verifier", v.url, "--actor", "eve", "--reason", "r"}, conn...), "rack1"), "--actor is for --db only"},
		{"no certificate", []string{"appliances", "list", "--verifier", v.url}, "needs --cert and --key"},
		{"two verifiers", append([]string{"appliances", "list", "--verifier", v.url, "--verifier", v.url + "1"}, conn...), "one verifier only"},
		{"same verifier twice", append([]string{"enroll", "--verifier", v.url, "--verifier", v.url, "--id", "x", "--ek-pub", "f"}, conn...), "given twice"},
		{"unknown role", []string{"operator", "issue", "--ca-dir", ops.dir, "--name", "x", "--roles", "viewer,root", "--out", t.TempDir()}, `unknown role "root"`},
		{"bad name", []string{"operator", "issue", "--ca-dir", ops.dir, "--name", "../x", "--roles", "viewer", "--out", t.TempDir()}, "--name"},
	} {
		code, out, errs := runCLI(t, tc.args...)
		if code != 2 || !strings.Contains(errs, "usage") || !strings.Contains(errs, tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.name, code, out, errs, tc.want)
		}
	}
	if out, code := ctl(t, append([]string{"appliances", "list", "--verifier", "http://" + strings.TrimPrefix(v.url, "https://")}, conn...)...); code != 1 || !strings.Contains(out, "want https") {
		t.Errorf("http:// URL: %d %s", code, out)
	}
}

// TestRecoveryWarning: --db prints the recovery-mode warning on stderr
// (once), the admin API does not.
func TestRecoveryWarning(t *testing.T) {
	ops := newOperators(t)
	v := ops.start(t)
	code, _, errs := runCLI(t, "appliances", "list", "--db", v.db)
	if code != 0 || errs != recoveryWarning {
		t.Errorf("--db: exit %d, stderr %q", code, errs)
	}
	code, _, errs = runCLI(t, append([]string{"appliances", "list", "--verifier", v.url}, ops.issue(t, "alice", "viewer")...)...)
	if code != 0 || errs != "" {
		t.Errorf("--verifier: exit %d, stderr %q", code, errs)
	}
}

// TestAPIModeEveryVerifier: the enrolment ceremony and release publication
// reach every verifier named by a repeated --verifier.
func TestAPIModeEveryVerifier(t *testing.T) {
	ops := newOperators(t)
	a, b := ops.start(t), ops.start(t)
	conn := ops.issue(t, "alice", "viewer,enroller,publisher")
	both := []string{"--verifier", a.url, "--verifier", b.url}
	args := append(append([]string{"enroll", "--threshold", "2", "--id", "rack1", "--ek-pub", writeEKPub(t), "--json"}, both...), conn...)
	out, code := ctl(t, args...)
	var e enrollment
	if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e.Threshold != 2 || e.Total != 2 || e.enrolled() != 2 || e.Verifiers[1].DB != b.url {
		t.Fatalf("enroll 2 of 2: %d %s", code, out)
	}
	key, env := signedRelease(t)
	trent := ops.issue(t, "trent", "trustee") // publishers never trust keys
	for _, v := range []apiVerifier{a, b} {
		if out, code := ctl(t, append(append([]string{"release", "trust", "--verifier", v.url}, trent...), key+".pub")...); code != 0 {
			t.Fatalf("trust: %d %s", code, out)
		}
	}
	out, code = ctl(t, append(append(append([]string{"release", "publish"}, both...), conn...), env)...)
	if code != 0 || !strings.Contains(out, a.url+": published embassy-appliance 7") || !strings.Contains(out, b.url+": published") {
		t.Fatalf("publish to both: %d %s", code, out)
	}
	// Each database holds its own share and the release, recorded as
	// alice's; the release key as trent's.
	for _, v := range []apiVerifier{a, b} {
		db, err := verifier.OpenDB(context.Background(), v.db)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := db.AuditRecords(context.Background(), verifier.AuditFilter{})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		actions := map[string]string{}
		for _, r := range recs {
			actions[r.Action] = r.Actor
		}
		if actions["enroll"] != "operator:alice" || actions["release-publish"] != "operator:alice" || actions["release-key-add"] != "operator:trent" {
			t.Errorf("%s: audit actors %v", v.url, actions)
		}
	}
}
