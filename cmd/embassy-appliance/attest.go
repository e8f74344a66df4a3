package main

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

// newAttestation returns the PCR 15 measurer and the verifier client built
// on attest/measure and attest/agent.
func newAttestation(cfg *appliance.Config, rw io.ReadWriter, log *slog.Logger) (appliance.Measurer, appliance.Attester, error) {
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
	return &measurer{rw: rw, log: mlog}, &attester{a: a, rw: rw, log: log}, nil
}

// measurer extends PCR 15 through the appliance's measurement log.
type measurer struct {
	rw  io.ReadWriter
	log *measure.Log
}

func (m *measurer) Measure(typ, name string, data []byte) error {
	return m.log.Measure(m.rw, measure.NewEvent(typ, name, data))
}

// attester adapts agent.Agent to appliance.Attester: it enrolls the
// attestation key on first use and maps the agent's errors to the
// appliance's.
type attester struct {
	a        *agent.Agent
	rw       io.ReadWriter
	log      *slog.Logger
	mu       sync.Mutex
	enrolled bool
}

// mapErr turns the agent's refusal errors into the appliance's sentinels,
// keeping the verifier's explanation (check, PCR, audit record).
func mapErr(err error) error {
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

func (t *attester) enroll(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.enrolled {
		return nil
	}
	err := t.a.Enroll(ctx)
	if err != nil && !errors.Is(err, agent.ErrAlreadyEnrolled) {
		return mapErr(err)
	}
	t.log.Info("attestation key enrolled", "already", err != nil)
	t.enrolled = true
	return nil
}

func (t *attester) Unlock(ctx context.Context, epoch uint64, sealedLocal []byte) (*appliance.Unlocked, error) {
	if err := t.enroll(ctx); err != nil {
		return nil, err
	}
	u, err := t.a.Unlock(ctx, epoch, sealedLocal)
	if err != nil {
		return nil, mapErr(err)
	}
	return &appliance.Unlocked{KEK: u.KEK, Provision: u.Provision, SealedLocal: u.SealedLocal, Lease: u.Lease, Release: u.Release}, nil
}

func (t *attester) Heartbeat(ctx context.Context, epoch uint64, serverCert []byte) (time.Duration, error) {
	if err := t.enroll(ctx); err != nil {
		return 0, err
	}
	d, err := t.a.Heartbeat(ctx, epoch, serverCert)
	return d, mapErr(err)
}

// Locked reports whether the phase PCR left its reset value.
func (t *attester) Locked() (bool, error) {
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
