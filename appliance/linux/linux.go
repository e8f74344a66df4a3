//go:build linux

// Package linux is the appliance's view of the machine it runs on: it loads
// the kernel modules shipped in the initramfs with finit_module, brings up
// the network (static or DHCP), opens the data disk, reads PCRs from sysfs
// and reboots. It implements appliance.Platform and appliance.PCRReader.
package linux

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dataembassy/embassy/appliance"
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
// tmpfs. Already mounted file systems are fine.
func MountSystem() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"securityfs", "/sys/kernel/security", "securityfs"},
		{"tmpfs", "/run", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("linux: mkdir %s: %w", m.dst, err)
		}
		err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, "")
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("linux: mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// LoadModules loads every module named in ModulesDir/order, in order. An
// already loaded (or built-in) module is fine.
func (p *Platform) LoadModules(ctx context.Context) error {
	dir := p.ModulesDir
	if dir == "" {
		dir = "/lib/embassy/modules"
	}
	f, err := os.Open(filepath.Join(dir, "order"))
	if errors.Is(err, os.ErrNotExist) {
		p.log().Info("no kernel modules to load")
		return nil
	}
	if err != nil {
		return fmt.Errorf("linux: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	n := 0
	for s.Scan() {
		name := strings.TrimSpace(s.Text())
		if name == "" {
			continue
		}
		if err := loadModule(filepath.Join(dir, name)); err != nil {
			return err
		}
		n++
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("linux: reading module order: %w", err)
	}
	p.log().Info("kernel modules loaded", "count", n)
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("linux: module %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("linux: loading module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// waitFor polls cond until it returns true or the timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ConfigureNetwork brings up cfg.Interface with a static address or DHCP.
func (p *Platform) ConfigureNetwork(ctx context.Context, cfg appliance.NetworkConfig) (string, error) {
	var link netlink.Link
	if !waitFor(ctx, p.timeout(), func() bool {
		l, err := netlink.LinkByName(cfg.Interface)
		link = l
		return err == nil
	}) {
		return "", fmt.Errorf("linux: network interface %s did not appear", cfg.Interface)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("linux: bringing up %s: %w", cfg.Interface, err)
	}
	switch cfg.Mode {
	case "static":
		addr, err := netlink.ParseAddr(cfg.Address)
		if err != nil {
			return "", fmt.Errorf("linux: address %q: %w", cfg.Address, err)
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return "", fmt.Errorf("linux: setting %s on %s: %w", cfg.Address, cfg.Interface, err)
		}
		if cfg.Gateway != "" {
			gw := net.ParseIP(cfg.Gateway)
			if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
				return "", fmt.Errorf("linux: default route via %s: %w", cfg.Gateway, err)
			}
		}
		return cfg.Address, nil
	case "dhcp":
		dctx, cancel := context.WithTimeout(ctx, p.timeout())
		defer cancel()
		results := dhclient.SendRequests(dctx, []netlink.Link{link}, true, false,
			dhclient.Config{Timeout: 3 * time.Second, Retries: 3}, p.timeout())
		for r := range results {
			if r.Err != nil {
				continue
			}
			if err := r.Lease.Configure(); err != nil {
				return "", fmt.Errorf("linux: applying DHCP lease: %w", err)
			}
			return r.Lease.String(), nil
		}
		return "", fmt.Errorf("linux: no DHCP lease on %s", cfg.Interface)
	}
	return "", fmt.Errorf("linux: unknown network mode %q", cfg.Mode)
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
		if !waitFor(ctx, p.timeout(), func() bool {
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
	if !waitFor(ctx, p.timeout(), func() bool { _, err := os.Stat(path); return err == nil }) {
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
func (p *Platform) Reboot() error {
	unix.Sync()
	// Let the console drain: output printed right before a reset is lost.
	time.Sleep(500 * time.Millisecond)
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// PowerOff syncs and powers the machine off.
func PowerOff() error {
	unix.Sync()
	time.Sleep(500 * time.Millisecond)
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

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
