package wiring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/tpm"
)

// NewAttestation returns the appliance's PCR 15 measurer and its verifiers'
// client, built on attest/measure and attest/agent: both use the TPM rw
// and share one measurement log, which the agent sends as evidence. The
// verifiers (names, URLs, CAs), the threshold k and the appliance's
// identity come from cfg.
func NewAttestation(cfg *appliance.Config, rw io.ReadWriter, log *slog.Logger) (*Measurer, *Attester, error) {
	mlog := &measure.Log{}
	var eps []agent.Endpoint
	for _, v := range cfg.Verifiers {
		pool, err := appliance.ParseCertPool(v.CAPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("verifier %s CA: %w", v.Name, err)
		}
		eps = append(eps, agent.Endpoint{Name: v.Name, URL: v.URL, RootCAs: pool})
	}
	a, err := agent.New(agent.Config{
		Verifiers:   eps,
		Threshold:   cfg.Threshold,
		ApplianceID: cfg.Identity,
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
// attestation key at every verifier that does not know it yet and maps the
// agent's types and errors to the appliance's.
type Attester struct {
	a   *agent.Agent
	rw  io.ReadWriter
	log *slog.Logger
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

// enroll binds the attestation key at every verifier that does not trust
// it yet (a no-op once all do); it fails only when fewer than k do.
func (t *Attester) enroll(ctx context.Context) error {
	answers, err := t.a.Enroll(ctx)
	for _, ans := range answers {
		if ans.Err != nil {
			t.log.Warn("attestation key not enrolled", "verifier", ans.Verifier, "outcome", ans.Outcome, "err", ans.Err)
			continue
		}
		t.log.Info("attestation key enrolled", "verifier", ans.Verifier, "outcome", ans.Outcome)
	}
	return mapAgentErr(err)
}

// Unlock attests and obtains the KEK as appliance.Attester says, enrolling
// the attestation key first where it is not yet.
func (t *Attester) Unlock(ctx context.Context, epoch uint64, sealed *appliance.SealedShares) (*appliance.Unlocked, error) {
	if err := t.enroll(ctx); err != nil {
		return nil, err
	}
	var in *agent.Sealed
	if sealed != nil {
		in = &agent.Sealed{Set: keys.SetID(sealed.Set), ByRelease: sealed.ByRelease}
	}
	u, err := t.a.Unlock(ctx, epoch, in)
	if err != nil {
		return nil, mapAgentErr(err)
	}
	return &appliance.Unlocked{KEK: u.KEK, Provision: u.Provision, Lease: u.Lease, Release: u.Release, Answers: answers(u.Answers),
		Sealed: &appliance.SealedShares{Set: u.Sealed.Set, ByRelease: u.Sealed.ByRelease}}, nil
}

// Heartbeat re-attests to renew the lease, enrolling first where need be.
func (t *Attester) Heartbeat(ctx context.Context, epoch uint64, serverCert []byte) (*appliance.Renewal, error) {
	if err := t.enroll(ctx); err != nil {
		// The running quorum's leases do not depend on enrolment: the
		// heartbeat decides, and enrolment is retried on the next one.
		t.log.Warn("enrolment incomplete", "err", err)
	}
	r, err := t.a.Heartbeat(ctx, epoch, serverCert)
	if r == nil {
		return nil, mapAgentErr(err)
	}
	return &appliance.Renewal{Lease: r.Lease, Resealed: r.Resealed, Answers: answers(r.Answers)}, mapAgentErr(err)
}

// answers converts the agent's answers; the outcome strings are the same.
func answers(in []agent.Answer) []appliance.Answer {
	out := make([]appliance.Answer, len(in))
	for i, a := range in {
		out[i] = appliance.Answer{Verifier: a.Verifier, Outcome: a.Outcome, Release: a.Release, Lease: a.Lease, Err: a.Err}
	}
	return out
}

// Close zeroizes the local key share the agent keeps for resealing.
func (t *Attester) Close() { t.a.Close() }

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
