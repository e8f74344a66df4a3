package admin_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/attest/admin"
)

// TestRoleMatrix: each role can do exactly its operations, over real
// mutual TLS. Every call, allowed or refused, leaves exactly one audit
// record naming the operator, and the chain still verifies.
func TestRoleMatrix(t *testing.T) {
	f := newFixture(t)
	env, relKey := signedRelease(t, "embassy-appliance")
	raw, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(env.Payload)
	ekRoot := newCA(t, "TPM vendor")

	// In order: each change succeeds for the one operator holding its role
	// and sets up the later ones (enroll before baseline, key before
	// publish before withdraw).
	endpoints := []struct {
		method, path, body string
		role               admin.Role
		ok                 int
		// action is the audit action of an accepted call ("" for a read:
		// admin-read).
		action string
	}{
		{"GET", "/admin/v1/appliances", "", admin.Viewer, 200, ""},
		{"POST", "/admin/v1/appliances", jsonBody(t, admin.EnrollRequest{ID: "rack1", EKPublic: ekPublicDER(t)}), admin.Enroller, 204, "enroll"},
		{"GET", "/admin/v1/appliances/rack1", "", admin.Viewer, 200, ""},
		{"POST", "/admin/v1/appliances/rack1/baseline", `{"pcrs":{"0":"` + strings.Repeat("ab", 32) + `"}}`, admin.Enroller, 204, "baseline-set"},
		{"POST", "/admin/v1/ek-roots", jsonBody(t, admin.EKRootRequest{Cert: ekRoot.Cert.Raw}), admin.Trustee, 204, "ek-root-add"},
		{"GET", "/admin/v1/ek-roots", "", admin.Viewer, 200, ""},
		{"POST", "/admin/v1/release-keys", jsonBody(t, admin.ReleaseKeyRequest{PublicKey: relKey}), admin.Trustee, 204, "release-key-add"},
		{"POST", "/admin/v1/release-threshold", `{"threshold":1}`, admin.Trustee, 204, "release-threshold"},
		{"GET", "/admin/v1/release-keys", "", admin.Viewer, 200, ""},
		{"POST", "/admin/v1/releases", jsonBody(t, admin.PublishRequest{Envelope: raw}), admin.Publisher, 200, "release-publish"},
		{"GET", "/admin/v1/releases", "", admin.Viewer, 200, ""},
		{"POST", "/admin/v1/releases/" + hex.EncodeToString(digest[:]) + "/withdraw", "", admin.Publisher, 204, "release-withdraw"},
		{"POST", "/admin/v1/appliances/rack1/revoke", `{"reason":"stolen"}`, admin.Revoker, 204, "revoke"},
		{"GET", "/admin/v1/audit?limit=5&appliance=rack1", "", admin.Auditor, 200, ""},
		{"GET", "/admin/v1/audit/verify", "", admin.Auditor, 200, ""},
		{"GET", "/fleet/appliances/rack1", "", admin.Viewer, 200, ""},
		{"GET", "/metrics", "", admin.Viewer, 200, ""},
	}
	type op struct {
		name string
		hc   *http.Client
		role admin.Role // "" holds none
	}
	var ops []op
	for _, r := range admin.Roles {
		ops = append(ops, op{"only-" + string(r), f.httpClient(operator(t, f.ops, "only-"+string(r), r)), r})
	}
	ops = append(ops, op{"nobody", f.httpClient(operator(t, f.ops, "nobody")), ""})

	covered := map[admin.Role]bool{}
	for _, ep := range endpoints {
		covered[ep.role] = true
		for _, o := range ops {
			before := f.auditCount(t)
			status, body, err := do(t, o.hc, f.srv.URL, ep.method, ep.path, ep.body)
			if err != nil {
				t.Fatalf("%s %s as %s: %v", ep.method, ep.path, o.name, err)
			}
			allowed := o.role == ep.role
			want := http.StatusForbidden
			if allowed {
				want = ep.ok
			}
			if status != want {
				t.Errorf("%s %s as %s: HTTP %d %s, want %d", ep.method, ep.path, o.name, status, body, want)
				continue
			}
			if allowed && strings.HasPrefix(ep.path, "/fleet/") && string(body) != "fleet page /appliances/rack1" {
				t.Errorf("the fleet handler answered %q: want its path without the /fleet prefix", body)
			}
			if !allowed {
				var eb admin.ErrorBody
				if json.Unmarshal(body, &eb) != nil || eb.Code != "forbidden" || !strings.Contains(eb.Error, string(ep.role)) {
					t.Errorf("%s %s as %s: refusal body %s", ep.method, ep.path, o.name, body)
				}
			}
			wantRecords := 1
			if allowed && ep.path == "/metrics" {
				wantRecords = 0 // scrapes are authorised, not audited
			}
			if n := f.auditCount(t); n != before+wantRecords {
				t.Errorf("%s %s as %s: %d audit records added, want %d", ep.method, ep.path, o.name, n-before, wantRecords)
			}
			if wantRecords == 0 {
				continue
			}
			rec := f.lastAudit(t)
			wantAction, wantOutcome := ep.action, "ok"
			switch {
			case !allowed:
				wantOutcome = admin.OutcomeForbidden
				wantAction = "" // the route's name; checked through Check
			case wantAction == "":
				wantAction = "admin-read"
			}
			if rec.Actor != "operator:"+o.name || rec.Outcome != wantOutcome || (wantAction != "" && rec.Action != wantAction) || (!allowed && rec.Check != "role") {
				t.Errorf("%s %s as %s: audit record %+v, want actor operator:%s, action %q, outcome %s", ep.method, ep.path, o.name, rec, o.name, wantAction, wantOutcome)
			}
		}
	}
	for _, r := range admin.Roles {
		if !covered[r] {
			t.Errorf("role %s has no endpoint in the matrix", r)
		}
	}
	if f.fleetHits.Load() != 1 || f.metricsHits.Load() != 1 {
		t.Errorf("fleet served %d times, metrics %d: want once each (the viewer)", f.fleetHits.Load(), f.metricsHits.Load())
	}
	rep, err := f.db.VerifyAudit(t.Context(), 0, "")
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("audit chain: %v %+v", err, rep)
	}
	// The changes are those of the verifier, made by the operators.
	a, err := f.db.Appliance(t.Context(), "rack1")
	if err != nil || a.RevokedBy != "operator:only-revoker" || a.Baseline["0"] != strings.Repeat("ab", 32) {
		t.Errorf("rack1 after the matrix: %+v, %v", a, err)
	}
	// The forbidden calls that named rack1 are operators' records: they
	// do not make rack1 look refused.
	if a != nil && a.LastRefusal != nil {
		t.Errorf("rack1's last refusal is an operator's forbidden call: %+v", a.LastRefusal)
	}
	if rels, err := f.db.Releases(t.Context()); err != nil || len(rels) != 1 || rels[0].Withdrawn == nil {
		t.Errorf("releases after the matrix: %+v, %v", rels, err)
	}
	if !slices.Equal(admin.Roles, []admin.Role{admin.Viewer, admin.Enroller, admin.Revoker, admin.Publisher, admin.Trustee, admin.Auditor}) {
		t.Errorf("roles %v", admin.Roles)
	}
}
