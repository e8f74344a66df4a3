// Package agent is the appliance's side of Embassy's remote attestation:
// it binds the TPM's attestation key to the enrolled EK, attests the boot
// to the verifier, imports the granted remote key share with the EK,
// combines it with the TPM-sealed local share into the KEK, extends the
// phase PCR, and renews the lease with heartbeats.
//
// A boot, in order (errors elided):
//
//	rw, _ := tpm.Open(tpm.DefaultDevice)
//	var mlog measure.Log
//	mlog.Measure(rw, measure.NewEvent("binary", "/bin/embassy-appliance", self))
//	mlog.Measure(rw, measure.NewEvent("config", "/etc/embassy/appliance.json", cfg))
//	a, _ := agent.New(agent.Config{
//		VerifierURL: "https://verifier.example:8443",
//		ApplianceID: "tallinn-lu-01",
//		RootCAs:     pinnedVerifierCA,
//		TPM:         rw,
//		Log:         &mlog,
//	})
//	_ = a.Enroll(ctx) // first boot only; ErrAlreadyEnrolled afterwards is fine
//	u, err := a.Unlock(ctx, storeEpoch, sealedLocalShare) // nil blob on first boot
//	switch {
//	case errors.Is(err, agent.ErrRevoked), errors.Is(err, agent.ErrRefused):
//		// zeroize and stop
//	}
//	if u.Provision {
//		// format the store with u.KEK; keep u.SealedLocal next to it,
//		// keyed by u.Release
//	}
//	// keep u.Resealed too (the local share sealed for other published
//	// releases) and unlock later boots with a.UnlockSealed(ctx, epoch, all)
//	// so that an upgrade to a published release still unlocks.
//	// open the store with u.KEK, serve; before u.Lease runs out:
//	lease, err := a.Heartbeat(ctx, storeEpoch, serverCertDER)
//
// Unlock extends the phase PCR (tpm.PCRPhase) before it returns, so neither
// the local share nor the remote share can be recovered again this boot.
package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/protobuf/proto"
)

// Errors callers act on.
var (
	// ErrRefused: the verifier refused the attestation. The error is a
	// *RefusedError naming the check and PCR. The appliance must not
	// serve (and, when running, must zeroize).
	ErrRefused = errors.New("agent: attestation refused")
	// ErrRevoked: the operator revoked this appliance. Zeroize.
	ErrRevoked = errors.New("agent: appliance revoked")
	// ErrNotEnrolled: the verifier does not know this appliance id.
	ErrNotEnrolled = errors.New("agent: appliance not enrolled")
	// ErrAlreadyEnrolled: the AK is already bound; nothing to do.
	ErrAlreadyEnrolled = errors.New("agent: attestation key already enrolled")
)

// RefusedError details a refusal or revocation by the verifier.
type RefusedError struct {
	// Code is the protocol error code (protocol.CodeRefused, ...).
	Code string
	// Check names the failed check ("nonce", "quote", "eventlog",
	// "appliance_log", "baseline", "release", "phase", "epoch", "ak", ...).
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

// Config configures an Agent.
type Config struct {
	// VerifierURL is the verifier's base URL ("https://host:port").
	VerifierURL string
	// ApplianceID is the id the operator enrolled.
	ApplianceID string
	// RootCAs pins the CA(s) that issued the verifier's certificate. The
	// system roots are never used. Required unless HTTPClient is set.
	RootCAs *x509.CertPool
	// HTTPClient overrides the HTTP client (tests). Its transport must
	// still pin the verifier's CA.
	HTTPClient *http.Client
	// TPM is the appliance's TPM (tpm.Open). Required. The Agent issues
	// one TPM operation at a time.
	TPM io.ReadWriter
	// EventLog returns the firmware's TCG event log. Nil reads the
	// kernel's (/sys/kernel/security/tpm0/binary_bios_measurements).
	EventLog func() ([]byte, error)
	// Log is the appliance's measurement log of PCR 15. Required.
	Log *measure.Log
}

// Agent talks to the verifier for one appliance.
type Agent struct {
	cfg  Config
	http *http.Client
	mu   sync.Mutex // serialises TPM use
}

// New returns an Agent.
func New(cfg Config) (*Agent, error) {
	if cfg.TPM == nil || cfg.Log == nil || cfg.VerifierURL == "" || !protocol.ValidID(cfg.ApplianceID) {
		return nil, errors.New("agent: Config needs TPM, Log, VerifierURL and a valid ApplianceID")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		if cfg.RootCAs == nil {
			return nil, errors.New("agent: Config.RootCAs must pin the verifier's CA")
		}
		hc = &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS13},
				ForceAttemptHTTP2: true,
			},
		}
	}
	if cfg.EventLog == nil {
		cfg.EventLog = func() ([]byte, error) { return client.GetEventLog(cfg.TPM) }
	}
	return &Agent{cfg: cfg, http: hc}, nil
}

// post sends a request and decodes the response or the error body.
func (a *Agent) post(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(a.cfg.VerifierURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := a.http.Do(hr)
	if err != nil {
		return fmt.Errorf("agent: %s: %w", path, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		var e protocol.ErrorResponse
		if err := protocol.Decode(res.Body, &e); err != nil {
			return fmt.Errorf("agent: %s: HTTP %d with undecodable body: %w", path, res.StatusCode, err)
		}
		re := &RefusedError{Code: e.Code, Check: e.Check, PCR: -1, Detail: e.Detail, AuditSeq: e.AuditSeq}
		if e.PCR != nil {
			re.PCR = *e.PCR
		}
		return re
	}
	if err := protocol.Decode(res.Body, resp); err != nil {
		return fmt.Errorf("agent: %s: %w", path, err)
	}
	return nil
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

// Enroll binds this TPM's attestation key to the enrolled EK: the verifier
// encrypts a challenge to the EK for the AK's name (MakeCredential), the TPM
// recovers it (ActivateCredential) only if the AK is resident next to that
// EK, and the proof plus a quote (whose PCRs become the firmware baseline)
// complete enrollment. It returns ErrAlreadyEnrolled when the verifier
// already trusts an AK for this appliance.
func (a *Agent) Enroll(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	rw := a.cfg.TPM
	ak, err := client.AttestationKeyRSA(rw)
	if err != nil {
		return fmt.Errorf("agent: AK: %w", err)
	}
	defer ak.Close()
	akPub, err := ak.PublicArea().Encode()
	if err != nil {
		return err
	}
	var ch protocol.EnrollChallengeResponse
	if err := a.post(ctx, protocol.PathEnrollChallenge, &protocol.EnrollChallengeRequest{ApplianceID: a.cfg.ApplianceID, AKPublic: akPub}, &ch); err != nil {
		return err
	}
	secret, err := activate(rw, ak, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return err
	}
	att, err := a.attestation(ak, protocol.EnrollQuoteData(ch.Session, secret))
	if err != nil {
		return err
	}
	var done protocol.EnrollActivateResponse
	return a.post(ctx, protocol.PathEnrollActivate, &protocol.EnrollActivateRequest{
		ApplianceID: a.cfg.ApplianceID, Session: ch.Session, Secret: secret, Attestation: att}, &done)
}

// activate runs TPM2_ActivateCredential with the AK and the EK.
func activate(rw io.ReadWriter, ak *client.Key, blob, encSecret []byte) ([]byte, error) {
	if len(blob) < 2 || len(encSecret) < 2 {
		return nil, errors.New("agent: malformed credential challenge")
	}
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		return nil, fmt.Errorf("agent: EK: %w", err)
	}
	defer ek.Close()
	sess, err := client.NewEKSession(rw)
	if err != nil {
		return nil, fmt.Errorf("agent: EK session: %w", err)
	}
	defer sess.Close()
	ekAuth, err := sess.Auth()
	if err != nil {
		return nil, fmt.Errorf("agent: EK session: %w", err)
	}
	akAuth := tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession}
	// The challenge carries TPM2B size prefixes; the command adds its own.
	secret, err := tpm2.ActivateCredentialUsingAuth(rw, []tpm2.AuthCommand{akAuth, ekAuth}, ak.Handle(), ek.Handle(), blob[2:], encSecret[2:])
	if err != nil {
		return nil, fmt.Errorf("agent: activate credential: %w", err)
	}
	return secret, nil
}

// attestation quotes all PCRs with ak over extra and attaches the firmware
// event log.
func (a *Agent) attestation(ak *client.Key, extra []byte) ([]byte, error) {
	evlog, err := a.cfg.EventLog()
	if err != nil {
		return nil, fmt.Errorf("agent: firmware event log: %w", err)
	}
	if evlog == nil {
		evlog = []byte{}
	}
	att, err := ak.Attest(client.AttestOpts{Nonce: extra, TCGEventLog: evlog, SkipTeeAttestation: true})
	if err != nil {
		return nil, fmt.Errorf("agent: quote: %w", err)
	}
	return proto.Marshal(att)
}

// attest fetches a nonce and presents a quote for purpose.
func (a *Agent) attest(ctx context.Context, purpose protocol.Purpose, epoch uint64, serverCert []byte) (*protocol.AttestResponse, error) {
	var n protocol.NonceResponse
	if err := a.post(ctx, protocol.PathNonce, &protocol.NonceRequest{ApplianceID: a.cfg.ApplianceID}, &n); err != nil {
		return nil, err
	}
	logBytes, err := a.cfg.Log.Marshal()
	if err != nil {
		return nil, err
	}
	ak, err := client.AttestationKeyRSA(a.cfg.TPM)
	if err != nil {
		return nil, fmt.Errorf("agent: AK: %w", err)
	}
	att, err := a.attestation(ak, protocol.QuoteData(n.Nonce, a.cfg.ApplianceID, purpose, epoch, serverCert))
	ak.Close()
	if err != nil {
		return nil, err
	}
	var resp protocol.AttestResponse
	err = a.post(ctx, protocol.PathAttest, &protocol.AttestRequest{
		ApplianceID: a.cfg.ApplianceID, Purpose: purpose, Nonce: n.Nonce, StoreEpoch: epoch,
		Attestation: att, ApplianceLog: logBytes, ServerCert: serverCert}, &resp)
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// Unlocked is the result of a successful Unlock.
type Unlocked struct {
	// KEK is the key-encryption key (keys.ShareSize bytes). Zeroize it
	// when done.
	KEK []byte
	// Provision is true when the verifier has never seen a store from this
	// appliance: create (format) the store with KEK.
	Provision bool
	// SealedLocal is the new sealed local share when Provision is true;
	// store it next to the store (it is not secret). Nil otherwise.
	SealedLocal []byte
	// Lease is how long the appliance may serve before Heartbeat.
	Lease time.Duration
	// Release names the release the verifier matched.
	Release string
	// Resealed holds the local share sealed for each other published
	// release (release name -> blob), made while the share was in hand:
	// keep them with SealedLocal (keyed by Release) and pass them all to
	// UnlockSealed, so the appliance still unlocks after an upgrade.
	Resealed map[string][]byte
}

// Unlock attests the boot (purpose unlock, reporting the store's epoch),
// imports the remote share with the EK, unseals the local share from
// sealedLocal (or, when the verifier says to provision, makes and seals a
// new one), derives the KEK, and extends the phase PCR. After Unlock, in
// this boot, the TPM gives up neither share again — even on error past
// the verifier's answer, the phase PCR is extended.
func (a *Agent) Unlock(ctx context.Context, epoch uint64, sealedLocal []byte) (*Unlocked, error) {
	return a.unlock(ctx, epoch, func(string) []byte { return sealedLocal })
}

// UnlockSealed is Unlock with the local share sealed for several releases
// (release name -> blob, as returned in Unlocked.SealedLocal/Release and
// Unlocked.Resealed): it unseals the blob for the release the verifier
// matched this boot.
func (a *Agent) UnlockSealed(ctx context.Context, epoch uint64, sealed map[string][]byte) (*Unlocked, error) {
	return a.unlock(ctx, epoch, func(rel string) []byte { return sealed[rel] })
}

func (a *Agent) unlock(ctx context.Context, epoch uint64, sealedFor func(release string) []byte) (*Unlocked, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	resp, err := a.attest(ctx, protocol.PurposeUnlock, epoch, nil)
	if err != nil {
		return nil, err
	}
	defer ExtendPhase(a.cfg.TPM)
	if resp.Decision != protocol.DecisionGranted || len(resp.ImportBlob) == 0 {
		return nil, fmt.Errorf("agent: verifier answered %q without a share", resp.Decision)
	}
	var blob tpmpb.ImportBlob
	if err := proto.Unmarshal(resp.ImportBlob, &blob); err != nil {
		return nil, fmt.Errorf("agent: import blob: %w", err)
	}
	remote, err := importShare(a.cfg.TPM, &blob, a.cfg.ApplianceID)
	if err != nil {
		return nil, err
	}
	u := &Unlocked{Provision: resp.Provision, Lease: time.Duration(resp.LeaseSeconds) * time.Second, Release: resp.Release}
	var local []byte
	if resp.Provision {
		if local, err = keys.NewShare(); err != nil {
			return nil, err
		}
		if u.SealedLocal, err = keys.SealLocal(a.cfg.TPM, local, resp.PCRs); err != nil {
			return nil, err
		}
	} else {
		sealedLocal := sealedFor(resp.Release)
		if sealedLocal == nil {
			return nil, fmt.Errorf("agent: the store exists but no sealed local share was given for release %q", resp.Release)
		}
		if local, err = keys.UnsealLocal(a.cfg.TPM, sealedLocal); err != nil {
			return nil, err
		}
	}
	for _, st := range resp.SealTargets {
		pcrs, err := decodePCRs(st.PCRs)
		if err != nil {
			return nil, err
		}
		blob, err := keys.SealLocalTo(a.cfg.TPM, local, pcrs)
		if err != nil {
			return nil, err
		}
		if u.Resealed == nil {
			u.Resealed = map[string][]byte{}
		}
		u.Resealed[st.Release] = blob
	}
	u.KEK, err = keys.DeriveKEK(local, remote, a.cfg.ApplianceID)
	clear(local)
	remote.Zeroize()
	if err != nil {
		return nil, err
	}
	return u, nil
}

func decodePCRs(m map[string]string) (map[int][]byte, error) {
	out := make(map[int][]byte, len(m))
	for k, v := range m {
		i, err := strconv.Atoi(k)
		d, err2 := hex.DecodeString(v)
		if err != nil || err2 != nil || i < 0 || i > 23 || len(d) != 32 {
			return nil, fmt.Errorf("agent: seal target PCR %q=%q", k, v)
		}
		out[i] = d
	}
	return out, nil
}

// Heartbeat re-attests a running appliance (purpose heartbeat, reporting
// the store's current epoch) and returns the renewed lease. serverCert, if
// not nil, is the DER certificate of the NBD server identity the appliance
// serves with: the quote covers it and the verifier records it for the
// home state's clients to pin. ErrRevoked or ErrRefused mean: zeroize now.
func (a *Agent) Heartbeat(ctx context.Context, epoch uint64, serverCert []byte) (time.Duration, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	resp, err := a.attest(ctx, protocol.PurposeHeartbeat, epoch, serverCert)
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.LeaseSeconds) * time.Second, nil
}

// phaseEvent is what the phase PCR is extended with.
var phaseEvent = measure.NewEvent("phase", "unlocked", nil)

// ExtendPhase extends the phase PCR, ending this boot's ability to unseal
// the local share or import the remote share. Unlock calls it; call it
// yourself to give up unlocking (e.g. after a refusal).
func ExtendPhase(rw io.ReadWriter) error {
	d, err := phaseEvent.Digest()
	if err != nil {
		return err
	}
	return tpm.Extend(rw, tpm.PCRPhase, d)
}
