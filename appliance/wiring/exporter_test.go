package wiring_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/appliance/wiring"
	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/internal/testenv"
)

// clientPKI writes a CA and a client certificate for identity into dir
// (libnbd's tls-certificates layout, minus ca-cert.pem) and returns the CA.
func clientPKI(t *testing.T, dir, identity string) string {
	t.Helper()
	ca, err := pki.NewCA("home clients CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: identity, Usage: pki.Client, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.WriteFiles(dir, "client"); err != nil {
		t.Fatal(err)
	}
	return string(ca.CertPEM())
}

// TestExporterWithNbdcopy serves a real store over mutual TLS with the
// KEK-derived server identity and moves data through libnbd's nbdcopy,
// which pins the identity as its CA.
func TestExporterWithNbdcopy(t *testing.T) {
	nbdcopy := testenv.Tool(t, "nbdcopy")
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	os.Mkdir(certs, 0o700)
	clientCA := clientPKI(t, certs, "tallinn-client")

	st, kek := newStore(t)
	id, err := appliance.DeriveServerIdentity(kek, "lux-01", []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(certs, "ca-cert.pem"), id.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	exp := &wiring.Exporter{Config: appliance.NBDConfig{
		Listen:      "127.0.0.1:0",
		ClientCAPEM: clientCA,
		Exports:     []appliance.ExportConfig{{Name: "registers", Grants: []appliance.GrantConfig{{Identity: "tallinn-client", Access: "rw"}}}},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- exp.Serve(ctx, st, id, func(a string) { addrc <- a }) }()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	data := make([]byte, 8<<20)
	rand.Read(data)
	src := filepath.Join(dir, "src")
	dst := filepath.Join(dir, "dst")
	os.WriteFile(src, data, 0o600)
	uri := fmt.Sprintf("nbds://%s/registers?tls-certificates=%s", addr, certs)
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(nbdcopy, args...)
		cmd.Env = testenv.SystemPathEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy %v: %v\n%s", args, err, out)
		}
	}
	run("--flush", src, uri)
	os.WriteFile(dst, nil, 0o600)
	// Read the whole export back; the first 8 MiB are what we wrote.
	run(uri, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(data)], data) {
		t.Fatal("data read back over NBD differs from what was written")
	}

	// A client pinning another identity refuses to talk to the server.
	other, _ := appliance.DeriveServerIdentity(bytes.Repeat([]byte{1}, 32), "lux-01", []net.IP{net.IPv4(127, 0, 0, 1)})
	os.WriteFile(filepath.Join(certs, "ca-cert.pem"), other.CertPEM, 0o600)
	cmd := exec.Command(nbdcopy, uri, filepath.Join(dir, "never"))
	cmd.Env = testenv.SystemPathEnv()
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("nbdcopy accepted a server with another identity:\n%s", out)
	}
}
