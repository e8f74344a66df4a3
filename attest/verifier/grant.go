package verifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/server"
	"google.golang.org/protobuf/proto"
)

// decide answers an admitted attestation: an unlock is granted the remote
// share (grantKey), a heartbeat renewed; both carry the seal targets, so a
// release published after the rack booted is sealed to before the reboot
// into it. Either way the lease is recorded with the store epoch and the
// audit record (recordDecision, lease.go).
func (s *Server) decide(ctx context.Context, a *appliance, req *protocol.AttestRequest, rel *policyRelease, pcrs map[int][]byte) (*protocol.AttestResponse, error) {
	resp := &protocol.AttestResponse{LeaseSeconds: int64(s.opts.Lease / time.Second), Release: rel.label, Decision: protocol.DecisionRenewed}
	if req.Purpose == protocol.PurposeUnlock {
		resp.Decision = protocol.DecisionGranted
		var err error
		if resp.ImportBlob, resp.PCRs, err = importBlob(a, rel, pcrs); err != nil {
			return nil, err
		}
	}
	pol, err := s.policy(ctx)
	if err != nil {
		return nil, err
	}
	resp.SealTargets = sealTargets(pol, rel, pcrs)
	if err := s.recordDecision(ctx, resp, a, req, rel); err != nil {
		return nil, err
	}
	return resp, nil
}

// boundPCRs are the PCRs the share is bound to: the firmware baseline,
// the release's PCRs (at their quoted values) and the phase PCR at its
// initial value.
func boundPCRs(rel *policyRelease, pcrs map[int][]byte) map[uint32][]byte {
	bind := map[uint32][]byte{uint32(tpm.PCRPhase): make([]byte, sha256.Size)}
	for _, i := range tpm.FirmwarePCRs {
		bind[uint32(i)] = pcrs[i]
	}
	for i := range rel.pcrs {
		bind[uint32(i)] = pcrs[i]
	}
	return bind
}

// importBlob encrypts the verifier's share (keys.Share, encoded) to the enrolled EK, bound to
// boundPCRs, as a go-tpm-tools ImportBlob protobuf; it returns the bound
// PCR indices, sorted.
func importBlob(a *appliance, rel *policyRelease, pcrs map[int][]byte) ([]byte, []int, error) {
	if a.share == nil {
		return nil, nil, refuse("share", -1, "appliance %s was enrolled before threshold key grants: re-enroll it", a.id)
	}
	share, err := a.share.MarshalBinary()
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: stored share of %s: %w", a.id, err)
	}
	bind := boundPCRs(rel, pcrs)
	blob, err := server.CreateImportBlob(a.ekPub, share, &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: bind})
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: import blob: %w", err)
	}
	raw, err := proto.Marshal(blob)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: import blob: %w", err)
	}
	idx := make([]int, 0, len(bind))
	for i := range bind {
		idx = append(idx, int(i))
	}
	slices.Sort(idx)
	return raw, idx, nil
}

// sealTargets predicts, for every published release but rel, the PCRs a
// boot of it on this appliance will have (this boot's firmware, that
// release's PCRs, phase at zero), so the appliance can seal its local
// share to them and still unlock after an upgrade.
func sealTargets(pol []policyRelease, rel *policyRelease, pcrs map[int][]byte) []protocol.SealTarget {
	var out []protocol.SealTarget
	for _, p := range pol {
		if p.digest == rel.digest {
			continue
		}
		st := protocol.SealTarget{Release: p.label, PCRs: map[string]string{fmt.Sprint(tpm.PCRPhase): hex.EncodeToString(make([]byte, sha256.Size))}}
		for _, i := range tpm.FirmwarePCRs {
			st.PCRs[fmt.Sprint(i)] = hex.EncodeToString(pcrs[i])
		}
		for i, v := range p.pcrs {
			st.PCRs[fmt.Sprint(i)] = hex.EncodeToString(v)
		}
		out = append(out, st)
	}
	return out
}
