package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// syncBuffer is a bytes.Buffer safe for the verifier's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAdminAPI runs the verifier with --admin-listen and --log-format json
// and drives the admin API with operator certificates: every log line is
// JSON, the admin API names the operator in the audit log and refuses a
// role it lacks.
func TestAdminAPI(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	if err := run(t.Context(), []string{"--init-tls", tlsDir, "--hosts", "127.0.0.1"}, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	ops, err := pki.NewCA("operators", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opsDir := filepath.Join(dir, "ops")
	if err := ops.WriteFiles(opsDir); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "verifier.db")
	logs := &syncBuffer{}
	sctx, cancel := context.WithCancel(t.Context())
	addrc := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- run(sctx, []string{"--db", dbPath, "--listen", "127.0.0.1:0",
			"--cert", filepath.Join(tlsDir, "server.pem"), "--key", filepath.Join(tlsDir, "server.key"),
			"--admin-listen", "127.0.0.1:0", "--operator-ca", filepath.Join(opsDir, "ca.pem"), "--log-format", "json"},
			logs, func(a string) { addrc <- a })
	}()
	select {
	case <-addrc:
	case err := <-errc:
		t.Fatalf("verifier exited: %v\n%s", err, logs)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("verifier: %v", err)
		}
	})

	// Every log line is a JSON object; one names the admin API's address.
	var adminAddr string
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var line struct{ Msg, Addr string }
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		if line.Msg == "admin API serving" {
			adminAddr = line.Addr
		}
	}
	if adminAddr == "" {
		t.Fatalf("no admin API address in the logs:\n%s", logs)
	}

	serverCA, err := pki.ReadCertFile(filepath.Join(tlsDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := (&pki.CA{Cert: serverCA}).Pool()
	client := func(name string, roles ...admin.Role) *admin.Client {
		leaf, err := ops.Issue(admin.IssueOptions(name, roles, time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		c, err := admin.NewClient("https://"+adminAddr, leaf.TLSCertificate(), roots)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// page GETs path on the admin listener as an operator with roles.
	page := func(path, name string, roles ...admin.Role) (int, string) {
		t.Helper()
		leaf, err := ops.Issue(admin.IssueOptions(name, roles, time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: roots, Certificates: []tls.Certificate{leaf.TLSCertificate()}}}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("https://" + adminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	alice := client("alice", admin.Enroller, admin.Viewer)
	bob := client("bob", admin.Revoker)
	ctx := t.Context()
	ek, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	must(t, alice.Enroll(ctx, verifier.EnrollParams{ID: "rack1", EKPublic: &ek.PublicKey}))
	if list, err := alice.Appliances(ctx); err != nil || len(list) != 1 || list[0].ID != "rack1" {
		t.Fatalf("Appliances: %+v %v", list, err)
	}
	if err := alice.Revoke(ctx, "rack1", "stolen", ""); !errors.Is(err, admin.ErrForbidden) {
		t.Fatalf("enroller revokes: %v, want ErrForbidden", err)
	}
	must(t, bob.Revoke(ctx, "rack1", "stolen", ""))
	if _, err := bob.AuditRecords(ctx, verifier.AuditFilter{}); !errors.Is(err, admin.ErrForbidden) {
		t.Fatalf("revoker reads the audit log: %v, want ErrForbidden", err)
	}
	recs, err := client("carol", admin.Auditor).AuditRecords(ctx, verifier.AuditFilter{Appliance: "rack1"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.Actor+" "+r.Action+" "+r.Outcome)
	}
	want := []string{"operator:alice enroll ok", "operator:alice revoke forbidden", "operator:bob revoke ok"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("rack1's audit records:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The fleet page is on the admin listener, for viewers only.
	if code, body := page("/fleet/", "dave", admin.Viewer); code != http.StatusOK || !strings.Contains(body, "rack1") || !strings.Contains(body, "stolen") {
		t.Errorf("fleet page as a viewer: %d\n%s", code, body)
	}
	if code, _ := page("/fleet/", "erin", admin.Revoker); code != http.StatusForbidden {
		t.Errorf("fleet page as a revoker: %d, want 403", code)
	}
	// So are the metrics: the verifier's own, with rack1's gauges.
	if code, body := page("/metrics", "prometheus", admin.Viewer); code != http.StatusOK ||
		!strings.Contains(body, "embassy_verifier_up 1") || !strings.Contains(body, `embassy_verifier_appliance_revoked{appliance="rack1"} 1`) {
		t.Errorf("metrics as a viewer: %d\n%s", code, body)
	}
	if code, _ := page("/metrics", "frank", admin.Auditor); code != http.StatusForbidden {
		t.Errorf("metrics as an auditor: %d, want 403", code)
	}
}

// TestAdminUsage: the admin API is never served without the operators'
// CA, and the flags are checked before anything starts.
func TestAdminUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--cert", "c.pem", "--key", "k.pem", "--admin-listen", "127.0.0.1:0"},
		{"--cert", "c.pem", "--key", "k.pem", "--operator-ca", "ca.pem"},
		{"--cert", "c.pem", "--key", "k.pem", "--admin-listen", "127.0.0.1:0", "--operator-ca", "ca.pem", "--admin-cert", "a.pem"},
		{"--cert", "c.pem", "--key", "k.pem", "--log-format", "xml"},
	} {
		var logs bytes.Buffer
		if err := run(t.Context(), args, &logs, nil); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
	// An operator CA file that holds no certificate.
	dir := t.TempDir()
	if err := run(t.Context(), []string{"--init-tls", dir}, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.pem")
	must(t, os.WriteFile(bad, []byte("not a certificate"), 0o644))
	err := run(t.Context(), []string{"--db", filepath.Join(dir, "v.db"), "--listen", "127.0.0.1:0", "--cert", filepath.Join(dir, "server.pem"), "--key", filepath.Join(dir, "server.key"),
		"--admin-listen", "127.0.0.1:0", "--operator-ca", bad}, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("operator CA without a certificate: %v", err)
	}
}
