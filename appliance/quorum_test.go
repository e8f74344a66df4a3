package appliance_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/appliance"
)

// Tests of the boot sequence's k-of-n side: the sealed shares in the disk
// header across unlocks, heartbeats and upgrades, and the verifiers'
// answers on the console.

// TestUnlockRewritesSealedShares: every unlock writes the header with the
// attester's Sealed, so releases withdrawn since drop out and newly
// published ones appear; the set id is kept.
func TestUnlockRewritesSealedShares(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, &fakeAttester{tpm: "A", published: []string{"old-release"}, decide: grant(true, time.Hour), heartbeat: beats(time.Hour)})
	r.waitServing(t)
	r.stop(t)
	h1, err := appliance.ReadHeader(disk, 4096)
	if err != nil || len(h1.Sealed.ByRelease) != 2 {
		t.Fatalf("first header %+v, %v; want 2 releases", h1, err)
	}

	att := &fakeAttester{tpm: "A", published: []string{"new-release"}, decide: grant(false, time.Hour), heartbeat: beats(time.Hour)}
	r2 := start(t, disk, att)
	r2.waitServing(t)
	r2.waitLog(t, "store opened")
	h2, err := appliance.ReadHeader(disk, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !sameShares(h2.Sealed, att.granted[0]) || h2.Epoch != 7 {
		t.Fatalf("header after the second unlock %+v, want epoch 7 and %+v", h2, att.granted[0])
	}
	if _, ok := h2.Sealed.ByRelease["old-release"]; ok {
		t.Error("withdrawn release kept in the header")
	}
	if _, ok := h2.Sealed.ByRelease["new-release"]; !ok || h2.Sealed.Set != h1.Sealed.Set {
		t.Errorf("header %+v lacks the new release or changed the set id", h2.Sealed)
	}
}

// TestResealedKeptForUpgrade: blobs a heartbeat returns for a release
// published since the unlock are added to the header, and a boot of that
// release gets them in Unlock and opens the same store.
func TestResealedKeptForUpgrade(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{tpm: "A", decide: grant(true, time.Hour)}
	att.renewal = func(n int) (*appliance.Renewal, error) {
		if n == 1 {
			return &appliance.Renewal{Lease: time.Hour, Resealed: map[string][]byte{"release-2": att.blob("release-2")}}, nil
		}
		return &appliance.Renewal{Lease: time.Hour}, nil
	}
	r := start(t, disk, att)
	r.waitServing(t)
	r.waitLog(t, `msg="sealed local share for release" release=release-2`)
	h, err := appliance.ReadHeader(disk, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if string(h.Sealed.ByRelease["release-2"]) != "sealed-by-A-for-release-2" ||
		string(h.Sealed.ByRelease["test-release"]) != "sealed-by-A-for-test-release" || h.Sealed.Set != att.granted[0].Set {
		t.Fatalf("header after the heartbeat %+v: want both releases and the set id kept", h.Sealed)
	}
	r.stop(t)

	att2 := &fakeAttester{tpm: "A", release: "release-2", decide: grant(false, time.Hour), heartbeat: beats(time.Hour)}
	r2 := start(t, disk, att2)
	r2.waitServing(t)
	r2.waitLog(t, "store opened")
	if seen := att2.sealedSeen[0]; seen == nil || !sameShares(*seen, h.Sealed) {
		t.Errorf("the upgraded boot passed %+v to Unlock, want %+v", seen, h.Sealed)
	}
}

// TestVersion1HeaderHalts: a store provisioned before threshold key grants
// is not unlocked (its KEK derivation differs); the console says to
// re-provision it.
func TestVersion1HeaderHalts(t *testing.T) {
	disk := newMemDevice(64 << 10)
	copy(disk.buf, rawHeader(1, 7, []byte("sealed share blob")))
	att := &fakeAttester{tpm: "A", decide: grant(false, time.Hour), heartbeat: beats(time.Hour)}
	r := start(t, disk, att)
	r.waitLog(t, "HALTED")
	log := r.log.String()
	for _, want := range []string{"before threshold key grants", "must be re-provisioned", "header is version 1"} {
		if !strings.Contains(log, want) {
			t.Errorf("console does not say %q:\n%s", want, log)
		}
	}
	if n, _ := att.counts(); n != 0 {
		t.Errorf("attested %d times with a version-1 header, want 0", n)
	}
	if r.exporter.isServing() {
		t.Error("served a version-1 store")
	}
}

// TestAnswersLogged: every verifier's answer is on the console at unlock;
// on heartbeats only the ones that are not renewed or unused, at Warn, and
// the summary line names the verifiers that renewed.
func TestAnswersLogged(t *testing.T) {
	disk := newMemDevice(64 << 10)
	down := errors.New("dial tcp 10.0.2.3:8443: connection refused")
	att := &fakeAttester{tpm: "A", decide: grant(true, time.Hour),
		answers: []appliance.Answer{
			{Verifier: "a", Outcome: "granted", Release: "test-release", Lease: time.Hour},
			{Verifier: "b", Outcome: "unreachable", Err: down},
			{Verifier: "c", Outcome: "granted", Release: "test-release", Lease: 30 * time.Minute},
		}}
	att.renewal = func(int) (*appliance.Renewal, error) {
		return &appliance.Renewal{Lease: time.Hour, Answers: []appliance.Answer{
			{Verifier: "a", Outcome: "renewed", Release: "test-release", Lease: time.Hour},
			{Verifier: "b", Outcome: "unreachable", Err: down},
			{Verifier: "c", Outcome: "unused"},
		}}, nil
	}
	r := start(t, disk, att)
	r.waitServing(t)
	r.waitLog(t, "server identity reported to the verifier")
	lines := strings.Split(r.log.String(), "\n")
	count := func(subs ...string) int {
		n := 0
		for _, l := range lines {
			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(l, s)
			}
			if ok {
				n++
			}
		}
		return n
	}
	if got := count("level=WARN", `msg="verifier answered"`, "verifier=b", "outcome=unreachable", "connection refused"); got != 2 {
		t.Errorf("%d Warn lines for b unreachable, want 2 (unlock and heartbeat)", got)
	}
	if got := count("level=INFO", `msg="verifier answered"`, "verifier=a", "outcome=granted", "release=test-release", "lease=1h0m0s"); got != 1 {
		t.Errorf("%d Info lines for a granted, want 1", got)
	}
	if got := count("verifier=c", "outcome=granted", "lease=30m0s"); got != 1 {
		t.Errorf("%d lines for c granted, want 1", got)
	}
	if got := count("outcome=renewed") + count("outcome=unused"); got != 0 {
		t.Errorf("%d renewed/unused answers at Info or above, want 0 (Debug)", got)
	}
	// The heartbeat's summary names who renewed (a only: c was unused).
	if got := count(`msg="server identity reported to the verifier"`, "renewed_by=a") - count("renewed_by=a,"); got != 1 {
		t.Errorf("%d heartbeat lines naming a alone as renewing, want 1:\n%s", got, r.log.String())
	}
}

// TestUnlockErrorLogged: when the verifiers do not grant, the console
// carries the attester's error, which names every verifier's answer.
func TestUnlockErrorLogged(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{tpm: "A", heartbeat: beats(time.Hour),
		decide: func(int) (bool, time.Duration, error) {
			return false, 0, fmt.Errorf("1 of 3 verifiers granted, 2 needed: a granted, b refused (check release), c unreachable: %w", appliance.ErrRefused)
		}}
	r := start(t, disk, att)
	r.waitLog(t, "retry_in=20ms")
	if !strings.Contains(r.log.String(), `msg="verifiers did not grant the key"`) ||
		!strings.Contains(r.log.String(), "b refused (check release), c unreachable") {
		t.Errorf("console does not name the verifiers' answers:\n%s", r.log.String())
	}
	if r.exporter.isServing() {
		t.Error("served without a quorum")
	}
}
