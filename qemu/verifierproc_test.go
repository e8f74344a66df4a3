package qemu_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/qemu"
)

var (
	verifierBinOnce sync.Once
	verifierBin     string
	verifierBinErr  error
)

// verifierBinary builds cmd/embassy-verifier once per test binary run.
func verifierBinary(t testing.TB) string {
	t.Helper()
	verifierBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "embassy-qemu-verifier-")
		if err != nil {
			verifierBinErr = err
			return
		}
		verifierBin, verifierBinErr = qemu.BuildVerifier(context.Background(), moduleRoot(t), dir)
	})
	if verifierBinErr != nil {
		t.Fatal(verifierBinErr)
	}
	return verifierBin
}

// startVerifierProcess starts a verifier process stopped at the test's end.
func startVerifierProcess(t testing.TB, name string, lease time.Duration) *qemu.VerifierProcess {
	t.Helper()
	p, err := qemu.StartVerifierProcess(context.Background(), qemu.ProcessOptions{
		Binary: verifierBinary(t), Dir: t.TempDir(), Name: name, Lease: lease,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// nonceStatus asks the verifier process for a nonce for appliance id and
// returns the HTTP status.
func nonceStatus(t *testing.T, p *qemu.VerifierProcess, id string) (int, error) {
	t.Helper()
	client, base := p.Client()
	resp, err := client.Post(base+protocol.PathNonce, "application/json", strings.NewReader(`{"appliance_id":"`+id+`"}`))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestVerifierProcessKillRestart: the real verifier binary serves HTTPS on
// loopback with a certificate for 127.0.0.1 and the guest's view of the
// host; what the harness enrolls through its own database handle is seen
// by the running server; Kill stops it at once, Restart brings it back on
// the same address and database.
func TestVerifierProcessKillRestart(t *testing.T) {
	p := startVerifierProcess(t, "tallinn", 20*time.Second)
	if !strings.HasSuffix(p.GuestURL, ":"+strings.Split(p.Addr, ":")[1]) || !strings.HasPrefix(p.GuestURL, "https://"+qemu.GuestHost+":") {
		t.Errorf("guest URL %s, address %s", p.GuestURL, p.Addr)
	}
	blk, _ := pem.Decode([]byte(p.CAPEM))
	if blk == nil {
		t.Fatal("no CA PEM")
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := os.ReadFile(filepath.Join(filepath.Dir(p.LogPath()), "server-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	lb, _ := pem.Decode(leaf)
	lc, err := x509.ParseCertificate(lb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, host := range []string{"127.0.0.1", qemu.GuestHost} {
		if _, err := lc.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}

	// Unknown appliance: the server answers from its database.
	if code, err := nonceStatus(t, p, "rack1"); err != nil || code == http.StatusOK {
		t.Fatalf("nonce for an unknown appliance: %d %v", code, err)
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.DB.Enroll(ctx, verifier.EnrollParams{ID: "rack1", EKPublic: &k.PublicKey, Actor: "test"}); err != nil {
		t.Fatal(err)
	}
	if code, err := nonceStatus(t, p, "rack1"); err != nil || code != http.StatusOK {
		t.Fatalf("nonce after enrolling beside the running server: %d %v", code, err)
	}

	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if p.Running() {
		t.Error("running after Kill")
	}
	if _, err := nonceStatus(t, p, "rack1"); err == nil {
		t.Error("killed verifier answered")
	}
	if err := p.Kill(); !errors.Is(err, qemu.ErrVerifierDown) {
		t.Errorf("second Kill: %v, want ErrVerifierDown", err)
	}
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if code, err := nonceStatus(t, p, "rack1"); err != nil || code != http.StatusOK {
		t.Fatalf("nonce after restart: %d %v", code, err)
	}
	log, err := p.Log()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(log, `msg=serving`); n != 2 {
		t.Errorf("log shows %d starts, want 2:\n%s", n, log)
	}
}
