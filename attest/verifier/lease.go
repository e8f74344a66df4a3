package verifier

import (
	"context"
	"fmt"

	"github.com/dataembassy/embassy/attest/protocol"
)

// recordDecision records an admitted attestation in one transaction (the
// nonce burnt, store epoch, lease, reported server identity, audit
// record), after the last checks made under the write lock (admit). It
// sets resp.Provision and resp.AuditSeq.
func (s *Server) recordDecision(ctx context.Context, resp *protocol.AttestResponse, a *appliance, req *protocol.AttestRequest, rel *policyRelease) error {
	now := s.db.now()
	rec := &AuditRecord{Actor: ActorAppliance, Appliance: a.id, Action: "attest-" + string(req.Purpose), Outcome: "ok", PCR: -1,
		Detail: fmt.Sprintf("%s; release %s (%s); epoch %d; lease %s", resp.Decision, rel.label, rel.digest[:16], req.StoreEpoch, s.opts.Lease)}
	d := &decision{appliance: a.id, nonce: req.Nonce, epoch: req.StoreEpoch, release: rel.label,
		at: now, leaseUntil: now.Add(s.opts.Lease), serverCert: req.ServerCert, audit: rec}
	st, err := s.db.recordDecision(ctx, d, func(st decisionState) error { return admit(a.id, req.StoreEpoch, st) })
	if err != nil {
		return err
	}
	resp.Provision = st.lastEpoch == 0 && req.StoreEpoch == 0
	resp.AuditSeq = rec.Seq
	return nil
}

// admit makes the checks that must hold at the moment of the decision:
// the nonce not burnt by a concurrent replay, no revocation landed since
// the first check, and the store epoch not older than the last one
// reported (a rolled-back store).
func admit(id string, epoch uint64, st decisionState) error {
	switch {
	case !st.nonceFresh:
		return refuse("nonce", -1, "nonce already used (concurrent replay)")
	case st.revoked:
		return revoked(id)
	case epoch < st.lastEpoch:
		return refuse("epoch", -1, "store epoch %d is older than %d last reported: rolled-back store", epoch, st.lastEpoch)
	}
	return nil
}
