package verifier_test

import (
	"context"
	"testing"

	"github.com/dataembassy/embassy/attest/measure"
)

// TestUpgradeToNewRelease: while a release-1 boot holds its local share,
// it seals it to the PCRs release 2 will have; after rebooting into
// release 2 it unlocks the same store with the same KEK.
func TestUpgradeToNewRelease(t *testing.T) {
	f := newFixture(t)
	v2 := []measure.Event{measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("appliance v2")), bootEvents[1]}
	f.publish(v2, "2")
	ap := f.enrolled("rack1")
	ctx := context.Background()
	u, err := ap.a.Unlock(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if u.Release != "embassy-appliance 1" || u.Resealed["embassy-appliance 2"] == nil {
		t.Fatalf("release %q, resealed for %v", u.Release, keysOf(u.Resealed))
	}
	if _, err := ap.a.Heartbeat(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	sealed := map[string][]byte{u.Release: u.SealedLocal}
	for k, v := range u.Resealed {
		sealed[k] = v
	}
	ap.reboot(v2)
	u2, err := ap.a.UnlockSealed(ctx, 1, sealed)
	if err != nil {
		t.Fatalf("unlock after upgrade: %v", err)
	}
	if u2.Release != "embassy-appliance 2" || !sameKEK(u.KEK, u2.KEK) {
		t.Fatalf("after upgrade: release %q, same KEK %v", u2.Release, sameKEK(u.KEK, u2.KEK))
	}
	// The release-1 blob does not open under release 2.
	ap.reboot(v2)
	if _, err := ap.a.Unlock(ctx, 1, u.SealedLocal); err == nil {
		t.Fatal("release-1 sealed share opened under release 2")
	}
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
