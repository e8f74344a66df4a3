package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/internal/testenv"
)

func TestServeTLSGrants(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca-cert.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	server, err := ca.Issue(pki.LeafOptions{CommonName: "server", Usage: pki.Server, Hosts: []string{"127.0.0.1"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := server.WriteFiles(dir, "server"); err != nil {
		t.Fatal(err)
	}
	clients := map[string]string{} // CN -> certificate directory for libnbd
	for _, cn := range []string{"reader", "stranger"} {
		cdir := filepath.Join(dir, cn)
		leaf, err := ca.Issue(pki.LeafOptions{CommonName: cn, Usage: pki.Client, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := leaf.WriteFiles(cdir, "client"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cdir, "ca-cert.pem"), ca.CertPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		clients[cn] = cdir
	}
	img := filepath.Join(dir, "d.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	port, stop := startServe(t, "--file", img,
		"--tls-cert", filepath.Join(dir, "server-cert.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--client-ca", caFile, "--grant", "reader=disk:ro")
	nbdinfo := func(cn string) (string, error) {
		cmd := exec.Command(testenv.Tool(t, "nbdinfo"), "nbds://127.0.0.1:"+port+"/disk?tls-certificates="+clients[cn])
		cmd.Env = testenv.SystemPathEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := nbdinfo("reader")
	if err != nil || !strings.Contains(out, "is_read_only: true") {
		t.Errorf("reader: %v\n%s", err, out)
	}
	if out, err := nbdinfo("stranger"); err == nil {
		t.Errorf("a client without a grant connected:\n%s", out)
	}
	stop()
}
