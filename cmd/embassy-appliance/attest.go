package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/attest/tpm"
)

// ErrNoAgent: this build has no attestation agent yet (attest/agent, issue
// 4, is not merged). The appliance measures itself, reaches the verifier's
// address and reports that it cannot attest; it never serves.
var ErrNoAgent = errors.New("attestation agent not in this build: cannot attest")

// newAttestation returns the PCR 15 measurer and the verifier client.
//
// Until attest/agent and attest/measure land, the measurer extends PCR 15
// with sha256(content) and the attester only checks that the verifier is
// reachable, then fails with ErrNoAgent: the boot goes as far as it honestly
// can and says what it is waiting for.
func newAttestation(cfg *appliance.Config, rw io.ReadWriter, log *slog.Logger) (appliance.Measurer, appliance.Attester, error) {
	return &pcrMeasurer{rw: rw}, &noAgent{verifier: cfg.Verifier.URL, rw: rw, log: log}, nil
}

type pcrMeasurer struct{ rw io.ReadWriter }

func (m *pcrMeasurer) Measure(typ, name string, data []byte) error {
	sum := sha256.Sum256(data)
	return tpm.Extend(m.rw, tpm.PCRAppliance, sum[:])
}

type noAgent struct {
	verifier string
	rw       io.ReadWriter
	log      *slog.Logger
}

func (n *noAgent) reach(ctx context.Context) error {
	u, err := url.Parse(n.verifier)
	if err != nil {
		return err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), map[string]string{"https": "443", "http": "80"}[u.Scheme])
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return fmt.Errorf("verifier %s unreachable: %w", n.verifier, err)
	}
	c.Close()
	n.log.Info("verifier reachable", "addr", host)
	return nil
}

func (n *noAgent) Unlock(ctx context.Context, _ uint64, _ []byte) (*appliance.Unlocked, error) {
	if err := n.reach(ctx); err != nil {
		return nil, err
	}
	return nil, ErrNoAgent
}

func (n *noAgent) Heartbeat(ctx context.Context, _ uint64) (time.Duration, error) {
	if err := n.reach(ctx); err != nil {
		return 0, err
	}
	return 0, ErrNoAgent
}

func (n *noAgent) Locked() (bool, error) {
	v, err := tpm.ReadPCRs(n.rw, []int{tpm.PCRPhase})
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
