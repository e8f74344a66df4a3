package images_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/images/uki"
	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/u-root/u-root/pkg/cpio"
)

// TestManifestRuntimePCRs: the release manifest lists PCR 15 predicted from
// the initramfs next to the release PCRs, and refuses a runtime value that
// overrides a boot-chain PCR or is not a SHA-256.
func TestManifestRuntimePCRs(t *testing.T) {
	stub, err := os.ReadFile(uki.DefaultStubPath)
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := testenv.Newc(
		cpio.StaticFile(initramfs.AppliancePath, "appliance-binary", 0o755),
		cpio.StaticFile(initramfs.ConfigPath, `{"version":1}`, 0o644))
	if err != nil {
		t.Fatal(err)
	}
	r, err := images.Build(images.Options{Stub: stub, Kernel: stub, Initrd: initrd, Cmdline: "console=ttyS0"})
	if err != nil {
		t.Fatal(err)
	}
	p15, err := predict.InitramfsPCR(initrd)
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Manifest(images.ManifestOptions{Release: "r", RuntimePCRs: map[int][]byte{15: p15}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.PCRValues()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[15], p15) || len(got) != len(images.ReleasePCRs)+1 {
		t.Errorf("manifest PCRs %v, want the release PCRs and 15 = %x", got, p15)
	}
	for name, rt := range map[string]map[int][]byte{
		"overrides PCR 9": {9: p15},
		"short value":     {15: p15[:20]},
	} {
		if _, err := r.Manifest(images.ManifestOptions{Release: "r", RuntimePCRs: rt}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
