package fleet_test

import (
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/fleet"
	"github.com/dataembassy/embassy/attest/verifier"
)

func TestStateOf(t *testing.T) {
	now := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	refusal := &verifier.AuditRecord{Action: "attest-unlock", Outcome: "refused", Check: "pcr", PCR: 4, Detail: "PCR 4 differs"}
	for _, c := range []struct {
		name  string
		a     verifier.ApplianceInfo
		state fleet.State
		check string
		left  time.Duration
		why   string
	}{
		{"revoked wins over a lease and a refusal", verifier.ApplianceInfo{Revoked: at(-time.Hour), RevokedBy: "bob", RevokReason: "stolen",
			LeaseUntil: at(time.Minute), LastRefusal: refusal}, fleet.Revoked, "revocation", 0, "revoked by bob: stolen"},
		{"revoked without reason", verifier.ApplianceInfo{Revoked: at(-time.Hour)}, fleet.Revoked, "revocation", 0, "revoked by (unknown)"},
		{"refused wins over a valid lease", verifier.ApplianceInfo{AKName: "ak", LeaseUntil: at(time.Minute), LastRefusal: refusal},
			fleet.Refused, "pcr", 0, "attest-unlock refused by check pcr (PCR 4): PCR 4 differs"},
		{"refused without check", verifier.ApplianceInfo{LastRefusal: &verifier.AuditRecord{Action: "attest-heartbeat", Outcome: "revoked", PCR: -1}},
			fleet.Refused, "", 0, "attest-heartbeat revoked"},
		{"serving", verifier.ApplianceInfo{AKName: "ak", LeaseUntil: at(90 * time.Second)}, fleet.Serving, "", 90 * time.Second, "lease valid"},
		{"lease ends now", verifier.ApplianceInfo{AKName: "ak", LeaseUntil: at(0)}, fleet.LeaseExpired, "", 0, "lease ended without renewal"},
		{"lease expired", verifier.ApplianceInfo{AKName: "ak", LeaseUntil: at(-time.Second)}, fleet.LeaseExpired, "", 0, "lease ended without renewal"},
		{"activated, never attested", verifier.ApplianceInfo{AKName: "ak"}, fleet.NeverAttested, "", 0, "attestation key activated; no attestation admitted yet"},
		{"enrolled only", verifier.ApplianceInfo{}, fleet.NeverAttested, "", 0, "enrolled; attestation key not yet activated"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := fleet.StateOf(&c.a, now)
			want := fleet.Status{State: c.state, Check: c.check, LeaseLeft: c.left, Reason: c.why}
			if got != want {
				t.Errorf("StateOf = %+v, want %+v", got, want)
			}
		})
	}
}

func TestStateLabel(t *testing.T) {
	for s, want := range map[fleet.State]string{fleet.Revoked: "revoked", fleet.Refused: "refused", fleet.Serving: "serving",
		fleet.LeaseExpired: "lease expired", fleet.NeverAttested: "never attested", "other": "other"} {
		if got := s.Label(); got != want {
			t.Errorf("%q.Label() = %q, want %q", s, got, want)
		}
	}
}
