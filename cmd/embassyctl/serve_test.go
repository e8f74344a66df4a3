package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/testenv"
)

// lockedBuffer is a bytes.Buffer safe for one writer and one poller.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestServeFlags(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := [][]string{
		{},              // no file
		{"--file", img}, // no TLS, no --plaintext
		{"--file", img, "--plaintext", "--tls-cert", "x"},
		{"--file", img, "--plaintext", "--grant", "bad"},
		{"--file", img, "--plaintext", "--grant", "a=disk:rx"},
		{"--file", img, "--plaintext", "extra"},
	}
	for _, args := range cases {
		err := serve(context.Background(), args, io.Discard, io.Discard)
		if !errors.Is(err, errUsage) {
			t.Errorf("serve %q: %v, want a usage error", args, err)
		}
	}
	var g grantList
	if err := g.Set("spiffe://home/x=y=disk:ro"); err != nil || g[0].Identity != "spiffe://home/x=y" || g[0].Export != "disk" {
		t.Errorf("grant with '=' in identity: %+v, %v", g, err)
	}
}

func TestServePlaintextWithNbdinfo(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	port, stop := startServe(t, "--file", img, "--plaintext", "--export", "bench")
	cmd := exec.Command(testenv.Tool(t, "nbdinfo"), "nbd://127.0.0.1:"+port+"/bench")
	cmd.Env = testenv.SystemPathEnv()
	info, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(info), "export-size: 1048576") {
		t.Errorf("nbdinfo: %v\n%s", err, info)
	}
	if out := stop(); !strings.Contains(out, "stopped: 1 connections") {
		t.Errorf("summary: %q", out)
	}
}

// startServe runs serve with args until the returned stop is called, and
// returns the port it listens on.
func startServe(t *testing.T, args ...string) (port string, stop func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- serve(ctx, append(args, "--listen", "127.0.0.1:0"), out, io.Discard) }()
	re := regexp.MustCompile(`on 127\.0\.0\.1:(\d+)`)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			port = m[1]
			break
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("serve exited: %v\n%s", err, out.String())
		default:
		}
	}
	if port == "" {
		cancel()
		t.Fatalf("server did not report its address: %q", out.String())
	}
	return port, func() string {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("serve did not stop")
		}
		return out.String()
	}
}

func TestServeStore(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, bytes.Repeat([]byte{0x42}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "store.img")
	common := []string{"--store", store, "--kek", kek, "--counter", filepath.Join(dir, "counter"), "--plaintext"}
	qemuIO := func(port string, cmds ...string) string {
		args := []string{"-f", "raw", "nbd://127.0.0.1:" + port + "/disk"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		cmd := exec.Command(testenv.Tool(t, "qemu-io"), args...)
		cmd.Env = testenv.SystemPathEnv()
		out, err := cmd.CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("fail")) {
			t.Fatalf("qemu-io %q: %v\n%s", cmds, err, out)
		}
		return string(out)
	}
	port, stop := startServe(t, append(common, "--format", "8M")...)
	qemuIO(port, "write -P 0x33 4096 64k", "write -P 0x44 100 200", "flush")
	stop()
	// Reopened (no --format): the data is still there, decrypted.
	port, stop = startServe(t, common...)
	out := qemuIO(port, "read -P 0x33 4096 64k", "read -P 0x44 100 200", "read -P 0 300 3796")
	if strings.Count(out, "read ") != 3 {
		t.Errorf("qemu-io reads: %s", out)
	}
	stop()
	raw, err := os.ReadFile(store)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, bytes.Repeat([]byte{0x33}, 64)) {
		t.Error("plaintext found on the store device")
	}
	// A wrong KEK cannot open it.
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, bytes.Repeat([]byte{1}, 32), 0o600)
	err = serve(context.Background(), []string{"--store", store, "--kek", bad, "--plaintext", "--listen", "127.0.0.1:0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "open store") {
		t.Errorf("wrong KEK: %v", err)
	}
}
