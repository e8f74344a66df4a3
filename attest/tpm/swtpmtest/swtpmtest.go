// Package swtpmtest starts real swtpm processes for tests: one TPM 2.0 per
// call, manufactured by swtpm_setup with an RSA and an ECC endorsement key
// and EK certificates issued by a per-test local CA (swtpm_localca).
//
// swtpm and swtpm_setup are found with internal/testenv.Tool, so a missing
// tool fails the test. Everything is removed with t.Cleanup.
package swtpmtest

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/google/go-tpm/legacy/tpm2"
)

// TPM is a running swtpm.
type TPM struct {
	// Dir holds the TPM's state, sockets and CA.
	Dir string
	// Socket is the command socket to pass to tpm.Open.
	Socket string
	// CA is the root of the local CA that issued the EK certificates.
	CA *x509.Certificate
	// Intermediate is the local CA's issuing certificate.
	Intermediate *x509.Certificate

	t     testing.TB
	swtpm string
	cmd   *exec.Cmd
	done  chan struct{}
	conn  io.ReadWriteCloser
}

// Start manufactures and starts a new swtpm. The TPM is started
// (TPM2_Startup(CLEAR)) and ready for commands.
func Start(t testing.TB) *TPM {
	t.Helper()
	setup := testenv.Tool(t, "swtpm_setup")
	localca := testenv.Tool(t, "swtpm_localca")
	s := &TPM{t: t, swtpm: testenv.Tool(t, "swtpm"), Dir: t.TempDir()}
	state, caDir := filepath.Join(s.Dir, "state"), filepath.Join(s.Dir, "ca")
	for _, d := range []string{state, caDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	localConf := filepath.Join(s.Dir, "localca.conf")
	writeFile(t, localConf, fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", caDir))
	opts := filepath.Join(s.Dir, "localca.options")
	writeFile(t, opts, "--platform-manufacturer Embassy\n--platform-version 1\n--platform-model test\n")
	setupConf := filepath.Join(s.Dir, "swtpm_setup.conf")
	writeFile(t, setupConf, fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\n", localca, localConf, opts))
	out, err := exec.Command(setup, "--tpm2", "--tpmstate", state, "--create-ek-cert",
		"--config", setupConf, "--pcr-banks", "sha256", "--overwrite").CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	s.CA = readCert(t, filepath.Join(caDir, "swtpm-localca-rootca-cert.pem"))
	s.Intermediate = readCert(t, filepath.Join(caDir, "issuercert.pem"))
	s.Socket = filepath.Join(s.Dir, "tpm.sock")
	s.start()
	t.Cleanup(s.stop)
	return s
}

// RW returns the connection to the TPM. swtpm serves one connection at a
// time, so all users share this one; Reboot replaces it and cleanup closes
// it. Callers must not close it.
func (s *TPM) RW() io.ReadWriter {
	s.t.Helper()
	if s.conn == nil {
		rw, err := tpm.Open(s.Socket)
		if err != nil {
			s.t.Fatal(err)
		}
		s.conn = rw
	}
	return s.conn
}

// Reboot stops the swtpm and starts it again on the same state, as a
// machine's orderly reboot would: PCRs and transient objects are reset,
// persistent objects, NV indexes and the seeds are kept. The TPM is shut
// down first (TPM2_Shutdown), as an operating system does, so many reboots
// do not count as unorderly shutdowns towards dictionary-attack lockout.
// The connection returned by RW before is dead afterwards; call RW again.
func (s *TPM) Reboot() {
	s.t.Helper()
	if err := tpm2.Shutdown(s.RW(), tpm2.StartupClear); err != nil {
		s.t.Fatalf("TPM2_Shutdown: %v", err)
	}
	s.stop()
	s.start()
}

func (s *TPM) start() {
	t := s.t
	t.Helper()
	os.Remove(s.Socket)
	ctrl := filepath.Join(s.Dir, "ctrl.sock")
	os.Remove(ctrl)
	cmd := exec.Command(s.swtpm, "socket", "--tpm2",
		"--server", "type=unixio,path="+s.Socket,
		"--ctrl", "type=unixio,path="+ctrl,
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+filepath.Join(s.Dir, "state"))
	log, err := os.Create(filepath.Join(s.Dir, "swtpm.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	// Kill swtpm with the test process, even when the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(s.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rw, err := tpm.Open(s.Socket)
		if err == nil {
			rw.Close()
			return
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(filepath.Join(s.Dir, "swtpm.log"))
			t.Fatalf("swtpm exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm socket %s not ready: %v", s.Socket, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *TPM) stop() {
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}
