package verifier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
)

// attest decides an attestation: the checks in the order they are named
// in docs/attestation.md, then the decision (decide). Every refusal but a
// bad request is audited and burns the nonce.
func (s *Server) attest(ctx context.Context, req *protocol.AttestRequest) (resp *protocol.AttestResponse, err error) {
	start := time.Now()
	defer func() { s.opts.Metrics.attestation(req.Purpose, err, time.Since(start)) }()
	defer func() {
		var ref *Refusal
		if errors.As(err, &ref) && ref.Code != protocol.CodeBadRequest {
			s.auditRefusal(ctx, req.ApplianceID, "attest-"+string(req.Purpose), ref, req.Nonce)
		}
	}()
	a, err := s.loadAppliance(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	if err := s.checkNonce(ctx, a.id, req.Nonce); err != nil {
		return nil, err
	}
	if a.revoked {
		return nil, revoked(a.id)
	}
	if a.akPublic == nil {
		return nil, refuse("ak", -1, "appliance has no activated AK: run the enrollment handshake")
	}
	if err := checkServerCert(a.id, req.ServerCert); err != nil {
		return nil, err
	}
	pcrs, err := verifyEvidence(a, req)
	if err != nil {
		return nil, err
	}
	rel, err := s.checkPolicy(ctx, a, pcrs)
	if err != nil {
		return nil, err
	}
	if err := checkPhase(req.Purpose, pcrs); err != nil {
		return nil, err
	}
	return s.decide(ctx, a, req, rel, pcrs)
}

// checkPhase refuses an unlock once the phase PCR has left its initial
// value: the share is granted once per boot.
func checkPhase(purpose protocol.Purpose, pcrs map[int][]byte) error {
	if purpose != protocol.PurposeUnlock {
		return nil
	}
	if v := pcrs[tpm.PCRPhase]; !bytes.Equal(v, make([]byte, sha256.Size)) {
		return refuse("phase", tpm.PCRPhase, "phase PCR already extended (%x): this boot has unlocked once", v)
	}
	return nil
}
