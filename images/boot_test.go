package images_test

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
)

const testCmdline = "console=ttyS0 panic=-1"

// buildRelease builds a release of the cached kernel with the pcrdump
// initrd, its disk image in a temporary directory.
func buildRelease(t *testing.T, o images.Options) (*images.Release, string) {
	t.Helper()
	k, err := os.ReadFile(kernelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kernel == nil {
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

func measuredHex(res *bootResult) map[int]string {
	m := map[int]string{}
	for i, v := range res.PCRs {
		m[i] = hex.EncodeToString(v)
	}
	return m
}

// TestBootMatchesPrediction boots the disk image through OVMF (no -kernel)
// and checks that every predicted PCR equals what the guest's TPM holds.
func TestBootMatchesPrediction(t *testing.T) {
	for _, tc := range []struct {
		name      string
		withCDROM bool
		failed    int
	}{
		{"disk-first", false, 0},
		{"cdrom-then-disk", true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, path := buildRelease(t, images.Options{Predict: predict.Options{FailedBootOptions: tc.failed}})
			res := bootDisk(t, path, tc.withCDROM)
			if res.Cmdline != testCmdline {
				t.Errorf("guest /proc/cmdline = %q, want %q", res.Cmdline, testCmdline)
			}
			if len(r.PCRs) != 6 {
				t.Fatalf("predicted %d PCRs, want 6 (4, 5, 9, 11, 12, 13)", len(r.PCRs))
			}
			measured := measuredHex(res)
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
			}
		})
	}
}

// TestBootOneByteDifferentRefused changes one byte of the initrd: the
// prediction for the original release no longer matches what the modified
// image measures.
func TestBootOneByteDifferentRefused(t *testing.T) {
	orig, _ := buildRelease(t, images.Options{})
	initrd := append([]byte(nil), pcrdumpInitrd(t)...)
	// The last byte of a newc archive is trailer padding the kernel ignores,
	// so the modified image still boots.
	initrd[len(initrd)-1] ^= 0x01
	mod, path := buildRelease(t, images.Options{Initrd: initrd})
	res := bootDisk(t, path, false)
	measured := measuredHex(res)
	// The modified image is self-consistent...
	if err := mod.Compare(measured); err != nil {
		t.Fatalf("modified image does not match its own prediction: %v", err)
	}
	// ...but is refused against the original release.
	err := orig.Compare(measured)
	if !errors.Is(err, images.ErrMismatch) {
		t.Fatalf("original release accepted a modified image: %v", err)
	}
	for _, i := range []int{predict.PCRBootApps, predict.PCRKernelStub, predict.PCRUKISections} {
		if measured[i] == orig.PCRs[i] {
			t.Errorf("PCR %d unchanged by a modified initrd", i)
		}
	}
}
