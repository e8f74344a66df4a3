package qemu

import (
	"context"
	"fmt"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/verifier"
)

// EnrollShare registers an appliance by its TPM's EK certificate
// (trusting the TPM's manufacturer CA) with share as this verifier's part
// of the remote secret; nil share: this verifier is the whole authority
// (it deals 1 of 1 itself).
func (v *Verifier) EnrollShare(ctx context.Context, id string, t *TPM, share *keys.Share) error {
	if err := v.DB.AddEKRoot(ctx, t.CA, "harness"); err != nil {
		return err
	}
	if err := v.DB.AddEKRoot(ctx, t.Intermediate, "harness"); err != nil {
		return err
	}
	return v.DB.Enroll(ctx, verifier.EnrollParams{ID: id, EKCert: t.EKCert, Actor: "harness", Share: share})
}

// Enroll is one enrolment ceremony reaching every verifier: it deals the
// appliance's remote secret k of n (keys.Deal), enrolls the TPM's EK into
// each verifier with its own share and zeroizes the shares.
func (c *Cluster) Enroll(ctx context.Context, id string, t *TPM) error {
	shares, err := keys.Deal(id, c.Threshold, len(c.Verifiers))
	if err != nil {
		return fmt.Errorf("qemu: dealing %d of %d: %w", c.Threshold, len(c.Verifiers), err)
	}
	defer func() {
		for _, s := range shares {
			clear(s.Value)
		}
	}()
	for i, v := range c.Verifiers {
		if err := v.EnrollShare(ctx, id, t, shares[i]); err != nil {
			return fmt.Errorf("qemu: enrolling %s at verifier %s: %w", id, v.Name, err)
		}
	}
	return nil
}
