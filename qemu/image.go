package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dataembassy/embassy/initramfs"
)

// DefaultAppend is the kernel command line the harness boots with: serial
// console, reboot (QEMU exits with -no-reboot) on panic, few kernel messages
// (every console byte is slow under TCG).
const DefaultAppend = "console=ttyS0,115200 panic=-1 quiet"

// Image is a kernel and initramfs ready to boot.
type Image struct {
	Kernel string
	Initrd string
	// Initramfs describes the initrd (size, digest).
	Initramfs initramfs.Result
	// BuildTime is how long building the binaries and the archive took.
	BuildTime time.Duration
}

// ImageOptions select what BuildImage puts in the initramfs.
type ImageOptions struct {
	// ModuleDir is the Embassy module root (where go.mod is). Required.
	ModuleDir string
	// OutDir receives the binaries and the initrd. Required.
	OutDir string
	// UinitPackage is the Go package built as the appliance binary
	// (default: initramfs.ApplianceCmdPackage).
	UinitPackage string
	// Config is the appliance configuration to embed (optional).
	Config []byte
	// Modules are kernel modules to resolve and include (default: none).
	Modules []string
	// Shell, if set, is a static shell binary to include: a debug image.
	Shell string
	// Name names the initrd file (default "initrd.gz").
	Name string
	// Compression is the initrd's compression (default gzip).
	Compression initramfs.Compression
}

// BuildImage compiles u-root's init and the uinit program, resolves kernel
// modules from the cached kernel and writes a reproducible initrd.
func BuildImage(ctx context.Context, o ImageOptions) (Image, error) {
	start := time.Now()
	k, err := initramfs.CachedKernel()
	if err != nil {
		return Image{}, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return Image{}, err
	}
	pkg := o.UinitPackage
	if pkg == "" {
		pkg = initramfs.ApplianceCmdPackage
	}
	initBin := filepath.Join(o.OutDir, "init")
	if _, err := os.Stat(initBin); err != nil {
		if err := initramfs.GoBuild(ctx, o.ModuleDir, initramfs.InitCmdPackage, initBin); err != nil {
			return Image{}, err
		}
	}
	uinit := filepath.Join(o.OutDir, filepath.Base(pkg))
	if err := initramfs.GoBuild(ctx, o.ModuleDir, pkg, uinit); err != nil {
		return Image{}, err
	}
	opts := initramfs.Options{Init: initBin, Appliance: uinit, Config: o.Config, Shell: o.Shell, Compression: o.Compression}
	if len(o.Modules) > 0 {
		mods, err := initramfs.ResolveModules(k.ModulesDir, o.Modules)
		if err != nil {
			return Image{}, err
		}
		opts.Modules = mods
	}
	name := o.Name
	if name == "" {
		name = "initrd.gz"
	}
	img := Image{Kernel: k.Vmlinuz, Initrd: filepath.Join(o.OutDir, name)}
	img.Initramfs, err = initramfs.BuildFile(opts, img.Initrd)
	if err != nil {
		return Image{}, fmt.Errorf("qemu: building initrd: %w", err)
	}
	img.BuildTime = time.Since(start)
	return img, nil
}

// ModuleRoot finds the directory holding go.mod, walking up from dir.
func ModuleRoot(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("qemu: no go.mod above %s", dir)
		}
		d = parent
	}
}
