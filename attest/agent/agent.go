// Package agent is the appliance's side of Embassy's remote attestation:
// it binds the TPM's attestation key to the enrolled EK at each of the
// configured verifiers, attests the boot to all of them concurrently,
// imports each granted key share with the EK, and as soon as k shares of
// one provisioning combine (keys.Combine) it joins the remote secret with
// the TPM-sealed local share into the KEK and extends the phase PCR. While
// the appliance serves, heartbeats renew the verifiers' leases; it may
// serve while at least k of them are valid.
//
// A boot, in order (errors elided):
//
//	rw, _ := tpm.Open(tpm.DefaultDevice)
//	var mlog measure.Log
//	mlog.Measure(rw, measure.NewEvent("binary", "/bin/embassy-appliance", self))
//	mlog.Measure(rw, measure.NewEvent("config", "/etc/embassy/appliance.json", cfg))
//	a, _ := agent.New(agent.Config{
//		Verifiers: []agent.Endpoint{
//			{Name: "tallinn", URL: "https://tallinn.example:8443", RootCAs: tallinnCA},
//			{Name: "tartu", URL: "https://tartu.example:8443", RootCAs: tartuCA},
//			{Name: "narva", URL: "https://narva.example:8443", RootCAs: narvaCA},
//		},
//		Threshold:   2,
//		ApplianceID: "tallinn-lu-01",
//		TPM:         rw,
//		Log:         &mlog,
//	})
//	defer a.Close()
//	_, _ = a.Enroll(ctx) // binds the AK wherever it is not yet
//	u, err := a.Unlock(ctx, storeEpoch, sealedFromHeader) // nil on a blank disk
//	switch {
//	case errors.Is(err, agent.ErrRevoked), errors.Is(err, agent.ErrRefused):
//		// refusals leave fewer than k verifiers: zeroize and stop
//	}
//	// write u.Sealed into the disk header; format (u.Provision) or open
//	// the store with u.KEK and serve; before u.Lease runs out:
//	r, err := a.Heartbeat(ctx, storeEpoch, serverCertDER)
//	// add r.Resealed to the header: an upgrade to a release published
//	// since the boot still unlocks the store.
//
// A single verifier is the 1-of-1 case of the same code.
package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/google/go-tpm-tools/client"
)

// Errors callers act on.
var (
	// ErrRefused: verifiers refused the attestation, so that fewer than k
	// can grant or renew. The error lists each verifier's answer; the
	// refusals are *RefusedError naming the check and PCR. The appliance
	// must not serve (and, when running, must zeroize).
	ErrRefused = errors.New("agent: attestation refused")
	// ErrRevoked: an operator revoked this appliance at a verifier whose
	// refusal leaves fewer than k. Zeroize.
	ErrRevoked = errors.New("agent: appliance revoked")
	// ErrNotEnrolled: a verifier does not know this appliance id.
	ErrNotEnrolled = errors.New("agent: appliance not enrolled")
	// ErrAlreadyEnrolled: a verifier already trusts an AK for this
	// appliance; nothing to do there.
	ErrAlreadyEnrolled = errors.New("agent: attestation key already enrolled")
)

// RefusedError details one verifier's refusal or revocation.
type RefusedError struct {
	// Code is the protocol error code (protocol.CodeRefused, ...).
	Code string
	// Check names the failed check ("nonce", "quote", "eventlog",
	// "appliance_log", "baseline", "release", "phase", "epoch", "ak",
	// "share", ...).
	Check string
	// PCR is the PCR that differed, or -1.
	PCR int
	// Detail is the verifier's explanation.
	Detail string
	// AuditSeq is the verifier's audit record of the refusal (0 if none).
	AuditSeq int64
}

func (e *RefusedError) Error() string {
	s := "verifier: " + e.Code
	if e.Check != "" {
		s += " (check " + e.Check
		if e.PCR >= 0 {
			s += fmt.Sprintf(", PCR %d", e.PCR)
		}
		s += ")"
	}
	return s + ": " + e.Detail
}

// Is maps the protocol code to the package's sentinel errors.
func (e *RefusedError) Is(target error) bool {
	switch target {
	case ErrRefused:
		return e.Code == protocol.CodeRefused
	case ErrRevoked:
		return e.Code == protocol.CodeRevoked
	case ErrNotEnrolled:
		return e.Code == protocol.CodeNotEnrolled
	case ErrAlreadyEnrolled:
		return e.Code == protocol.CodeRefused && e.Check == "ak" && strings.Contains(e.Detail, "already")
	}
	return false
}

// Endpoint is one verifier.
type Endpoint struct {
	// Name identifies the verifier in answers, logs and errors
	// ("tallinn"). Unique within a Config.
	Name string
	// URL is the verifier's base URL ("https://host:port").
	URL string
	// RootCAs pins the CA(s) that issued this verifier's certificate. The
	// system roots are never used. Required unless HTTPClient is set.
	RootCAs *x509.CertPool
	// HTTPClient overrides the HTTP client (tests). Its transport must
	// still pin the verifier's CA.
	HTTPClient *http.Client
}

// DefaultRequestTimeout bounds one verifier's answer to one attestation.
const DefaultRequestTimeout = 15 * time.Second

// Config configures an Agent.
type Config struct {
	// Verifiers are the verifiers holding the shares of this appliance's
	// remote secret, 1 to keys.MaxShares of them.
	Verifiers []Endpoint
	// Threshold is k: how many verifiers must grant before the appliance
	// unlocks, and how many valid leases it needs to keep serving. 0
	// means 1 when there is one verifier; otherwise 1 <= k <= n.
	Threshold int
	// ApplianceID is the id the operators enrolled.
	ApplianceID string
	// TPM is the appliance's TPM (tpm.Open). Required. The Agent issues
	// one TPM operation at a time.
	TPM io.ReadWriter
	// EventLog returns the firmware's TCG event log. Nil reads the
	// kernel's (/sys/kernel/security/tpm0/binary_bios_measurements).
	EventLog func() ([]byte, error)
	// Log is the appliance's measurement log of PCR 15. Required.
	Log *measure.Log
	// RequestTimeout bounds each verifier's answer (nonce, quote and
	// decision); 0 means DefaultRequestTimeout. A verifier that does not
	// answer in time counts as unreachable for that round.
	RequestTimeout time.Duration
}

// Agent talks to the verifiers for one appliance. Its methods are safe for
// concurrent use.
type Agent struct {
	cfg       Config
	k         int
	verifiers []*verifierClient
	tpmMu     sync.Mutex // serialises TPM use across verifiers

	mu       sync.Mutex           // guards what follows
	leases   map[string]time.Time // verifier name -> its lease's end
	enrolled map[string]bool      // verifiers whose AK is bound
	local    []byte               // the local share, from Unlock to Close
	sealedTo map[string]string    // release label -> seal target sealed to this boot
}

// New returns an Agent.
func New(cfg Config) (*Agent, error) {
	if cfg.TPM == nil || cfg.Log == nil || !protocol.ValidID(cfg.ApplianceID) {
		return nil, errors.New("agent: Config needs TPM, Log and a valid ApplianceID")
	}
	n := len(cfg.Verifiers)
	if n < 1 || n > keys.MaxShares {
		return nil, fmt.Errorf("agent: Config needs 1 to %d verifiers, not %d", keys.MaxShares, n)
	}
	k := cfg.Threshold
	if k == 0 && n == 1 {
		k = 1
	}
	if k < 1 || k > n {
		return nil, fmt.Errorf("agent: threshold %d of %d verifiers", cfg.Threshold, n)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.EventLog == nil {
		cfg.EventLog = func() ([]byte, error) { return client.GetEventLog(cfg.TPM) }
	}
	a := &Agent{cfg: cfg, k: k, leases: map[string]time.Time{}, enrolled: map[string]bool{}, sealedTo: map[string]string{}}
	seen := map[string]bool{}
	for _, e := range cfg.Verifiers {
		if e.Name == "" || seen[e.Name] {
			return nil, fmt.Errorf("agent: verifier names must be unique and not empty (%q)", e.Name)
		}
		seen[e.Name] = true
		vc, err := newVerifierClient(e)
		if err != nil {
			return nil, err
		}
		a.verifiers = append(a.verifiers, vc)
	}
	return a, nil
}

// Close zeroizes the local share the agent kept to seal it to releases
// published later. The agent cannot reseal after Close.
func (a *Agent) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.local)
	a.local = nil
}

// newVerifierClient makes the HTTP client for one endpoint.
func newVerifierClient(e Endpoint) (*verifierClient, error) {
	if e.URL == "" {
		return nil, fmt.Errorf("agent: verifier %s has no URL", e.Name)
	}
	hc := e.HTTPClient
	if hc == nil {
		if e.RootCAs == nil {
			return nil, fmt.Errorf("agent: verifier %s: RootCAs must pin the verifier's CA", e.Name)
		}
		hc = &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: e.RootCAs, MinVersion: tls.VersionTLS13},
				ForceAttemptHTTP2: true,
			},
		}
	}
	return &verifierClient{name: e.Name, url: strings.TrimSuffix(e.URL, "/"), http: hc}, nil
}

// EKCertificate returns the TPM's RSA EK certificate (DER) from NV, for the
// operator to enroll, or nil when the TPM holds none.
func EKCertificate(rw io.ReadWriter) ([]byte, error) {
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		return nil, fmt.Errorf("agent: EK: %w", err)
	}
	defer ek.Close()
	return ek.CertDERBytes(), nil
}

// EKPublic returns the TPM's RSA EK public key (PKIX DER), for enrollment
// without a certificate.
func EKPublic(rw io.ReadWriter) ([]byte, error) {
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		return nil, fmt.Errorf("agent: EK: %w", err)
	}
	defer ek.Close()
	return x509.MarshalPKIXPublicKey(ek.PublicKey())
}

// phaseEvent is what the phase PCR is extended with.
var phaseEvent = measure.NewEvent("phase", "unlocked", nil)

// ExtendPhase extends the phase PCR, ending this boot's ability to unseal
// the local share or import a remote share. Unlock calls it; call it
// yourself to give up unlocking (e.g. after a refusal).
func ExtendPhase(rw io.ReadWriter) error {
	d, err := phaseEvent.Digest()
	if err != nil {
		return err
	}
	return tpm.Extend(rw, tpm.PCRPhase, d)
}
