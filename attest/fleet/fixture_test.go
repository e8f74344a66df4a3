package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// The fleet's appliances, one per state the page shows.
const (
	servingID  = "rack-serving"
	refusedID  = "rack-refused"
	revokedID  = "rack-revoked"
	enrolledID = "rack-enrolled"
	hostileID  = "rack-hostile"
)

// hostile is markup an attacker could place in what the verifier
// records (a refusal's detail comes from what an appliance sent).
const hostile = `<script>alert("x")</script><img src=https://example.invalid/x.png>`

// bootEvents are what the test appliances measure into PCR 15.
var bootEvents = []measure.Event{
	measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("appliance v1")),
	measure.NewEvent("config", "/etc/embassy/appliance.json", []byte(`{"id":"rack"}`)),
}

// testFleet is a verifier DB holding one appliance per state, reached by real
// attestations of swtpm-backed agents where the state needs one.
type testFleet struct {
	db *verifier.DB
	// serverCert is the NBD server certificate the serving appliance
	// reported.
	serverCert *x509.Certificate
}

// newFleet builds the fleet:
//   - rack-serving: unlocked, then a heartbeat at store epoch 2 reporting
//     its NBD server certificate;
//   - rack-refused: unlocked and renewed at epoch 3, then a heartbeat at
//     epoch 1 refused by the "epoch" check (a rolled-back store);
//   - rack-revoked: enrolled, then revoked;
//   - rack-enrolled: enrolled, never attested;
//   - rack-hostile: enrolled, with a refusal whose check and detail are
//     markup, and an audit record by an operator whose name is markup.
//
// Releases: "1" accepted and "0" withdrawn.
func newFleet(t *testing.T) *testFleet {
	t.Helper()
	ctx := context.Background()
	db := openDB(t)
	_, relKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.AddReleaseKey(ctx, relKey.Public().(ed25519.PublicKey), "alice"); err != nil {
		t.Fatal(err)
	}
	old := publish(t, db, relKey, []measure.Event{measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("appliance v0"))}, "0")
	if err := db.WithdrawRelease(ctx, old, "alice"); err != nil {
		t.Fatal(err)
	}
	publish(t, db, relKey, bootEvents, "1")

	srv, err := verifier.NewServer(verifier.Options{DB: db, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	t.Cleanup(ts.Close)
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	endpoints := []agent.Endpoint{{Name: "tallinn", URL: ts.URL, RootCAs: pool}}

	// Before any EK root is configured: afterwards Enroll wants a
	// certificate.
	for _, id := range []string{revokedID, enrolledID, hostileID} {
		enroll(t, db, verifier.EnrollParams{ID: id, EKPublic: ekStandIn(t), Actor: "alice"})
	}
	f := &testFleet{db: db, serverCert: nbdCertificate(t)}
	serving := attested(t, db, endpoints, servingID)
	if _, err := serving.Heartbeat(ctx, 2, f.serverCert.Raw); err != nil {
		t.Fatalf("heartbeat of %s: %v", servingID, err)
	}
	refused := attested(t, db, endpoints, refusedID)
	if _, err := refused.Heartbeat(ctx, 3, nil); err != nil {
		t.Fatalf("heartbeat of %s: %v", refusedID, err)
	}
	if _, err := refused.Heartbeat(ctx, 1, nil); err == nil {
		t.Fatalf("heartbeat of %s with a rolled-back epoch was not refused", refusedID)
	}

	if err := db.Revoke(ctx, revokedID, "disk shipped home for inspection", "bob"); err != nil {
		t.Fatal(err)
	}
	// The refusal is the verifier's own (actor "appliance"); an operator
	// with a hostile name leaves a record in the trail too.
	if err := db.Audit(ctx, &verifier.AuditRecord{Actor: verifier.ActorAppliance, Appliance: hostileID, Action: "attest-unlock",
		Outcome: "refused", Check: "release" + hostile, PCR: 15, Detail: "PCR 15 differs " + hostile}); err != nil {
		t.Fatal(err)
	}
	if err := db.Audit(ctx, &verifier.AuditRecord{Actor: hostile, Appliance: hostileID, Action: "admin-read",
		Outcome: "ok", PCR: -1, Detail: "appliance-show " + hostile}); err != nil {
		t.Fatal(err)
	}
	return f
}

// publish signs a release whose PCR 15 is what events give (PCRs 4 and 9
// zero: swtpm boots no firmware), publishes it and returns its digest.
func publish(t *testing.T, db *verifier.DB, key ed25519.PrivateKey, events []measure.Event, ver string) string {
	t.Helper()
	m := &release.Manifest{Version: release.Version, Name: "embassy-appliance", Release: ver, Created: time.Now(),
		Components: []release.Component{{Name: "initrd", SHA256: events[0].SHA256, Size: 1}}}
	p15, err := measure.Replay(events)
	if err != nil {
		t.Fatal(err)
	}
	m.SetPCR(4, make([]byte, 32))
	m.SetPCR(9, make([]byte, 32))
	m.SetPCR(15, p15)
	env, err := release.NewEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	env.Sign(key)
	v, err := db.PublishRelease(context.Background(), env, "alice")
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(v.Digest[:])
}

// attested starts a swtpm appliance booted with bootEvents, enrolls its EK
// certificate, activates its AK and unlocks it at store epoch 0.
func attested(t *testing.T, db *verifier.DB, endpoints []agent.Endpoint, id string) *agent.Agent {
	t.Helper()
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	log := &measure.Log{}
	for _, e := range bootEvents {
		if err := log.Measure(sw.RW(), e); err != nil {
			t.Fatal(err)
		}
	}
	a, err := agent.New(agent.Config{Verifiers: endpoints, ApplianceID: id, TPM: sw.RW(), Log: log,
		EventLog: func() ([]byte, error) { return []byte{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	for _, root := range []*x509.Certificate{sw.CA, sw.Intermediate} {
		if err := db.AddEKRoot(ctx, root, "alice"); err != nil {
			t.Fatal(err)
		}
	}
	cert, err := agent.EKCertificate(sw.RW())
	if err != nil || cert == nil {
		t.Fatalf("EK certificate of %s: %v", id, err)
	}
	enroll(t, db, verifier.EnrollParams{ID: id, EKCert: cert, Actor: "alice"})
	if _, err := a.Enroll(ctx); err != nil {
		t.Fatalf("AK activation of %s: %v", id, err)
	}
	if _, err := a.Unlock(ctx, 0, nil); err != nil {
		t.Fatalf("unlock of %s: %v", id, err)
	}
	return a
}

func enroll(t *testing.T, db *verifier.DB, p verifier.EnrollParams) {
	t.Helper()
	if err := db.Enroll(context.Background(), p); err != nil {
		t.Fatalf("enroll %s: %v", p.ID, err)
	}
}

// ekStandIn is an EK public key for an appliance that never attests.
func ekStandIn(t *testing.T) *ecdsa.PublicKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &k.PublicKey
}

// nbdCertificate is an NBD server certificate as an appliance reports it.
func nbdCertificate(t *testing.T) *x509.Certificate {
	t.Helper()
	ca, err := pki.NewCA("rack-serving NBD", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: servingID, Usage: pki.Server, Hosts: []string{"127.0.0.1"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Cert
}
