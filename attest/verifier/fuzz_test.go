package verifier_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
)

// FuzzAttestHandler feeds arbitrary bodies to the attestation endpoint of a
// verifier with an enrolled swtpm appliance. Whatever the body, the answer
// is a well-formed 200 or a 4xx refusal, never a panic or a 500, and a 200
// only ever follows evidence whose quote verifies (the seed's).
func FuzzAttestHandler(f *testing.F) {
	fx := newFixture(f)
	ap := fx.enrolled("rack1")
	c := fx.raw()
	for _, p := range []protocol.Purpose{protocol.PurposeUnlock, protocol.PurposeHeartbeat} {
		req := quote(f, ap, c.nonce(ap.id), p, 0)
		body, _ := json.Marshal(req)
		f.Add(body)
	}
	f.Add([]byte(`{"appliance_id":"rack1","purpose":"unlock","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","store_epoch":0,"attestation":"CgA=","appliance_log":"e30="}`))
	srv, err := verifier.NewServer(verifier.Options{DB: fx.db, Logger: fx.opts.Logger})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, protocol.PathAttest, bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusOK:
			var resp protocol.AttestResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || resp.Decision == "" {
				t.Fatalf("200 with body %q", rec.Body.Bytes())
			}
		case http.StatusBadRequest, http.StatusForbidden:
			var e protocol.ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code == "" {
				t.Fatalf("%d with body %q", rec.Code, rec.Body.Bytes())
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	})
}
