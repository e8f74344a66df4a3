package verifier_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/measure"
)

// v2Events are the measurements of release 2: another appliance binary.
var v2Events = []measure.Event{measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("appliance v2")), bootEvents[1]}

// TestUpgradeToNewRelease: while a release-1 boot holds its local share,
// it seals it to the PCRs release 2 will have; after rebooting into
// release 2 it unlocks the same store with the same KEK.
func TestUpgradeToNewRelease(t *testing.T) {
	f := newFixture(t)
	f.publish(v2Events, "2")
	ap := f.enrolled("rack1")
	ctx := context.Background()
	u, err := ap.a.Unlock(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if u.Release != "embassy-appliance 1" || len(u.Sealed.ByRelease) != 2 || u.Sealed.ByRelease["embassy-appliance 2"] == nil {
		t.Fatalf("release %q, sealed for %v", u.Release, slices.Sorted(maps.Keys(u.Sealed.ByRelease)))
	}
	if _, err := ap.a.Heartbeat(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	ap.reboot(v2Events)
	expectUpgraded(t, ap, u)
	// The release-1 blob does not open under release 2.
	ap.reboot(v2Events)
	only1 := &agent.Sealed{Set: u.Sealed.Set, ByRelease: map[string][]byte{u.Release: localBlob(u)}}
	if _, err := ap.a.Unlock(ctx, 1, only1); err == nil {
		t.Fatal("release-1 sealed share opened under release 2")
	}
}

// TestUpgradeSealedOnHeartbeat: a release published after the rack booted
// reaches it as a seal target on a heartbeat, once; the reboot into it
// unlocks the same store.
func TestUpgradeSealedOnHeartbeat(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	ctx := context.Background()
	u, err := ap.a.Unlock(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Sealed.ByRelease) != 1 {
		t.Fatalf("sealed for %v before release 2 exists", slices.Sorted(maps.Keys(u.Sealed.ByRelease)))
	}
	f.publish(v2Events, "2")
	f.now = f.now.Add(3 * time.Second) // past the policy cache (PolicyRefresh)
	r, err := ap.a.Heartbeat(ctx, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	blob := r.Resealed["embassy-appliance 2"]
	if len(r.Resealed) != 1 || blob == nil {
		t.Fatalf("heartbeat resealed %v", slices.Sorted(maps.Keys(r.Resealed)))
	}
	if r2, err := ap.a.Heartbeat(ctx, 1, nil); err != nil || r2.Resealed != nil {
		t.Fatalf("second heartbeat resealed %v (%v): a release is sealed to once per boot", r2.Resealed, err)
	}
	u.Sealed.ByRelease["embassy-appliance 2"] = blob
	ap.a.Close()
	ap.reboot(v2Events)
	expectUpgraded(t, ap, u)
}

// expectUpgraded unlocks ap, rebooted into release 2, with the header
// content u left (plus what was added to it) and expects the store's KEK.
func expectUpgraded(t *testing.T, ap *appliance, u *agent.Unlocked) {
	t.Helper()
	u2, err := ap.a.Unlock(context.Background(), 1, u.Sealed)
	if err != nil {
		t.Fatalf("unlock after upgrade: %v", err)
	}
	if u2.Release != "embassy-appliance 2" || !sameKEK(u.KEK, u2.KEK) {
		t.Fatalf("after upgrade: release %q, same KEK %v", u2.Release, sameKEK(u.KEK, u2.KEK))
	}
}
