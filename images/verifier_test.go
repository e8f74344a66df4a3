package images_test

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/uki"
)

// TestManifestPublishedByVerifier: the verifier's database publishes an
// images manifest signed by k of its n release keys, refuses fewer or
// forged signatures, and keeps exactly the predicted PCRs as its policy.
func TestManifestPublishedByVerifier(t *testing.T) {
	stub, err := os.ReadFile(uki.DefaultStubPath)
	if err != nil {
		t.Fatal(err)
	}
	// Any PE serves as the kernel for a manifest: the stub itself.
	r, err := images.Build(images.Options{Stub: stub, Kernel: stub, Initrd: []byte("initrd"), Cmdline: "console=ttyS0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err := verifier.OpenDB(ctx, filepath.Join(t.TempDir(), "verifier.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	pubs, privs := officers(t, 3)
	for _, p := range pubs {
		if err := db.AddReleaseKey(ctx, p, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.SetReleaseThreshold(ctx, 2, "test"); err != nil {
		t.Fatal(err)
	}
	m, err := r.Manifest(images.ManifestOptions{Release: "2026.11.1", Created: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	envelope := func(signers ...int) *release.Envelope {
		env, err := release.NewEnvelope(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range signers {
			env.Sign(privs[i])
		}
		return env
	}

	if _, err := db.PublishRelease(ctx, envelope(0), "test"); !errors.Is(err, release.ErrThreshold) {
		t.Errorf("one signature of a 2-of-3 release: error %v, want ErrThreshold", err)
	}
	forged := envelope(0, 1)
	forged.Signatures[1].Sig[5] ^= 0x01
	if _, err := db.PublishRelease(ctx, forged, "test"); !errors.Is(err, release.ErrThreshold) {
		t.Errorf("forged second signature: error %v, want ErrThreshold", err)
	}
	v, err := db.PublishRelease(ctx, envelope(1, 2), "test")
	if err != nil {
		t.Fatalf("2-of-3 release refused: %v", err)
	}
	got, err := v.Manifest.PCRValues()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(images.ReleasePCRs) {
		t.Errorf("published %d PCRs, want %d", len(got), len(images.ReleasePCRs))
	}
	for _, i := range images.ReleasePCRs {
		if want := r.PCRs[i]; want == "" || hex.EncodeToString(got[uint32(i)]) != want {
			t.Errorf("published PCR %d = %x, predicted %s", i, got[uint32(i)], want)
		}
	}
	rels, err := db.Releases(ctx)
	if err != nil || len(rels) != 1 {
		t.Fatalf("verifier lists %d releases (%v), want 1", len(rels), err)
	}
}
