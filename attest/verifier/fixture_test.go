package verifier_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/google/go-tpm-tools/client"
)

// bootEvents are what the test appliance measures into PCR 15.
var bootEvents = []measure.Event{
	measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("appliance v1")),
	measure.NewEvent("config", "/etc/embassy/appliance.json", []byte(`{"id":"rack1"}`)),
}

// fixture is a verifier with one published release and its clock.
type fixture struct {
	t      testing.TB
	dsn    string // the database, kept across restarts
	db     *verifier.DB
	srv    *httptest.Server
	pool   *x509.CertPool
	now    time.Time
	relKey ed25519.PrivateKey
	opts   verifier.Options
	down   atomic.Bool // drop every connection, as a verifier that is down
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureAt(t, testDSN(t))
}

// newFixtureAt is newFixture on the empty database dsn.
func newFixtureAt(t testing.TB, dsn string) *fixture {
	t.Helper()
	f := &fixture{t: t, dsn: dsn, now: time.Now()}
	_, f.relKey, _ = ed25519.GenerateKey(rand.Reader)
	f.start()
	ctx := context.Background()
	if err := f.db.AddReleaseKey(ctx, f.relKey.Public().(ed25519.PublicKey), "test"); err != nil {
		t.Fatal(err)
	}
	f.publish(bootEvents, "1")
	return f
}

func (f *fixture) clock() time.Time { return f.now }

// start opens the DB and serves it over TLS.
func (f *fixture) start() {
	t := f.t
	t.Helper()
	db, err := verifier.OpenDB(context.Background(), f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetClock(f.clock)
	f.db = db
	opts := f.opts
	opts.DB = db
	opts.Logger = slog.New(slog.DiscardHandler)
	s, err := verifier.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() { // as a crashed host: the connection drops
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		s.ServeHTTP(w, r)
	}))
	f.pool = x509.NewCertPool()
	f.pool.AddCert(f.srv.Certificate())
	t.Cleanup(f.stop)
}

// endpoints names the fixture's verifier as the agent's only one.
func (f *fixture) endpoints() []agent.Endpoint {
	return []agent.Endpoint{{Name: "verifier", URL: f.srv.URL, RootCAs: f.pool}}
}

func (f *fixture) stop() {
	if f.srv != nil {
		f.srv.Close()
		f.db.Close()
		f.srv = nil
	}
}

// restart stops the server and the DB and starts them again on the same
// database.
func (f *fixture) restart() {
	f.stop()
	f.start()
}

// publish signs and publishes a release whose PCR 15 is what events give,
// and PCRs 4 and 9 are zero (swtpm boots no firmware).
func (f *fixture) publish(events []measure.Event, ver string) {
	t := f.t
	t.Helper()
	m := &release.Manifest{Version: release.Version, Name: "embassy-appliance", Release: ver, Created: f.now,
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
	env.Sign(f.relKey)
	if _, err := f.db.PublishRelease(context.Background(), env, "test"); err != nil {
		t.Fatal(err)
	}
}

// appliance is a swtpm-backed appliance.
type appliance struct {
	id  string
	sw  *swtpmtest.TPM
	log *measure.Log
	a   *agent.Agent
	f   *fixture
}

// newAppliance starts a swtpm, measures events, and returns an agent for
// it (not enrolled).
func (f *fixture) newAppliance(id string, events []measure.Event) *appliance {
	t := f.t
	t.Helper()
	ap := &appliance{id: id, sw: swtpmtest.Start(t), f: f}
	ap.boot(events)
	return ap
}

// boot (re)connects to the TPM, measures events, and makes a new agent.
func (ap *appliance) boot(events []measure.Event) {
	t := ap.f.t
	t.Helper()
	rw := ap.sw.RW()
	ap.log = &measure.Log{}
	for _, e := range events {
		if err := ap.log.Measure(rw, e); err != nil {
			t.Fatal(err)
		}
	}
	a, err := agent.New(agent.Config{
		Verifiers: ap.f.endpoints(), ApplianceID: ap.id, TPM: rw, Log: ap.log,
		EventLog: func() ([]byte, error) { return []byte{}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ap.a = a
}

// reboot power-cycles the swtpm and boots with events.
func (ap *appliance) reboot(events []measure.Event) {
	ap.sw.Reboot()
	ap.boot(events)
}

// register enrolls the appliance's EK certificate with the verifier.
func (f *fixture) register(ap *appliance) {
	t := f.t
	t.Helper()
	ctx := context.Background()
	if err := f.db.AddEKRoot(ctx, ap.sw.CA, "test"); err != nil {
		t.Fatal(err)
	}
	if err := f.db.AddEKRoot(ctx, ap.sw.Intermediate, "test"); err != nil {
		t.Fatal(err)
	}
	cert, err := agent.EKCertificate(ap.sw.RW())
	if err != nil || cert == nil {
		t.Fatalf("EK certificate: %v", err)
	}
	if err := f.db.Enroll(ctx, verifier.EnrollParams{ID: ap.id, EKCert: cert, Actor: "test"}); err != nil {
		t.Fatal(err)
	}
}

// enrolled returns an appliance registered and with its AK activated.
func (f *fixture) enrolled(id string) *appliance {
	f.t.Helper()
	ap := f.newAppliance(id, bootEvents)
	f.register(ap)
	if _, err := ap.a.Enroll(context.Background()); err != nil {
		f.t.Fatalf("Enroll: %v", err)
	}
	return ap
}

func (f *fixture) lastAudit() verifier.AuditRecord {
	f.t.Helper()
	recs, err := f.db.AuditRecords(context.Background(), verifier.AuditFilter{Limit: 1})
	if err != nil || len(recs) != 1 {
		f.t.Fatalf("audit: %v", err)
	}
	return recs[0]
}

func ekPublicOf(t *testing.T, sw *swtpmtest.TPM) any {
	t.Helper()
	ek, err := client.EndorsementKeyRSA(sw.RW())
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	return ek.PublicKey()
}

// localBlob is the local share u sealed for the release it unlocked.
func localBlob(u *agent.Unlocked) []byte { return u.Sealed.ByRelease[u.Release] }

func sameKEK(a, b []byte) bool { return len(a) == 32 && bytes.Equal(a, b) }

// unlocked returns an enrolled appliance after its first unlock (store
// epoch 0, provisioning).
func (f *fixture) unlocked(id string) (*appliance, *agent.Unlocked) {
	f.t.Helper()
	ap := f.enrolled(id)
	u, err := ap.a.Unlock(context.Background(), 0, nil)
	if err != nil {
		f.t.Fatalf("first Unlock: %v", err)
	}
	return ap, u
}
