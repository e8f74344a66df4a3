package agent

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
)

// Enroll binds this TPM's attestation key to the enrolled EK at every
// verifier that does not yet trust it: each verifier encrypts a challenge
// to the EK for the AK's name (MakeCredential), the TPM recovers it
// (ActivateCredential) only if the AK is resident next to that EK, and the
// proof plus a quote (whose PCRs become that verifier's firmware baseline)
// complete enrolment there. A verifier that already trusts an AK for this
// appliance counts as enrolled. It returns one Answer per verifier asked
// (OutcomeEnrolled, OutcomeAlreadyEnrolled or the failure) and an error when fewer than k
// verifiers are enrolled afterwards; verifiers that failed are asked again
// on the next call.
func (a *Agent) Enroll(ctx context.Context) ([]Answer, error) {
	var answers []Answer
	for _, v := range a.verifiers {
		a.mu.Lock()
		done := a.enrolled[v.name]
		a.mu.Unlock()
		if done {
			continue
		}
		err := a.enrollAt(ctx, v)
		ans := Answer{Verifier: v.name, Outcome: OutcomeEnrolled}
		if errors.Is(err, ErrAlreadyEnrolled) {
			ans.Outcome, err = OutcomeAlreadyEnrolled, nil
		}
		if err != nil {
			ans = failed(v.name, err)
		} else {
			a.mu.Lock()
			a.enrolled[v.name] = true
			a.mu.Unlock()
		}
		answers = append(answers, ans)
	}
	a.mu.Lock()
	n := len(a.enrolled)
	a.mu.Unlock()
	if n < a.k {
		return answers, newQuorumError("enroll", a.k, n, len(a.verifiers), answers)
	}
	return answers, nil
}

// enrollAt runs the enrolment handshake with one verifier.
func (a *Agent) enrollAt(ctx context.Context, v *verifierClient) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
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
	if err := v.post(ctx, protocol.PathEnrollChallenge, &protocol.EnrollChallengeRequest{ApplianceID: a.cfg.ApplianceID, AKPublic: akPub}, &ch); err != nil {
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
	return v.post(ctx, protocol.PathEnrollActivate, &protocol.EnrollActivateRequest{
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
