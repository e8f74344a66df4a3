package admin_test

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
)

// TestClient drives every Client method against the API and compares
// with what the database says, as the operator's audit records show.
func TestClient(t *testing.T) {
	f := newFixture(t)
	c := f.client(t, operator(t, f.ops, "alice", rolesBut(admin.Trustee)...))
	trustee := f.client(t, operator(t, f.ops, "alice", rolesBut(admin.Publisher)...))
	ctx := t.Context()
	ek, err := x509.ParsePKIXPublicKey(ekPublicDER(t))
	if err != nil {
		t.Fatal(err)
	}
	shares, err := keys.Deal("rack1", 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Enroll(ctx, verifier.EnrollParams{ID: "rack1", EKPublic: ek, Share: shares[1], Actor: "ignored"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Enroll(ctx, verifier.EnrollParams{ID: "rack1", EKPublic: ek}); !errors.Is(err, verifier.ErrExists) {
		t.Errorf("second enroll: %v, want ErrExists", err)
	}
	if _, err := c.Appliance(ctx, "nope"); !errors.Is(err, verifier.ErrNotFound) {
		t.Errorf("unknown appliance: %v, want ErrNotFound", err)
	}
	if err := c.SetBaseline(ctx, "rack1", map[int][]byte{7: make([]byte, 32)}, ""); err != nil {
		t.Fatal(err)
	}
	got, err := c.Appliances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := f.db.Appliances(ctx)
	if !reflect.DeepEqual(got, want) || len(got) != 1 || got[0].Baseline["7"] != strings.Repeat("00", 32) {
		t.Errorf("Appliances through the API %+v, in the database %+v", got, want)
	}

	root := newCA(t, "TPM vendor")
	if err := trustee.AddEKRoot(ctx, root.Cert, ""); err != nil {
		t.Fatal(err)
	}
	roots, err := c.EKRoots(ctx)
	if err != nil || len(roots) != 1 || !strings.Contains(roots[0].Subject, "TPM vendor") {
		t.Errorf("EKRoots: %+v, %v", roots, err)
	}

	env, pub := signedRelease(t, "embassy-appliance")
	if _, err := c.PublishRelease(ctx, env, ""); !errors.Is(err, release.ErrThreshold) {
		t.Errorf("publish with no trusted key: %v, want release.ErrThreshold", err)
	}
	if err := trustee.AddReleaseKey(ctx, pub, ""); err != nil {
		t.Fatal(err)
	}
	if err := trustee.SetReleaseThreshold(ctx, 0, ""); !errors.Is(err, verifier.ErrBadArgument) {
		t.Errorf("threshold 0: %v, want ErrBadArgument", err)
	}
	if err := trustee.SetReleaseThreshold(ctx, 1, ""); err != nil {
		t.Fatal(err)
	}
	ks, k, err := c.ReleaseKeys(ctx)
	if err != nil || k != 1 || len(ks) != 1 || !ks[0].Equal(pub) {
		t.Errorf("ReleaseKeys: %v %d %v", ks, k, err)
	}
	v, err := c.PublishRelease(ctx, env, "")
	if err != nil {
		t.Fatal(err)
	}
	if v.Manifest.Name != "embassy-appliance" || len(v.SignedBy) != 1 || v.SignedBy[0] != release.KeyID(pub) {
		t.Errorf("published %+v", v)
	}
	rels, err := c.Releases(ctx)
	if err != nil || len(rels) != 1 || rels[0].Digest != hex.EncodeToString(v.Digest[:]) {
		t.Errorf("Releases: %+v, %v", rels, err)
	}
	if err := c.WithdrawRelease(ctx, rels[0].Digest, ""); err != nil {
		t.Fatal(err)
	}
	if err := c.WithdrawRelease(ctx, rels[0].Digest, ""); !errors.Is(err, verifier.ErrNotFound) {
		t.Errorf("second withdraw: %v, want ErrNotFound", err)
	}
	if err := c.Revoke(ctx, "rack1", "decommissioned", ""); err != nil {
		t.Fatal(err)
	}

	recs, err := c.AuditRecords(ctx, verifier.AuditFilter{Appliance: "rack1"})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, r := range recs {
		if r.Actor != "operator:alice" {
			t.Errorf("record %d by %q, want operator:alice", r.Seq, r.Actor)
		}
		actions = append(actions, r.Action+"/"+r.Outcome)
	}
	// The failed second enroll has no appliance in its path; the reads
	// were of the list and of "nope".
	wantActions := []string{"enroll/ok", "baseline-set/ok", "revoke/ok"}
	if !reflect.DeepEqual(actions, wantActions) {
		t.Errorf("rack1's audit records %v, want %v", actions, wantActions)
	}
	// The failed changes are recorded too, with the error.
	stored, err := f.db.AuditRecords(ctx, verifier.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var failed []string
	for _, r := range stored {
		if r.Outcome == "error" && r.Actor == "operator:alice" {
			failed = append(failed, r.Action)
		}
	}
	if want := []string{"enroll", "release-publish", "release-threshold", "release-withdraw"}; !reflect.DeepEqual(failed, want) {
		t.Errorf("failed changes recorded: %v, want %v", failed, want)
	}
	rep, err := c.VerifyAudit(ctx, 0, "")
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("VerifyAudit: %+v, %v", rep, err)
	}
	if _, err := c.VerifyAudit(ctx, rep.HeadSeq, rep.HeadHash); err != nil {
		t.Errorf("VerifyAudit with the head: %v", err)
	}

	// A viewer is refused a change with ErrForbidden.
	viewer := f.client(t, operator(t, f.ops, "bob", admin.Viewer))
	if err := viewer.Revoke(ctx, "rack1", "again", ""); !errors.Is(err, admin.ErrForbidden) {
		t.Errorf("viewer revokes: %v, want ErrForbidden", err)
	}
	var ae *admin.Error
	if err := viewer.Revoke(ctx, "rack1", "again", ""); !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
		t.Errorf("viewer revokes: %#v", err)
	}
}

func TestNewClientRefusesURLs(t *testing.T) {
	f := newFixture(t)
	cert := operator(t, f.ops, "alice", admin.Viewer)
	for _, u := range []string{"http://127.0.0.1:1", "127.0.0.1:8444", "https://", "https://h/x", "https://h?q=1", "::"} {
		if _, err := admin.NewClient(u, cert, nil); err == nil {
			t.Errorf("NewClient(%q) succeeded", u)
		}
	}
}

// TestBadInput: malformed requests are answered 400 (or 404 for no such
// endpoint) with an error body, never a crash, and change nothing.
func TestBadInput(t *testing.T) {
	f := newFixture(t)
	hc := f.httpClient(operator(t, f.ops, "alice", rolesBut(admin.Trustee)...))
	trustee := f.httpClient(operator(t, f.ops, "alice", rolesBut(admin.Publisher)...))
	if err := f.db.Enroll(t.Context(), verifier.EnrollParams{ID: "rack1", EKPublic: mustParsePKIX(t, ekPublicDER(t)), Actor: "setup"}); err != nil {
		t.Fatal(err)
	}
	big := `{"reason":"` + strings.Repeat("x", 4<<20) + `"}`
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"not JSON", "POST", "/admin/v1/appliances", "{", 400, "bad_request"},
		{"unknown field", "POST", "/admin/v1/appliances", `{"id":"x","bogus":1}`, 400, "bad_request"},
		{"trailing data", "POST", "/admin/v1/appliances/rack1/revoke", `{"reason":"a"} {}`, 400, "bad_request"},
		{"no EK", "POST", "/admin/v1/appliances", `{"id":"x"}`, 400, "bad_argument"},
		{"bad id", "POST", "/admin/v1/appliances", `{"id":"../x","ek_public":"` + b64(ekPublicDER(t)) + `"}`, 400, "bad_argument"},
		{"bad EK", "POST", "/admin/v1/appliances", `{"id":"x","ek_public":"AAAA"}`, 400, "bad_request"},
		{"bad share", "POST", "/admin/v1/appliances", `{"id":"x","ek_public":"` + b64(ekPublicDER(t)) + `","share":"AAAA"}`, 400, "bad_request"},
		{"blank reason", "POST", "/admin/v1/appliances/rack1/revoke", `{"reason":"  "}`, 400, "bad_request"},
		{"long reason", "POST", "/admin/v1/appliances/rack1/revoke", `{"reason":"` + strings.Repeat("x", 1025) + `"}`, 400, "bad_request"},
		{"long id", "POST", "/admin/v1/appliances", `{"id":"` + strings.Repeat("x", 1<<20) + `","ek_public":"` + b64(ekPublicDER(t)) + `"}`, 400, "bad_argument"},
		{"body too large", "POST", "/admin/v1/appliances/rack1/revoke", big, 400, "bad_request"},
		{"revoke unknown", "POST", "/admin/v1/appliances/nope/revoke", `{"reason":"r"}`, 404, "not_found"},
		{"PCR out of range", "POST", "/admin/v1/appliances/rack1/baseline", `{"pcrs":{"24":"` + strings.Repeat("00", 32) + `"}}`, 400, "bad_request"},
		{"PCR not hex", "POST", "/admin/v1/appliances/rack1/baseline", `{"pcrs":{"1":"zz"}}`, 400, "bad_request"},
		{"baseline unknown", "POST", "/admin/v1/appliances/nope/baseline", `{"pcrs":{}}`, 404, "not_found"},
		{"EK root not a cert", "POST", "/admin/v1/ek-roots", `{"cert":"AAAA"}`, 400, "bad_request"},
		{"release key length", "POST", "/admin/v1/release-keys", `{"public_key":"AAAA"}`, 400, "bad_request"},
		{"envelope garbage", "POST", "/admin/v1/releases", `{"envelope":{"version":9}}`, 400, "release_format"},
		{"no envelope", "POST", "/admin/v1/releases", `{}`, 400, "release_format"},
		{"negative limit", "GET", "/admin/v1/audit?limit=-1", "", 400, "bad_request"},
		{"limit not a number", "GET", "/admin/v1/audit?limit=x", "", 400, "bad_request"},
		{"seq without hash", "GET", "/admin/v1/audit/verify?seq=1", "", 400, "bad_request"},
		{"short hash", "GET", "/admin/v1/audit/verify?seq=1&hash=ab", "", 400, "bad_request"},
		{"audit order", "GET", "/admin/v1/audit?from=middle", "", 400, "bad_request"},
		{"audit page too long", "GET", "/admin/v1/audit?limit=1001", "", 400, "bad_request"},
		{"no endpoint", "GET", "/admin/v2/appliances", "", 404, "no_endpoint"},
		{"wrong method", "DELETE", "/admin/v1/appliances/rack1", "", 404, "no_endpoint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			as := hc
			if trusteePath(tc.path) {
				as = trustee
			}
			status, body, err := do(t, as, f.srv.URL, tc.method, tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			var eb admin.ErrorBody
			if status != tc.status || jsonUnmarshal(body, &eb) != nil || eb.Code != tc.code || eb.Error == "" {
				t.Errorf("HTTP %d %s, want %d %s", status, body, tc.status, tc.code)
			}
		})
	}
	a, err := f.db.Appliance(t.Context(), "rack1")
	if err != nil || a.Revoked != nil || len(a.Baseline) != 0 {
		t.Errorf("rack1 changed by bad requests: %+v, %v", a, err)
	}
	if apps, _ := f.db.Appliances(t.Context()); len(apps) != 1 {
		t.Errorf("%d appliances after bad enrolls", len(apps))
	}
	// Each failed change is recorded, its detail bounded.
	recs, err := f.db.AuditRecords(t.Context(), verifier.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, r := range recs {
		if r.Outcome == "error" {
			failed++
		}
		if len(r.Detail) > 1024 {
			t.Errorf("record %d (%s) has a detail of %d bytes", r.Seq, r.Action, len(r.Detail))
		}
	}
	changes := 0
	for _, tc := range tests {
		if tc.method == "POST" {
			changes++
		}
	}
	if failed != changes {
		t.Errorf("%d failed changes recorded, want %d", failed, changes)
	}
}

// TestAuditPaging: one request answers at most MaxAuditPage records, the
// Client pages through a longer log in order, and pages follow AfterSeq.
func TestAuditPaging(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	total := admin.MaxAuditPage*2 + 7
	for i := range total {
		if err := f.db.Audit(ctx, &verifier.AuditRecord{Actor: "setup", Action: "note", Outcome: "ok", PCR: -1, Detail: strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	cert := operator(t, f.ops, "carol", admin.Auditor)
	hc := f.httpClient(cert)
	status, body, err := do(t, hc, f.srv.URL, "GET", "/admin/v1/audit", "")
	var page []verifier.AuditRecord
	if err != nil || status != 200 || jsonUnmarshal(body, &page) != nil || len(page) != admin.MaxAuditPage {
		t.Fatalf("GET audit without a limit: HTTP %d, %d records, %v; want the newest %d", status, len(page), err, admin.MaxAuditPage)
	}
	if status, body, _ := do(t, hc, f.srv.URL, "GET", "/admin/v1/audit?limit="+strconv.Itoa(admin.MaxAuditPage+1), ""); status != 400 {
		t.Errorf("limit above the page: HTTP %d %s, want 400", status, body)
	}
	// Each request adds its own admin-read record: the log only grows
	// while the Client pages, so every record of the setup must be there,
	// in order, with no repeat.
	all, err := f.client(t, cert).AuditRecords(ctx, verifier.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	for i, r := range all {
		if i > 0 && r.Seq != all[i-1].Seq+1 {
			t.Fatalf("record %d has seq %d after %d", i, r.Seq, all[i-1].Seq)
		}
		if r.Actor == "setup" {
			if r.Detail != strconv.Itoa(next) {
				t.Fatalf("setup record %d reads %q", next, r.Detail)
			}
			next++
		}
	}
	if next != total {
		t.Errorf("paged through %d setup records, want %d", next, total)
	}
	if _, err := f.client(t, cert).AuditRecords(ctx, verifier.AuditFilter{Limit: admin.MaxAuditPage + 1}); !errors.Is(err, admin.ErrBadRequest) {
		t.Errorf("Client with a limit above the page: %v, want ErrBadRequest", err)
	}
	// A page after a seq starts right after it.
	after, err := f.db.AuditRecords(ctx, verifier.AuditFilter{AfterSeq: 10, Limit: 3, Oldest: true})
	if err != nil || len(after) != 3 || after[0].Seq != 11 || after[2].Seq != 13 {
		t.Errorf("AfterSeq 10, Limit 3, Oldest: %+v, %v", after, err)
	}
	newest, err := f.db.AuditRecords(ctx, verifier.AuditFilter{AfterSeq: 10, Limit: 3})
	if last := all[len(all)-1].Seq; err != nil || len(newest) != 3 || newest[2].Seq < last || newest[0].Seq != newest[2].Seq-2 {
		t.Errorf("AfterSeq 10, Limit 3: %+v, %v; want the newest three (the last paged was %d)", newest, err, last)
	}
}
