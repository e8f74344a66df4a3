package verifier_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// serverCert issues an NBD server certificate naming cn.
func serverCert(t *testing.T, cn string) []byte {
	t.Helper()
	ca, err := pki.NewCA("appliance", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: cn, Usage: pki.Server, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Cert.Raw
}

// serverIdentityAudits returns the details of the audit records of
// recorded identities, oldest first.
func (f *fixture) serverIdentityAudits() []string {
	f.t.Helper()
	recs, err := f.db.AuditRecords(context.Background(), verifier.AuditFilter{})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		if r.Action == "server-identity" {
			out = append(out, r.Detail)
		}
	}
	return out
}

func TestServerIdentityRecordedFromHeartbeat(t *testing.T) {
	f := newFixture(t)
	ap, _ := f.unlocked("rack1")
	ctx := context.Background()
	certA, certB := serverCert(t, "rack1"), serverCert(t, "rack1")

	info, err := f.db.Appliance(ctx, "rack1")
	if err != nil || info.ServerCert != nil {
		t.Fatalf("before any heartbeat: %v, server cert %x", err, info.ServerCert)
	}
	for range 2 { // the same identity twice is recorded (and audited) once
		if _, err := ap.a.Heartbeat(ctx, 1, certA); err != nil {
			t.Fatalf("Heartbeat: %v", err)
		}
	}
	info, err = f.db.Appliance(ctx, "rack1")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(certA)
	if !bytes.Equal(info.ServerCert, certA) || info.ServerCertSHA256 != hex.EncodeToString(sum[:]) || info.ServerCertRecorded == nil || info.ServerCertRelease == "" {
		t.Fatalf("recorded %+v", info)
	}
	if got := f.serverIdentityAudits(); len(got) != 1 || !strings.Contains(got[0], info.ServerCertSHA256) {
		t.Fatalf("audit records %q, want one naming %s", got, info.ServerCertSHA256)
	}
	// A heartbeat without a certificate (a boot waiting for readmission)
	// keeps the recorded one.
	if _, err := ap.a.Heartbeat(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	// A new identity (a re-provisioned store has a new KEK) replaces it,
	// and the audit log says which it replaced.
	if _, err := ap.a.Heartbeat(ctx, 1, certB); err != nil {
		t.Fatal(err)
	}
	info, err = f.db.Appliance(ctx, "rack1")
	if err != nil || !bytes.Equal(info.ServerCert, certB) {
		t.Fatalf("after a new identity: %v, %x", err, info.ServerCert)
	}
	if got := f.serverIdentityAudits(); len(got) != 2 || !strings.Contains(got[1], "replaces "+hex.EncodeToString(sum[:])) {
		t.Fatalf("audit records %q", got)
	}
}

func TestServerIdentityRefusals(t *testing.T) {
	f := newFixture(t)
	ap, _ := f.unlocked("rack1")
	c := f.raw()
	good := serverCert(t, "rack1")

	// In transit, the host swaps in its own certificate: the quote covers
	// the one the appliance reported, so the swap breaks it.
	req := quoteCert(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 1, good)
	req.ServerCert = serverCert(t, "rack1")
	_, e := c.attest(req)
	expectRefusal(t, e, protocol.CodeRefused, "quote", -1)

	for name, cert := range map[string][]byte{
		"not a certificate":       []byte("definitely not DER"),
		"names another appliance": serverCert(t, "rack2"),
	} {
		t.Run(name, func(t *testing.T) {
			_, e := c.attest(quoteCert(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 1, cert))
			if e == nil || e.Code != protocol.CodeBadRequest {
				t.Fatalf("got %+v, want %s", e, protocol.CodeBadRequest)
			}
		})
	}
	info, err := f.db.Appliance(context.Background(), "rack1")
	if err != nil || info.ServerCert != nil {
		t.Fatalf("a refused report was recorded: %v, %x", err, info.ServerCert)
	}
}
