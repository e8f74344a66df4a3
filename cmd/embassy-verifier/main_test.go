package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
	"github.com/dataembassy/embassy/attest/verifier"
)

// TestEndToEnd runs the verifier as the binary does (TLS files from
// --init-tls, database file, real listener) and drives a swtpm appliance
// through enrollment, unlock, heartbeat and revocation, with the operator
// steps done on the same database file as embassyctl does.
func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	if err := run(t.Context(), []string{"--init-tls", tlsDir, "--hosts", "127.0.0.1"}, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "verifier.db")

	// Operator: trust a release key, publish a release, enroll the TPM.
	sw := swtpmtest.Start(t)
	var mlog measure.Log
	ev := measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("v1"))
	if err := mlog.Measure(sw.RW(), ev); err != nil {
		t.Fatal(err)
	}
	db, err := verifier.OpenDB(t.Context(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	m := &release.Manifest{Version: release.Version, Name: "embassy-appliance", Release: "1", Created: time.Now(), Components: []release.Component{}}
	p15, _ := measure.Replay([]measure.Event{ev})
	m.SetPCR(15, p15)
	env, err := release.NewEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	env.Sign(priv)
	ekCert, err := agent.EKCertificate(sw.RW())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	must(t, db.AddReleaseKey(ctx, pub, "op"))
	if _, err := db.PublishRelease(ctx, env, "op"); err != nil {
		t.Fatal(err)
	}
	must(t, db.AddEKRoot(ctx, sw.CA, "op"))
	must(t, db.AddEKRoot(ctx, sw.Intermediate, "op"))
	must(t, db.Enroll(ctx, verifier.EnrollParams{ID: "rack1", EKCert: ekCert, Actor: "op"}))

	// The verifier binary's code path.
	sctx, cancel := context.WithCancel(ctx)
	addrc := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- run(sctx, []string{"--db", dbPath, "--listen", "127.0.0.1:0",
			"--cert", filepath.Join(tlsDir, "server.pem"), "--key", filepath.Join(tlsDir, "server.key")},
			io.Discard, func(a string) { addrc <- a })
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-errc:
		t.Fatalf("verifier exited: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("verifier: %v", err)
		}
	})

	caPEM, err := os.ReadFile(filepath.Join(tlsDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(caPEM)
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	a, err := agent.New(agent.Config{Verifiers: []agent.Endpoint{{Name: "v", URL: "https://" + addr, RootCAs: pool}}, ApplianceID: "rack1", TPM: sw.RW(), Log: &mlog,
		EventLog: func() ([]byte, error) { return []byte{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if ans, err := a.Enroll(ctx); err != nil || len(ans) != 1 || ans[0].Outcome != agent.OutcomeEnrolled {
		t.Fatalf("Enroll: %+v %v", ans, err)
	}
	again, err := agent.New(agent.Config{Verifiers: []agent.Endpoint{{Name: "v", URL: "https://" + addr, RootCAs: pool}}, ApplianceID: "rack1", TPM: sw.RW(), Log: &mlog,
		EventLog: func() ([]byte, error) { return []byte{}, nil }})
	must(t, err)
	if ans, err := again.Enroll(ctx); err != nil || len(ans) != 1 || ans[0].Outcome != agent.OutcomeAlreadyEnrolled {
		t.Fatalf("second Enroll: %+v %v", ans, err)
	}
	u, err := a.Unlock(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !u.Provision || len(u.KEK) != 32 || u.Release != "embassy-appliance 1" {
		t.Fatalf("unlock: %+v", u)
	}
	if r, err := a.Heartbeat(ctx, 1, nil); err != nil || r.Answers[0].Lease != 10*time.Minute || r.Lease <= 9*time.Minute {
		t.Fatalf("heartbeat: %+v %v", r, err)
	}
	must(t, db.Revoke(ctx, "rack1", "test", "op"))
	if _, err := a.Heartbeat(ctx, 1, nil); !errors.Is(err, agent.ErrRevoked) {
		t.Fatalf("heartbeat after revoke: %v", err)
	}
	rep, err := db.VerifyAudit(ctx, 0, "")
	if err != nil || len(rep.Problems) != 0 || rep.Records < 8 {
		t.Fatalf("audit: %+v %v", rep, err)
	}
	db.Close()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestUsage: --help succeeds, wrong arguments are usage errors (exit 2),
// as in embassyctl.
func TestUsage(t *testing.T) {
	var out bytes.Buffer
	stdout = &out
	defer func() { stdout = os.Stdout }()
	if err := run(t.Context(), []string{"--help"}, io.Discard, nil); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "usage") {
		t.Errorf("--help: %v, output %q", err, out.String())
	}
	for _, args := range [][]string{{"--bogus"}, {}, {"--cert", "c.pem"}, {"--init-tls", t.TempDir(), "extra"}} {
		var logs bytes.Buffer
		if err := run(t.Context(), args, &logs, nil); !errors.Is(err, errUsage) || !strings.Contains(logs.String(), "usage") {
			t.Errorf("%q: %v, want a usage error with the usage printed (%q)", args, err, logs.String())
		}
	}
}
