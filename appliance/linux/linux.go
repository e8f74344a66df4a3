//go:build linux

// Package linux is the appliance's view of the machine it runs on: it loads
// the kernel modules shipped in the initramfs, brings up the network from
// the appliance configuration (static or DHCP), opens the data disk, reads
// PCRs from sysfs and reboots. It implements appliance.Platform and
// appliance.PCRReader on the guest-machine helpers of internal/machine,
// adding what is the appliance's own: its configuration, its initramfs
// layout and its data disk.
package linux

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/internal/machine"
)

// Platform implements appliance.Platform on Linux.
type Platform struct {
	// ModulesDir holds the .ko files and the "order" file (default
	// /lib/embassy/modules, the initramfs layout).
	ModulesDir string
	// DeviceTimeout bounds waiting for the network interface and the data
	// disk to appear after their drivers load (default 20 s).
	DeviceTimeout time.Duration
	// Logger receives per-module and per-device details (default
	// slog.Default()).
	Logger *slog.Logger
	// SysBlockDir is sysfs's block device class, searched for partitions
	// named by PartLabelDir paths (default /sys/class/block).
	SysBlockDir string
}

// PartLabelDir is udev's directory of partitions by GPT partition name.
// The initramfs runs no udev, so OpenDisk resolves a path under it itself
// from the kernel's partition uevents (PARTNAME): the store partition of a
// boot disk image is found by name whatever the disk enumerates as.
const PartLabelDir = "/dev/disk/by-partlabel/"

// ErrAmbiguousPartition reports more than one partition with the name a
// PartLabelDir path asks for: the appliance does not guess which one holds
// its store.
var ErrAmbiguousPartition = errors.New("linux: more than one partition has this name")

// FindPartition returns the device node (/dev/NAME) of the one partition
// whose GPT name is label, from the uevent files under sysBlock (e.g.
// /sys/class/block). It returns os.ErrNotExist when none has it (yet).
func FindPartition(sysBlock, label string) (string, error) {
	if label == "" {
		return "", errors.New("linux: empty partition name")
	}
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", fmt.Errorf("linux: %w", err)
	}
	var found []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "uevent"))
		if err != nil {
			continue
		}
		var dev, name string
		partition := false
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "DEVNAME":
				dev = v
			case "DEVTYPE":
				partition = v == "partition"
			case "PARTNAME":
				name = v
			}
		}
		if partition && name == label && dev != "" && !strings.Contains(dev, "..") {
			found = append(found, "/dev/"+dev)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("linux: no partition named %q: %w", label, os.ErrNotExist)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%w: %q on %v", ErrAmbiguousPartition, label, found)
}

func (p *Platform) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

func (p *Platform) timeout() time.Duration {
	if p.DeviceTimeout > 0 {
		return p.DeviceTimeout
	}
	return 20 * time.Second
}

// MountSystem mounts what the appliance needs beyond u-root init's /proc,
// /sys, /dev and /tmp: securityfs (the firmware's TPM event log) and a /run
// tmpfs (machine.MountSystem). Already mounted file systems are fine.
func MountSystem() error { return machine.MountSystem() }

// LoadModules loads every module named in ModulesDir/order, in order. An
// already loaded (or built-in) module is fine; an image without modules
// has no order file.
func (p *Platform) LoadModules(ctx context.Context) error {
	dir := p.ModulesDir
	if dir == "" {
		dir = "/lib/embassy/modules"
	}
	n, err := machine.LoadModules(dir, nil)
	if errors.Is(err, machine.ErrNoModuleOrder) {
		p.log().Info("no kernel modules to load")
		return nil
	}
	if err != nil {
		return err
	}
	p.log().Info("kernel modules loaded", "count", n)
	return nil
}

// ConfigureNetwork brings up cfg.Interface with a static address or DHCP.
func (p *Platform) ConfigureNetwork(ctx context.Context, cfg appliance.NetworkConfig) (string, error) {
	return machine.ConfigureNetwork(ctx, machine.Network{
		Interface: cfg.Interface, Mode: cfg.Mode, Address: cfg.Address, Gateway: cfg.Gateway,
	}, p.timeout())
}

// Disk is an open block device.
type Disk struct {
	f    *os.File
	size int64
}

// OpenDisk waits for the block device at path and opens it read-write. A
// path under PartLabelDir names a partition by its GPT name (see
// FindPartition).
func (p *Platform) OpenDisk(ctx context.Context, path string) (appliance.Device, error) {
	name := path
	var findErr error
	if label, ok := strings.CutPrefix(path, PartLabelDir); ok {
		sys := p.SysBlockDir
		if sys == "" {
			sys = "/sys/class/block"
		}
		if !machine.WaitFor(ctx, p.timeout(), func() bool {
			path, findErr = FindPartition(sys, label)
			// Only a partition not there yet is worth waiting for.
			return !errors.Is(findErr, os.ErrNotExist)
		}) {
			return nil, fmt.Errorf("linux: data disk %s did not appear: %w", name, findErr)
		}
		if findErr != nil {
			return nil, findErr
		}
	}
	if !machine.WaitFor(ctx, p.timeout(), func() bool { _, err := os.Stat(path); return err == nil }) {
		return nil, fmt.Errorf("linux: data disk %s did not appear", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("linux: %w", err)
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("linux: sizing %s: %w", path, err)
	}
	if name != path {
		p.log().Info("data disk", "device", path, "name", name, "bytes", size)
	} else {
		p.log().Info("data disk", "device", path, "bytes", size)
	}
	return &Disk{f: f, size: size}, nil
}

// ReadAt reads from the disk.
func (d *Disk) ReadAt(b []byte, off int64) (int, error) { return d.f.ReadAt(b, off) }

// WriteAt writes to the disk.
func (d *Disk) WriteAt(b []byte, off int64) (int, error) { return d.f.WriteAt(b, off) }

// Sync flushes the disk's write cache.
func (d *Disk) Sync() error { return unix.Fdatasync(int(d.f.Fd())) }

// Size is the disk's size in bytes.
func (d *Disk) Size() (int64, error) { return d.size, nil }

// Close closes the device.
func (d *Disk) Close() error { return d.f.Close() }

// BackingFile returns the disk's device node, so the store can read it
// through memory mappings (storage.FileBacked).
func (d *Disk) BackingFile() (*os.File, int64) { return d.f, 0 }

// Reboot syncs and restarts the machine.
func (p *Platform) Reboot() error { return machine.Reboot() }

// SysfsPCRs reads PCR values from /sys/class/tpm/tpm0/pcr-sha256/N.
type SysfsPCRs struct {
	// Dir defaults to /sys/class/tpm/tpm0/pcr-sha256.
	Dir string
}

// ReadPCRs implements appliance.PCRReader.
func (s SysfsPCRs) ReadPCRs(pcrs []int) (map[int][]byte, error) {
	dir := s.Dir
	if dir == "" {
		dir = "/sys/class/tpm/tpm0/pcr-sha256"
	}
	out := map[int][]byte{}
	for _, i := range pcrs {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			return nil, fmt.Errorf("linux: PCR %d: %w", i, err)
		}
		v, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("linux: PCR %d: %w", i, err)
		}
		out[i] = v
	}
	return out, nil
}
