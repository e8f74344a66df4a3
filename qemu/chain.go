package qemu

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/fleet"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
	"github.com/google/go-tpm/legacy/tpm2"
)

// GuestHost is the host's loopback as the guest sees it (QEMU user net).
const GuestHost = "10.0.2.2"

// TPM is a manufactured software TPM: its state directory (pass it as
// Config.TPMState) and the local CA that issued its EK certificate.
type TPM struct {
	StateDir string
	// CA and Intermediate issued the EK certificate.
	CA, Intermediate *x509.Certificate
	// EKCert is the DER EK certificate read from the TPM's NV.
	EKCert []byte
}

// ManufactureTPM creates a swtpm state under dir with an EK certificate
// from a local CA (swtpm_setup --create-ek-cert), as a TPM vendor would,
// and reads the EK certificate back.
func ManufactureTPM(ctx context.Context, dir string) (*TPM, error) {
	state, caDir := filepath.Join(dir, "state"), filepath.Join(dir, "ca")
	for _, d := range []string{state, caDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	localConf := filepath.Join(dir, "localca.conf")
	opts := filepath.Join(dir, "localca.options")
	setupConf := filepath.Join(dir, "swtpm_setup.conf")
	files := map[string]string{
		localConf: fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", caDir),
		opts:      "--platform-manufacturer Embassy\n--platform-version 1\n--platform-model qemu\n",
		setupConf: fmt.Sprintf("create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\n", localConf, opts),
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			return nil, err
		}
	}
	if out, err := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", state, "--create-ek-cert",
		"--config", setupConf, "--pcr-banks", "sha256", "--overwrite").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu: swtpm_setup: %w\n%s", err, out)
	}
	t := &TPM{StateDir: state}
	var err error
	if t.CA, err = pki.ReadCertFile(filepath.Join(caDir, "swtpm-localca-rootca-cert.pem")); err != nil {
		return nil, err
	}
	if t.Intermediate, err = pki.ReadCertFile(filepath.Join(caDir, "issuercert.pem")); err != nil {
		return nil, err
	}
	if t.EKCert, err = readEKCert(ctx, dir, state); err != nil {
		return nil, err
	}
	return t, nil
}

// readEKCert runs swtpm on state briefly and reads the EK certificate.
func readEKCert(ctx context.Context, dir, state string) ([]byte, error) {
	sock, ctrl := filepath.Join(dir, "ek.sock"), filepath.Join(dir, "ek.ctrl")
	cmd := exec.CommandContext(ctx, "swtpm", "socket", "--tpm2",
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+ctrl,
		"--flags", "not-need-init,startup-clear", "--tpmstate", "dir="+state)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: swtpm: %w", err)
	}
	defer func() {
		// SIGTERM lets swtpm store its state before the TPM is reused.
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rw, err := tpm.Open(sock)
		if err == nil {
			defer rw.Close()
			// QEMU is killed, not shut down, so every boot ends without
			// TPM2_Shutdown; the TPM counts that against its dictionary
			// attack protection and the attestation key (DA-protected)
			// ends up locked out after a few boots. Make the test TPM
			// forgive quickly: recovery after 1 s, many tries.
			if err := tpm2.DictionaryAttackParameters(rw, tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession},
				1000, 1, 1); err != nil {
				return nil, fmt.Errorf("qemu: setting the TPM's DA parameters: %w", err)
			}
			cert, err := agent.EKCertificate(rw)
			if err != nil || len(cert) == 0 {
				return nil, fmt.Errorf("qemu: reading EK certificate: %v", err)
			}
			return cert, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("qemu: swtpm socket: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Verifier is an in-process verifier (attest/verifier) with SQLite state,
// served over TLS on 127.0.0.1 with a certificate also valid for the
// guest's view of the host (10.0.2.2).
type Verifier struct {
	// DB is the verifier's database (enroll, publish, revoke, audit).
	DB *verifier.DB
	// GuestURL is the verifier's URL from inside the guest.
	GuestURL string
	// CAPEM is the CA the appliance pins for the verifier.
	CAPEM string
	// ReleaseKey signs release manifests (registered with the DB).
	ReleaseKey ed25519.PrivateKey

	// AdminURL is the admin API's base URL (docs/admin-api.md) when
	// VerifierOptions.Admin is set: the fleet page is AdminURL+"/fleet/",
	// the metrics AdminURL+"/metrics".
	AdminURL string
	// Operators is the operators' CA the admin API trusts (Admin only):
	// Operators.Issue(admin.IssueOptions(...)) makes an operator.
	Operators *pki.CA
	// ServerCAs verify the verifier's server certificate, on both APIs.
	ServerCAs *x509.CertPool

	srv, adminSrv *http.Server
	l             net.Listener
}

// VerifierOptions configure StartVerifier.
type VerifierOptions struct {
	// Dir holds verifier.db. Required.
	Dir string
	// Lease is the lease the verifier grants (default: the verifier's).
	Lease time.Duration
	// Logger receives the verifier's log (default: discarded).
	Logger *slog.Logger
	// Admin also serves the operators' admin API, with the fleet page and
	// the verifier's metrics, on a listener of its own on 127.0.0.1, as
	// embassy-verifier --admin-listen does, trusting a new operators' CA.
	Admin bool
}

// StartVerifier opens (or creates) the verifier database in o.Dir and
// serves the verifier on 127.0.0.1.
func StartVerifier(ctx context.Context, o VerifierOptions) (*Verifier, error) {
	db, err := verifier.OpenDB(ctx, filepath.Join(o.Dir, "verifier.db"))
	if err != nil {
		return nil, err
	}
	v := &Verifier{DB: db}
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	metrics := verifier.NewMetrics()
	s, err := verifier.NewServer(verifier.Options{DB: db, Lease: o.Lease, Logger: logger, Metrics: metrics})
	if err != nil {
		return nil, err
	}
	caPEM, leaf, err := serverPKI(GuestHost, "127.0.0.1")
	if err != nil {
		return nil, err
	}
	cert := leaf.TLSCertificate()
	v.CAPEM = caPEM
	if v.l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	v.GuestURL = "https://" + net.JoinHostPort(GuestHost, strconv.Itoa(v.l.Addr().(*net.TCPAddr).Port))
	v.srv = &http.Server{Handler: s, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	go v.srv.ServeTLS(v.l, "", "")
	if v.ServerCAs = x509.NewCertPool(); !v.ServerCAs.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("qemu: verifier CA PEM")
	}
	if o.Admin {
		if err := v.serveAdmin(metrics, cert, logger); err != nil {
			return nil, err
		}
	}
	if v.ReleaseKey, err = trustHarnessKey(ctx, db); err != nil {
		return nil, err
	}
	ok = true
	return v, nil
}

// serveAdmin serves the admin API with the fleet page and metrics on
// 127.0.0.1, trusting a new operators' CA.
func (v *Verifier) serveAdmin(metrics *verifier.Metrics, cert tls.Certificate, logger *slog.Logger) error {
	ops, err := pki.NewCA("Embassy harness operators", 30*24*time.Hour)
	if err != nil {
		return err
	}
	h, err := admin.NewHandler(admin.Options{DB: v.DB, Operators: ops.Pool(), Logger: logger,
		Fleet: fleet.NewHandler(fleet.Options{Source: v.DB, Logger: logger}), Metrics: metrics.Handler()})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	v.Operators, v.AdminURL = ops, "https://"+l.Addr().String()
	v.adminSrv = &http.Server{Handler: h, TLSConfig: admin.TLSConfig(cert, ops.Pool()), ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	go v.adminSrv.ServeTLS(l, "", "")
	return nil
}

// Close stops serving and closes the database.
func (v *Verifier) Close() {
	if v.srv != nil {
		v.srv.Close()
	}
	if v.adminSrv != nil {
		v.adminSrv.Close()
	}
	if v.l != nil {
		v.l.Close()
	}
	if v.DB != nil {
		v.DB.Close()
	}
}

// Enroll registers an appliance by its TPM's EK certificate (trusting the
// TPM's manufacturer CA); the verifier deals itself a 1-of-1 share.
func (v *Verifier) Enroll(ctx context.Context, id string, t *TPM) error {
	return v.EnrollShare(ctx, id, t, nil)
}

// Publish signs and publishes a release expecting pcrs.
func (v *Verifier) Publish(ctx context.Context, name string, initrd []byte, pcrs map[int][]byte) error {
	sum := sha256.Sum256(initrd)
	m := &release.Manifest{Version: release.Version, Name: "embassy-appliance", Release: name, Created: time.Now().UTC(),
		Components: []release.Component{{Name: "initrd", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(initrd))}}}
	for i, val := range pcrs {
		m.SetPCR(uint32(i), val)
	}
	env, err := release.NewEnvelope(m)
	if err != nil {
		return err
	}
	env.Sign(v.ReleaseKey)
	_, err = v.DB.PublishRelease(ctx, env, "harness")
	return err
}

// PublishEnvelope publishes a signed release envelope (e.g. an images
// manifest signed by release officers) and returns its digest. The
// officers' keys must have been added with AddReleaseOfficers.
func (v *Verifier) PublishEnvelope(ctx context.Context, env *release.Envelope) (string, error) {
	rel, err := v.DB.PublishRelease(ctx, env, "harness")
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(rel.Digest[:]), nil
}

// AddReleaseOfficers trusts the officers' release keys and requires k
// valid signatures on every release (k of n). The harness's own
// ReleaseKey stays trusted but alone no longer meets a k above 1.
func (v *Verifier) AddReleaseOfficers(ctx context.Context, k int, officers ...ed25519.PublicKey) error {
	for i, pub := range officers {
		if err := v.DB.AddReleaseKey(ctx, pub, fmt.Sprintf("officer %d", i+1)); err != nil {
			return err
		}
	}
	return v.DB.SetReleaseThreshold(ctx, k, "harness")
}

// reportedIdentity matches the appliance's console line after its first
// heartbeat, which reported the server identity to the verifier.
var reportedIdentity = regexp.MustCompile(`msg="server identity reported to the verifier"`)

// PinServerIdentity waits up to timeout (console lines from index from on)
// for the appliance id running on m to report its NBD server identity in a
// quoted heartbeat, checks that the identity the verifier recorded is the
// one the console shows, and writes the recorded one to dir/ca-cert.pem,
// where libnbd clients (tls-certificates=dir) look for their CA: what the
// home state's clients pin. It returns the identity's fingerprint.
func (v *Verifier) PinServerIdentity(ctx context.Context, m *Machine, id string, from int, dir string, timeout time.Duration) (string, error) {
	if _, err := m.WaitForLineFrom(from, reportedIdentity, timeout); err != nil {
		return "", err
	}
	a, err := v.DB.Appliance(ctx, id)
	if err != nil {
		return "", err
	}
	if a.ServerCert == nil {
		return "", fmt.Errorf("%w: %s has reported none to the verifier", ErrNoIdentity, id)
	}
	if _, consoleFP, err := m.ServerIdentity(from); err != nil || consoleFP != a.ServerCertSHA256 {
		return "", fmt.Errorf("qemu: the console shows server identity %s (%v), the verifier recorded %s", consoleFP, err, a.ServerCertSHA256)
	}
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.ServerCert})
	if err := os.WriteFile(filepath.Join(dir, "ca-cert.pem"), pemCert, 0o600); err != nil {
		return "", err
	}
	return a.ServerCertSHA256, nil
}

// Audit returns the audit records about appliance id.
func (v *Verifier) Audit(ctx context.Context, id string) ([]verifier.AuditRecord, error) {
	return v.DB.AuditRecords(ctx, verifier.AuditFilter{Appliance: id})
}

// ClientPKI writes a client CA and a client certificate for identity into
// dir, in libnbd's tls-certificates layout (client-cert.pem,
// client-key.pem), and returns the CA certificate PEM.
func ClientPKI(dir, identity string) (string, error) {
	ca, err := pki.NewCA("Embassy home clients CA", 30*24*time.Hour)
	if err != nil {
		return "", err
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: identity, Usage: pki.Client, Validity: 30 * 24 * time.Hour})
	if err != nil {
		return "", err
	}
	if err := leaf.WriteFiles(dir, "client"); err != nil {
		return "", err
	}
	return string(ca.CertPEM()), nil
}

// serverPKI makes a CA and a server certificate for hosts.
func serverPKI(hosts ...string) (string, *pki.Leaf, error) {
	ca, err := pki.NewCA("Embassy verifier CA", 30*24*time.Hour)
	if err != nil {
		return "", nil, err
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: "verifier", Usage: pki.Server, Hosts: hosts, Validity: 30 * 24 * time.Hour})
	if err != nil {
		return "", nil, err
	}
	return string(ca.CertPEM()), leaf, nil
}

// ErrNoIdentity reports no NBD server identity (on the console or at the
// verifier).
var ErrNoIdentity = errors.New("qemu: no NBD server identity")

var identityRE = regexp.MustCompile(`msg="nbd server identity" sha256=([0-9a-f]{64}) cert="?([A-Za-z0-9+/=]+)"?`)

// ServerIdentity returns the PEM certificate and fingerprint of the NBD
// server identity the appliance last printed on its console (from line
// index from on). The console runs in the host country: clients pin the
// identity the verifier recorded (Verifier.PinServerIdentity); this one is
// for comparison.
func (m *Machine) ServerIdentity(from int) (pemCert []byte, fingerprint string, err error) {
	lines := m.Lines()
	for i := len(lines) - 1; i >= from; i-- {
		sm := identityRE.FindStringSubmatch(lines[i].Text)
		if sm == nil {
			continue
		}
		der, err := base64.StdEncoding.DecodeString(sm[2])
		if err != nil {
			return nil, "", fmt.Errorf("qemu: identity certificate: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), sm[1], nil
	}
	return nil, "", ErrNoIdentity
}

var pcrRE = regexp.MustCompile(`msg=pcr when="after measuring" index=(\d+) sha256=([0-9a-f]{64})`)

// MeasuredPCRs returns the PCR values the appliance printed after
// measuring itself (before attesting).
func (m *Machine) MeasuredPCRs() map[int][]byte {
	out := map[int][]byte{}
	for _, l := range m.Lines() {
		if sm := pcrRE.FindStringSubmatch(l.Text); sm != nil {
			i, _ := strconv.Atoi(sm[1])
			out[i], _ = hex.DecodeString(sm[2])
		}
	}
	return out
}
