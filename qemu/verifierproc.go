package qemu

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dataembassy/embassy/attest/verifier"
)

// VerifierCmdPackage is the verifier's main package, built by
// BuildVerifier.
const VerifierCmdPackage = "github.com/dataembassy/embassy/cmd/embassy-verifier"

// ErrVerifierDown reports a verifier process that is not running (killed,
// or it exited).
var ErrVerifierDown = errors.New("qemu: verifier process not running")

// BuildVerifier compiles cmd/embassy-verifier from the module at
// moduleDir into outDir and returns the binary's path.
func BuildVerifier(ctx context.Context, moduleDir, outDir string) (string, error) {
	bin := filepath.Join(outDir, "embassy-verifier")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, VerifierCmdPackage)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("qemu: building the verifier: %w\n%s", err, out)
	}
	return bin, nil
}

// ProcessOptions configure StartVerifierProcess.
type ProcessOptions struct {
	// Binary is the embassy-verifier binary (BuildVerifier). Required.
	Binary string
	// Dir holds the verifier's database (verifier.db), its TLS files and
	// its log (verifier.log). Required.
	Dir string
	// Name names the verifier in appliance configurations and logs
	// (default "verifier").
	Name string
	// Lease is the lease the verifier grants (--lease; default the
	// verifier's).
	Lease time.Duration
}

// VerifierProcess is a real embassy-verifier process listening on
// 127.0.0.1 (the guest reaches it at GuestHost through QEMU's user
// network) with its own SQLite database, which the embedded Verifier's DB
// also opens (WAL mode with a busy timeout: the harness enrolls and
// publishes beside the running server). Kill and Restart stop it hard and
// bring it back on the same port and database.
type VerifierProcess struct {
	*Verifier
	// Name is the verifier's name in appliance configurations.
	Name string
	// Addr is host:port on the host's loopback.
	Addr string

	opts     ProcessOptions
	certFile string
	keyFile  string
	roots    *x509.CertPool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartVerifierProcess creates the verifier's TLS files and database in
// o.Dir (a server certificate valid for 127.0.0.1 and GuestHost), trusts a
// fresh harness release key in it and starts the process.
func StartVerifierProcess(ctx context.Context, o ProcessOptions) (*VerifierProcess, error) {
	if o.Binary == "" || o.Dir == "" {
		return nil, errors.New("qemu: ProcessOptions need Binary and Dir")
	}
	if o.Name == "" {
		o.Name = "verifier"
	}
	caPEM, leaf, err := serverPKI(GuestHost, "127.0.0.1")
	if err != nil {
		return nil, err
	}
	if err := leaf.WriteFiles(o.Dir, "server"); err != nil {
		return nil, err
	}
	// The database exists before the process starts, so the harness's
	// handle and the server's migrate nothing concurrently.
	db, err := verifier.OpenDB(ctx, filepath.Join(o.Dir, "verifier.db"))
	if err != nil {
		return nil, err
	}
	p := &VerifierProcess{
		Verifier: &Verifier{DB: db, CAPEM: caPEM},
		Name:     o.Name, opts: o,
		certFile: filepath.Join(o.Dir, "server-cert.pem"),
		keyFile:  filepath.Join(o.Dir, "server-key.pem"),
		roots:    x509.NewCertPool(),
	}
	p.roots.AppendCertsFromPEM([]byte(caPEM))
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	if p.ReleaseKey, err = trustHarnessKey(ctx, db); err != nil {
		return nil, err
	}
	if p.Addr, err = freeLoopbackAddr(); err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(p.Addr)
	p.GuestURL = "https://" + net.JoinHostPort(GuestHost, port)
	if err := p.Restart(ctx); err != nil {
		return nil, err
	}
	ok = true
	return p, nil
}

// trustHarnessKey makes a release signing key and trusts it in db.
func trustHarnessKey(ctx context.Context, db *verifier.DB) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("qemu: release key: %w", err)
	}
	if err := db.AddReleaseKey(ctx, key.Public().(ed25519.PublicKey), "harness"); err != nil {
		return nil, err
	}
	return key, nil
}

// freeLoopbackAddr picks a free TCP port on 127.0.0.1. The verifier binds
// it itself (and again after a restart), so there is a short window in
// which another process could take it: good enough for tests.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("qemu: picking a port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Restart starts the verifier process if it is not running and waits
// until it answers TLS on its address.
func (p *VerifierProcess) Restart(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(p.opts.Dir, "verifier.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("qemu: verifier log: %w", err)
	}
	args := []string{"--db", filepath.Join(p.opts.Dir, "verifier.db"), "--listen", p.Addr,
		"--cert", p.certFile, "--key", p.keyFile}
	if p.opts.Lease > 0 {
		args = append(args, "--lease", p.opts.Lease.String())
	}
	cmd := exec.Command(p.opts.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("qemu: starting verifier %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-done:
			p.cmd = nil
			return fmt.Errorf("%w: %s exited at start (see %s)", ErrVerifierDown, p.Name, p.LogPath())
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.killLocked()
			return fmt.Errorf("qemu: verifier %s not answering: %w", p.Name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping completes a TLS handshake with the verifier, checking its
// certificate against the CA appliances pin.
func (p *VerifierProcess) ping(ctx context.Context) error {
	d := tls.Dialer{Config: &tls.Config{RootCAs: p.roots, ServerName: "127.0.0.1"}}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// Client returns an HTTPS client that trusts the verifier's CA, and the
// verifier's URL on the host.
func (p *VerifierProcess) Client() (*http.Client, string) {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.roots}}},
		"https://" + p.Addr
}

// Running reports whether the process is up.
func (p *VerifierProcess) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// Kill stops the process with SIGKILL, as a power cut or a crash would,
// and waits for it to exit. The database stays for Restart.
func (p *VerifierProcess) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%w: %s", ErrVerifierDown, p.Name)
	}
	p.killLocked()
	return nil
}

func (p *VerifierProcess) killLocked() {
	if p.cmd == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// LogPath is the file receiving the process's log.
func (p *VerifierProcess) LogPath() string { return filepath.Join(p.opts.Dir, "verifier.log") }

// Log returns the process's log so far.
func (p *VerifierProcess) Log() (string, error) {
	b, err := os.ReadFile(p.LogPath())
	return string(b), err
}

// Port is the verifier's TCP port.
func (p *VerifierProcess) Port() int {
	_, port, _ := net.SplitHostPort(p.Addr)
	n, _ := strconv.Atoi(port)
	return n
}

// Close kills the process and closes the harness's database handle.
func (p *VerifierProcess) Close() {
	p.mu.Lock()
	p.killLocked()
	p.mu.Unlock()
	p.Verifier.Close()
}
