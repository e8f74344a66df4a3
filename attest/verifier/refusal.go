package verifier

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/dataembassy/embassy/attest/protocol"
)

// Refusal is a negative decision, sent as a protocol.ErrorResponse.
type Refusal struct {
	Status int
	protocol.ErrorResponse
}

func (r *Refusal) Error() string {
	s := r.Code
	if r.Check != "" {
		s += " (" + r.Check + ")"
	}
	if r.PCR != nil {
		s += fmt.Sprintf(" PCR %d", *r.PCR)
	}
	return s + ": " + r.Detail
}

// refuse makes a refusal by check; pcr is the PCR that differed, or -1.
func refuse(check string, pcr int, format string, args ...any) *Refusal {
	r := &Refusal{Status: http.StatusForbidden, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeRefused, Check: check, Detail: fmt.Sprintf(format, args...)}}
	if pcr >= 0 {
		r.PCR = &pcr
	}
	return r
}

func badRequest(err error) *Refusal {
	return &Refusal{Status: http.StatusBadRequest, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeBadRequest, Detail: err.Error()}}
}

func revoked(id string) *Refusal {
	return &Refusal{Status: http.StatusForbidden, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeRevoked, Check: "revocation", Detail: fmt.Sprintf("appliance %q is revoked", id)}}
}

func notEnrolled(id string) *Refusal {
	return &Refusal{Status: http.StatusForbidden, ErrorResponse: protocol.ErrorResponse{Code: protocol.CodeNotEnrolled, Check: "enrollment", Detail: fmt.Sprintf("appliance %q is not enrolled", id)}}
}

// auditOnRefusal, deferred by an endpoint, audits the refusal in *errp
// (bad requests are not decisions and are not audited).
func (s *Server) auditOnRefusal(ctx context.Context, id, action string, errp *error) {
	var ref *Refusal
	if errors.As(*errp, &ref) && ref.Code != protocol.CodeBadRequest {
		s.auditRefusal(ctx, id, action, ref, nil)
	}
}

// auditRefusal writes a refusal to the audit log and stamps its seq. A
// non-nil nonce (if it is this appliance's) is burnt in the same
// transaction, so a refused attestation cannot be retried with it.
func (s *Server) auditRefusal(ctx context.Context, id, action string, ref *Refusal, nonce []byte) {
	rec := &AuditRecord{Actor: ActorAppliance, Appliance: id, Action: action, Outcome: ref.Code, Check: ref.Check, PCR: -1, Detail: ref.Detail}
	if ref.PCR != nil {
		rec.PCR = *ref.PCR
	}
	if err := s.db.recordRefusal(ctx, rec, nonce); err != nil {
		s.log.Error("verifier: audit write failed", "err", err)
		return
	}
	ref.AuditSeq = rec.Seq
	s.log.Info("verifier: refused", "appliance", id, "action", action, "code", ref.Code, "check", ref.Check, "detail", ref.Detail, "audit_seq", rec.Seq)
}
