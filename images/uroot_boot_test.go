package images_test

import (
	"context"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/qemu"
)

// TestBootURootInitramfs boots the production initramfs layout (package
// initramfs: u-root init, gzip-compressed, reproducible) with pcrdump as the
// uinit and the appliance's default command line, from the disk image: the
// prediction holds for the real initrd format, not only the test's plain cpio.
func TestBootURootInitramfs(t *testing.T) {
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
	initrd, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	r, path := buildRelease(t, images.Options{Initrd: initrd, Cmdline: qemu.DefaultAppend})
	res := bootDisk(t, path)
	if res.Cmdline != qemu.DefaultAppend {
		t.Errorf("guest /proc/cmdline = %q, want %q", res.Cmdline, qemu.DefaultAppend)
	}
	measured := map[int]string{}
	for i, v := range res.PCRs {
		measured[i] = hex.EncodeToString(v)
	}
	if err := r.Compare(measured); err != nil {
		t.Errorf("%v\nmeasured event log:\n%s", err, describeLog(t, res.EventLog))
	}
}
