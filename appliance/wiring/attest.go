package wiring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/tpm"
)

// NewAttestation returns the appliance's PCR 15 measurer and its verifier
// client, built on attest/measure and attest/agent: both use the TPM rw
// and share one measurement log, which the agent sends as evidence. The
// verifier's URL and CA and the appliance's identity come from cfg.
func NewAttestation(cfg *appliance.Config, rw io.ReadWriter, log *slog.Logger) (*Measurer, *Attester, error) {
	mlog := &measure.Log{}
	pool, err := appliance.ParseCertPool(cfg.Verifier.CAPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier CA: %w", err)
	}
	a, err := agent.New(agent.Config{
		VerifierURL: cfg.Verifier.URL,
		ApplianceID: cfg.Identity,
		RootCAs:     pool,
		TPM:         rw,
		Log:         mlog,
	})
	if err != nil {
		return nil, nil, err
	}
	return &Measurer{rw: rw, log: mlog}, &Attester{a: a, rw: rw, log: log}, nil
}

var (
	_ appliance.Measurer = (*Measurer)(nil)
	_ appliance.Attester = (*Attester)(nil)
)

// Measurer implements appliance.Measurer: it extends PCR 15 through the
// appliance's measurement log.
type Measurer struct {
	rw  io.ReadWriter
	log *measure.Log
}

// Measure records an event of typ and name over data in the log and
// extends PCR 15 with it.
func (m *Measurer) Measure(typ, name string, data []byte) error {
	return m.log.Measure(m.rw, measure.NewEvent(typ, name, data))
}

// Attester implements appliance.Attester with agent.Agent: it enrolls the
// attestation key on first use and maps the agent's errors to the
// appliance's.
type Attester struct {
	a        *agent.Agent
	rw       io.ReadWriter
	log      *slog.Logger
	mu       sync.Mutex
	enrolled bool
}

// mapAgentErr turns the agent's refusal errors into the appliance's sentinels,
// keeping the verifier's explanation (check, PCR, audit record).
func mapAgentErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, agent.ErrRevoked):
		return fmt.Errorf("%w: %w", appliance.ErrRevoked, err)
	case errors.Is(err, agent.ErrRefused), errors.Is(err, agent.ErrNotEnrolled):
		return fmt.Errorf("%w: %w", appliance.ErrRefused, err)
	}
	return err
}

// enroll enrolls the attestation key once; a key the verifier already
// knows counts as enrolled.
func (t *Attester) enroll(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.enrolled {
		return nil
	}
	err := t.a.Enroll(ctx)
	if err != nil && !errors.Is(err, agent.ErrAlreadyEnrolled) {
		return mapAgentErr(err)
	}
	t.log.Info("attestation key enrolled", "already", err != nil)
	t.enrolled = true
	return nil
}

// Unlock attests and obtains the KEK as appliance.Attester says, enrolling
// the attestation key first if it is not yet.
func (t *Attester) Unlock(ctx context.Context, epoch uint64, sealedLocal []byte) (*appliance.Unlocked, error) {
	if err := t.enroll(ctx); err != nil {
		return nil, err
	}
	u, err := t.a.Unlock(ctx, epoch, sealedLocal)
	if err != nil {
		return nil, mapAgentErr(err)
	}
	return &appliance.Unlocked{KEK: u.KEK, Provision: u.Provision, SealedLocal: u.SealedLocal, Lease: u.Lease, Release: u.Release}, nil
}

// Heartbeat re-attests to renew the lease, enrolling first if need be.
func (t *Attester) Heartbeat(ctx context.Context, epoch uint64, serverCert []byte) (time.Duration, error) {
	if err := t.enroll(ctx); err != nil {
		return 0, err
	}
	d, err := t.a.Heartbeat(ctx, epoch, serverCert)
	return d, mapAgentErr(err)
}

// Locked reports whether the phase PCR left its reset value.
func (t *Attester) Locked() (bool, error) {
	v, err := tpm.ReadPCRs(t.rw, []int{tpm.PCRPhase})
	if err != nil {
		return false, err
	}
	for _, b := range v[tpm.PCRPhase] {
		if b != 0 {
			return true, nil
		}
	}
	return false, nil
}
