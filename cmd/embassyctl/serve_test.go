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
	ctx, cancel := context.WithCancel(context.Background())
	out := &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, []string{"--file", img, "--plaintext", "--listen", "127.0.0.1:0", "--export", "bench"}, out, io.Discard)
	}()
	re := regexp.MustCompile(`on 127\.0\.0\.1:(\d+)`)
	var port string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			port = m[1]
			break
		}
	}
	if port == "" {
		cancel()
		t.Fatalf("server did not report its address: %q", out.String())
	}
	cmd := exec.Command(testenv.Tool(t, "nbdinfo"), "nbd://127.0.0.1:"+port+"/bench")
	cmd.Env = testenv.SystemPathEnv()
	info, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(info), "export-size: 1048576") {
		t.Errorf("nbdinfo: %v\n%s", err, info)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop")
	}
	if !strings.Contains(out.String(), "stopped: 1 connections") {
		t.Errorf("summary: %q", out.String())
	}
}
