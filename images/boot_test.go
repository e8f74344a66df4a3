package images_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/qemu"
)

const testCmdline = "console=ttyS0 panic=-1"

// buildRelease builds a release of the cached kernel with the pcrdump
// initrd, its disk image in a temporary directory.
func buildRelease(t *testing.T, o images.Options) (*images.Release, string) {
	t.Helper()
	if o.Kernel == nil {
		k, err := os.ReadFile(kernelPath(t))
		if err != nil {
			t.Fatal(err)
		}
		o.Kernel = k
	}
	if o.Initrd == nil {
		o.Initrd = pcrdumpInitrd(t)
	}
	if o.Cmdline == "" {
		o.Cmdline = testCmdline
	}
	if o.OSRelease == "" {
		o.OSRelease = "ID=embassy\nVERSION_ID=test\n"
	}
	o.Disk = disk.Options{Seed: "images-test", Epoch: 1700000000}
	o.DiskPath = filepath.Join(t.TempDir(), "disk.img")
	r, err := images.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	return r, o.DiskPath
}

// officers are n release keys.
func officers(t *testing.T, n int) ([]ed25519.PublicKey, []ed25519.PrivateKey) {
	t.Helper()
	var pubs []ed25519.PublicKey
	var privs []ed25519.PrivateKey
	for range n {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pubs, privs = append(pubs, pub), append(privs, priv)
	}
	return pubs, privs
}

// signedRelease returns r's manifest in an envelope signed by signers.
func signedRelease(t *testing.T, r *images.Release, signers ...ed25519.PrivateKey) *release.Envelope {
	t.Helper()
	m, err := r.Manifest(images.ManifestOptions{Release: "test", Created: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	env, err := release.NewEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range signers {
		env.Sign(k)
	}
	return env
}

// admit is the release half of the verifier's decision: the envelope has k
// valid signatures from trusted officers and every PCR it lists equals the
// measured value.
func admit(env *release.Envelope, trusted []ed25519.PublicKey, k int, measured map[int][]byte) error {
	v, err := env.Verify(trusted, k)
	if err != nil {
		return err
	}
	want, err := v.Manifest.PCRValues()
	if err != nil {
		return err
	}
	for i, w := range want {
		if hex.EncodeToString(measured[int(i)]) != hex.EncodeToString(w) {
			return errPCR
		}
	}
	return nil
}

var errPCR = errors.New("quoted PCR differs from the release")

// TestBootMatchesPrediction boots the disk image through OVMF (no -kernel)
// and checks that every predicted PCR (4, 5, 9, 11, 12, 13) equals the
// guest TPM's values, both as read by the kernel and as quoted by the TPM
// over a fresh nonce (with the event log replaying to the quote), and that
// a 2-of-3 signed manifest admits the quoted boot. The initrd is the
// production layout (package initramfs: u-root init, gzip, reproducible)
// with pcrdump as the uinit, and the command line the appliance's.
func TestBootMatchesPrediction(t *testing.T) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	cmdline := qemu.DefaultAppend + " pcrdump.nonce=" + hex.EncodeToString(nonce)
	r, path := buildRelease(t, images.Options{Initrd: urootInitrd(t), Cmdline: cmdline})
	res := bootDisk(t, path)
	if res.Cmdline != cmdline {
		t.Errorf("guest /proc/cmdline = %q, want %q", res.Cmdline, cmdline)
	}
	if len(r.PCRs) != 6 {
		t.Fatalf("predicted %d PCRs, want 6 (4, 5, 9, 11, 12, 13)", len(r.PCRs))
	}
	quoted := verifyQuote(t, res.Attestation, nonce)
	measured := map[int]string{}
	for i, v := range res.PCRs {
		measured[i] = hex.EncodeToString(v)
		if q := hex.EncodeToString(quoted[i]); q != measured[i] {
			t.Errorf("PCR %d: sysfs %s, quote %s", i, measured[i], q)
		}
	}
	for i, want := range r.PCRs {
		if measured[i] != want {
			t.Errorf("PCR %d: measured %s, predicted %s", i, measured[i], want)
		}
	}
	if err := r.Compare(measured); err != nil {
		t.Errorf("Compare: %v", err)
	}
	if t.Failed() {
		t.Logf("predicted events:\n%s", predict.Describe(r.Events))
		t.Logf("measured event log:\n%s", describeLog(t, res.EventLog))
		t.FailNow()
	}

	pubs, privs := officers(t, 3)
	for _, tc := range []struct {
		name    string
		signers []ed25519.PrivateKey
		forge   bool
		want    error
	}{
		{"two of three", privs[:2], false, nil},
		{"one of three", privs[:1], false, release.ErrThreshold},
		{"unsigned", nil, false, release.ErrThreshold},
		{"forged second signature", privs[:2], true, release.ErrThreshold},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := signedRelease(t, r, tc.signers...)
			if tc.forge {
				env.Signatures[1].Sig[0] ^= 0x80
			}
			err := admit(env, pubs, 2, quoted)
			if tc.want == nil && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("admit error = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestBootOneByteDifferentRefused changes one byte of the initrd: the
// modified image boots and its quote matches its own (unsigned) prediction,
// but the signed release refuses it, and its own manifest has no valid
// signatures.
func TestBootOneByteDifferentRefused(t *testing.T) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	cmdline := testCmdline + " pcrdump.nonce=" + hex.EncodeToString(nonce)
	orig, _ := buildRelease(t, images.Options{Cmdline: cmdline})
	initrd := append([]byte(nil), pcrdumpInitrd(t)...)
	// The last byte of a newc archive is trailer padding the kernel
	// ignores, so the modified image still boots.
	initrd[len(initrd)-1] ^= 0x01
	mod, path := buildRelease(t, images.Options{Initrd: initrd, Cmdline: cmdline})
	res := bootDisk(t, path)
	quoted := verifyQuote(t, res.Attestation, nonce)
	measured := map[int]string{}
	for i, v := range quoted {
		measured[i] = hex.EncodeToString(v)
	}
	if err := mod.Compare(measured); err != nil {
		t.Fatalf("modified image does not match its own prediction: %v", err)
	}
	if err := orig.Compare(measured); !errors.Is(err, images.ErrMismatch) {
		t.Fatalf("original prediction accepted a modified image: %v", err)
	}
	for _, i := range []int{predict.PCRBootApps, predict.PCRKernelStub, predict.PCRUKISections} {
		if measured[i] == orig.PCRs[i] {
			t.Errorf("PCR %d unchanged by a modified initrd", i)
		}
	}
	pubs, privs := officers(t, 3)
	if err := admit(signedRelease(t, orig, privs[:2]...), pubs, 2, quoted); !errors.Is(err, errPCR) {
		t.Errorf("signed original release admitted the modified image: %v", err)
	}
	if err := admit(signedRelease(t, mod), pubs, 2, quoted); !errors.Is(err, release.ErrThreshold) {
		t.Errorf("unsigned manifest of the modified image admitted: %v", err)
	}
	// Signed by an outsider: still refused.
	_, outsider := officers(t, 2)
	if err := admit(signedRelease(t, mod, outsider...), pubs, 2, quoted); !errors.Is(err, release.ErrThreshold) {
		t.Errorf("modified image signed by untrusted keys admitted: %v", err)
	}
}

// TestBuildReproducible builds the whole release twice: UKI, disk image and
// manifest are byte-identical.
func TestBuildReproducible(t *testing.T) {
	a, pa := buildRelease(t, images.Options{})
	b, pb := buildRelease(t, images.Options{})
	da, err := os.ReadFile(pa)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(pb)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.UKI) != string(b.UKI) {
		t.Error("UKIs differ")
	}
	if string(da) != string(db) {
		t.Error("disk images differ")
	}
	ma, err := a.Manifest(images.ManifestOptions{Release: "r", Created: time.Unix(1, 0), IncludeGPT: true})
	if err != nil {
		t.Fatal(err)
	}
	mb, err := b.Manifest(images.ManifestOptions{Release: "r", Created: time.Unix(1, 0), IncludeGPT: true})
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := ma.Marshal()
	jb, _ := mb.Marshal()
	if string(ja) != string(jb) {
		t.Errorf("manifests differ:\n%s\n%s", ja, jb)
	}
	if len(ma.PCRs) != 6 || len(ma.Components) != 7 {
		t.Errorf("manifest has %d PCRs and %d components, want 6 and 7:\n%s", len(ma.PCRs), len(ma.Components), ja)
	}
}

// urootInitrd builds the production initramfs layout with pcrdump as the
// appliance program.
func urootInitrd(t *testing.T) []byte {
	t.Helper()
	root, err := qemu.ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := qemu.BuildImage(ctx, qemu.ImageOptions{
		ModuleDir:    root,
		OutDir:       t.TempDir(),
		UinitPackage: "github.com/dataembassy/embassy/images/internal/pcrdump",
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
