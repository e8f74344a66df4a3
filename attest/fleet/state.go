package fleet

import (
	"strconv"
	"time"

	"github.com/dataembassy/embassy/attest/verifier"
)

// State is an appliance's state as the fleet page shows it.
type State string

// The states, in the order StateOf decides them.
const (
	// Revoked: an operator revoked the appliance; it is refused for good.
	Revoked State = "revoked"
	// Refused: the newest attestation request since the last admitted one
	// was refused (verifier.ApplianceInfo.LastRefusal is set).
	Refused State = "refused"
	// Serving: the last admitted attestation granted a lease that has not
	// ended.
	Serving State = "serving"
	// LeaseExpired: the appliance was admitted once but its lease ended
	// without a renewal (and without a refusal since).
	LeaseExpired State = "lease-expired"
	// NeverAttested: enrolled, but no attestation was ever admitted.
	NeverAttested State = "never-attested"
)

// Label is the state in words, as the page prints it beside its colour.
func (s State) Label() string {
	switch s {
	case Revoked:
		return "revoked"
	case Refused:
		return "refused"
	case Serving:
		return "serving"
	case LeaseExpired:
		return "lease expired"
	case NeverAttested:
		return "never attested"
	}
	return string(s)
}

// Status is an appliance's state and what explains it.
type Status struct {
	State State
	// Reason says why, in one sentence (the refusal's check and detail,
	// the revocation's reason, the lease's end).
	Reason string
	// Check is the failing check of a refusal ("revocation" for a
	// revoked appliance), empty otherwise.
	Check string
	// LeaseLeft is how long the lease still runs (Serving only).
	LeaseLeft time.Duration
}

// StateOf derives appliance a's state at now: revoked wins; then a refusal
// newer than the last admitted attestation; then the lease (valid: serving,
// ended: lease expired); else it was never admitted.
func StateOf(a *verifier.ApplianceInfo, now time.Time) Status {
	switch {
	case a.Revoked != nil:
		s := Status{State: Revoked, Check: "revocation", Reason: "revoked by " + orUnknown(a.RevokedBy)}
		if a.RevokReason != "" {
			s.Reason += ": " + a.RevokReason
		}
		return s
	case a.LastRefusal != nil:
		r := a.LastRefusal
		s := Status{State: Refused, Check: r.Check, Reason: r.Action + " " + r.Outcome}
		if r.Check != "" {
			s.Reason += " by check " + r.Check
		}
		if r.PCR >= 0 {
			s.Reason += " (PCR " + strconv.Itoa(r.PCR) + ")"
		}
		if r.Detail != "" {
			s.Reason += ": " + r.Detail
		}
		return s
	case a.LeaseUntil != nil && now.Before(*a.LeaseUntil):
		return Status{State: Serving, LeaseLeft: a.LeaseUntil.Sub(now), Reason: "lease valid"}
	case a.LeaseUntil != nil:
		return Status{State: LeaseExpired, Reason: "lease ended without renewal"}
	case a.AKName == "":
		return Status{State: NeverAttested, Reason: "enrolled; attestation key not yet activated"}
	}
	return Status{State: NeverAttested, Reason: "attestation key activated; no attestation admitted yet"}
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}
