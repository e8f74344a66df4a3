//go:build linux

package machine

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MountSystem mounts /proc, /sys, /dev, securityfs (the firmware's TPM
// event log) and a /run tmpfs. Already mounted file systems are fine: under
// u-root's init the first three are there before the program starts.
func MountSystem() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"securityfs", "/sys/kernel/security", "securityfs"},
		{"tmpfs", "/run", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("machine: mkdir %s: %w", m.dst, err)
		}
		err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, "")
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("machine: mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}
