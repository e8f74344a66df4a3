package verifier_test

import (
	"context"
	"errors"
	"testing"

	"github.com/dataembassy/embassy/attest/agent"
)

func wantRefused(t *testing.T, err error, sentinel error, check string, pcr int) *agent.RefusedError {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got %v, want %v", err, sentinel)
	}
	var re *agent.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("%v is not a *RefusedError", err)
	}
	if re.Check != check || re.PCR != pcr {
		t.Fatalf("refused on check %q PCR %d, want %q PCR %d: %v", re.Check, re.PCR, check, pcr, err)
	}
	return re
}

func TestHappyPath(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	ctx := context.Background()

	u, err := ap.a.Unlock(ctx, 0, nil)
	if err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if !u.Provision || localBlob(u) == nil || len(u.KEK) != 32 || u.Lease <= 0 {
		t.Fatalf("first unlock: %+v", u)
	}
	if rec := f.lastAudit(); rec.Action != "attest-unlock" || rec.Outcome != "ok" {
		t.Fatalf("audit: %+v", rec)
	}
	// The store is formatted; the appliance reports epoch 1.
	if _, err := ap.a.Heartbeat(ctx, 1, nil); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	// Next boot: same KEK from the sealed local share and the remote share.
	ap.reboot(bootEvents)
	u2, err := ap.a.Unlock(ctx, 1, u.Sealed)
	if err != nil {
		t.Fatalf("second Unlock: %v", err)
	}
	if u2.Provision {
		t.Error("provision requested for an existing store")
	}
	if !sameKEK(u.KEK, u2.KEK) {
		t.Fatal("KEK differs between boots")
	}
	rep, err := f.db.VerifyAudit(ctx, 0, "")
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("audit chain: %+v %v", rep, err)
	}
}
