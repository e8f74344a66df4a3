package qemu_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/qemu"
)

var (
	imageOnce sync.Once
	imageDir  string
)

// buildAppliance builds the appliance image once per test binary run.
func buildAppliance(t testing.TB, config []byte, name string) qemu.Image {
	t.Helper()
	imageOnce.Do(func() {
		d, err := os.MkdirTemp("", "embassy-qemu-images-")
		if err != nil {
			t.Fatal(err)
		}
		imageDir = d
	})
	img, err := qemu.BuildImage(context.Background(), qemu.ImageOptions{
		ModuleDir: moduleRoot(t),
		OutDir:    imageDir,
		Config:    config,
		Modules:   []string{"virtio_pci", "virtio_blk", "virtio_net"},
		Name:      name,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initrd %s: %v (built in %v)", name, img.Initramfs, img.BuildTime.Round(time.Millisecond))
	return img
}

func dataDisk(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}
