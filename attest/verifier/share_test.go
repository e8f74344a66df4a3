package verifier_test

import (
	"context"
	"errors"
	"testing"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/verifier"
)

// TestEnrolmentSharesAreBound: the verifier grants the share it was given
// at enrolment, and what the appliance recovers is bound to the dealing:
// a 1-of-1 share it deals itself unlocks; one share of a 2-of-3 dealing
// is refused by an appliance configured for one verifier (ErrShareSplit); a share dealt for another appliance is
// refused by its commitment; a malformed share is refused at enrolment.
func TestEnrolmentSharesAreBound(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	if _, u := f.unlocked("rack1"); len(u.KEK) != keys.ShareSize {
		t.Fatalf("1-of-1 unlock: KEK of %d bytes", len(u.KEK))
	}

	enrollWith := func(id string, share *keys.Share) *appliance {
		t.Helper()
		ap := f.newAppliance(id, bootEvents)
		if err := f.db.AddEKRoot(ctx, ap.sw.CA, "test"); err != nil {
			t.Fatal(err)
		}
		if err := f.db.AddEKRoot(ctx, ap.sw.Intermediate, "test"); err != nil {
			t.Fatal(err)
		}
		cert, err := agent.EKCertificate(ap.sw.RW())
		if err != nil {
			t.Fatal(err)
		}
		if err := f.db.Enroll(ctx, verifier.EnrollParams{ID: id, EKCert: cert, Share: share, Actor: "test"}); err != nil {
			t.Fatalf("enroll %s: %v", id, err)
		}
		if _, err := ap.a.Enroll(ctx); err != nil {
			t.Fatalf("AK %s: %v", id, err)
		}
		return ap
	}
	twoOfThree, err := keys.Deal("rack2", 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	ap := enrollWith("rack2", twoOfThree[1])
	if _, err := ap.a.Unlock(ctx, 0, nil); !errors.Is(err, agent.ErrShareSplit) || !errors.Is(err, agent.ErrRefused) {
		t.Fatalf("one share of 2 of 3 at a 1-of-1 appliance: %v, want ErrShareSplit and ErrRefused", err)
	}
	foreign, err := keys.Deal("rack9", 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	ap = enrollWith("rack3", foreign[0])
	if _, err := ap.a.Unlock(ctx, 0, nil); !errors.Is(err, keys.ErrShareCommit) {
		t.Fatalf("another appliance's share: %v, want ErrShareCommit", err)
	}
	bad := *foreign[0]
	bad.Value = bad.Value[:31]
	cert, err := agent.EKCertificate(ap.sw.RW())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.Enroll(ctx, verifier.EnrollParams{ID: "rack4", EKCert: cert, Share: &bad, Actor: "test"}); !errors.Is(err, verifier.ErrBadArgument) || !errors.Is(err, keys.ErrShareFormat) {
		t.Fatalf("enrolment with a malformed share: %v, want ErrBadArgument wrapping ErrShareFormat", err)
	}
}

// TestRowWithoutShareSetRefused: an appliance enrolled before threshold
// shares (schema 3) has no share set; its unlock is refused with check
// "share", audited, rather than granting a share the appliance cannot
// place.
func TestRowWithoutShareSetRefused(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	if err := f.db.ForgetShareSet(context.Background(), "rack1"); err != nil {
		t.Fatal(err)
	}
	_, err := ap.a.Unlock(context.Background(), 0, nil)
	wantRefused(t, err, agent.ErrRefused, "share", -1)
	if rec := f.lastAudit(); rec.Check != "share" || rec.Outcome != "refused" {
		t.Fatalf("audit: %+v", rec)
	}
}

// TestIncompleteShareRowNotGranted: a damaged share row is an error, never
// a share padded with zeros.
func TestIncompleteShareRowNotGranted(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	if err := f.db.TruncateShareCommit(context.Background(), "rack1"); err != nil {
		t.Fatal(err)
	}
	u, err := ap.a.Unlock(context.Background(), 0, nil)
	if err == nil || u != nil {
		t.Fatalf("unlock with a damaged share row: %v", err)
	}
	if errors.Is(err, agent.ErrRefused) {
		t.Fatalf("damaged row reported as a refusal of the appliance: %v", err)
	}
}
